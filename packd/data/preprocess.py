"""The single preprocessing path shared by training, evaluation and the exported graphs.

Input contract: uint8 RGB images, NHWC (as cameras and image decoders deliver them). Everything
from there to the teacher's input, resize and normalisation, is the torch module `Preprocess`,
so the exported graphs contain exactly the code the model was trained with.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from packd.errors import PackdError
from packd.training.settings import from_dict


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: square side in pixels and the teacher's normalisation."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.image_size < 32 or not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise PackdError(f"invalid input spec: size {self.image_size}, mean {self.mean}, std {self.std}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        """Strict: every field present and typed (a checkpoint's 'input')."""
        return from_dict(cls, d, "input")


class Preprocess(torch.nn.Module):
    """uint8 (B,H,W,3) RGB -> float32 (B,3,S,S): bilinear resize (no antialias: TensorRT-safe), normalise."""

    def __init__(self, spec: InputSpec):
        super().__init__()
        self.image_size = spec.image_size
        mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (mean / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        size = (self.image_size, self.image_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x * self.scale - self.shift


def resize_mask(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """Binary (H,W) mask -> float32 (1,S,S) in {0,1}, nearest-neighbour like the pixels it labels."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if t.shape[-2:] != (image_size, image_size):
        t = F.interpolate(t, size=(image_size, image_size), mode="nearest")
    return t[0]


@contextmanager
def _open(path: str | Path, what: str) -> Iterator[Image.Image]:
    """Open an image with every decoder failure, and images of more than MAX_IMAGE_PIXELS pixels
    (decompression bombs), turned into one-line PackdErrors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                yield im
    except FileNotFoundError:
        raise PackdError(f"{what} not found: {path}") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise PackdError(f"{what} {path} is too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise PackdError(f"cannot decode {what} {path}: {e}") from None


def _to_uint8_rgb(im: Image.Image, path: str | Path) -> np.ndarray:
    """Any PIL mode -> uint8 (H,W,3) RGB. 16-bit images are scaled to 8 bits (PIL's own conversion
    would clip them to white); float images have no agreed range and are refused."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 65535:
            raise PackdError(f"image {path} has 32-bit values outside 0-65535: convert it to 8 or 16 bits")
        a = np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        raise PackdError(f"image {path} holds floating-point pixels: convert it to 8 or 16 bits")
    return np.array(im.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 (H,W,3) RGB; grey, RGBA, palette and 16-bit files are converted."""
    with _open(path, "image") as im:
        return _to_uint8_rgb(im, path)


def load_frames(paths: list[str | Path], size: tuple[int, int] | None = None) -> np.ndarray:
    """Image files -> uint8 camera frames (N,H,W,3) RGB, resized (bilinear) to `size` = (H, W) when
    given: how export, the benchmarks and the tests turn files into the frames a bundle takes."""
    frames = []
    for path in paths:
        image = load_image(path)
        if size is not None and image.shape[:2] != tuple(size):
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
        frames.append(image)
    if not frames:
        raise PackdError("no image files given")
    if len({f.shape for f in frames}) > 1:
        raise PackdError(f"images of different sizes {sorted({f.shape[:2] for f in frames})}: pass a frame size")
    return np.stack(frames)


def load_mask(path: str | Path, expected_hw: tuple[int, int]) -> np.ndarray:
    """Decode a ground-truth mask to bool (H,W): any non-zero pixel is anomalous (VisA stores small values)."""
    with _open(path, "mask") as im:
        m = np.asarray(im) != 0 if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F") else (
            np.asarray(im.convert("L")) != 0)
    if m.shape != tuple(expected_hw):
        raise PackdError(f"mask {path} is {m.shape[1]}x{m.shape[0]} but its image is "
                         f"{expected_hw[1]}x{expected_hw[0]}")
    return m


def image_hw(path: str | Path) -> tuple[int, int]:
    """An image's (height, width), from its header."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise PackdError(f"cannot read image {path}: {e}") from None


def mask_at(mask_path: str | Path | None, image_path: str | Path, hw: tuple[int, int]) -> np.ndarray:
    """An image's ground-truth mask (all False when it has none) at `hw` (nearest), whatever the image's own size."""
    if mask_path is None:
        return np.zeros(hw, bool)
    mask = load_mask(mask_path, image_hw(image_path))
    return mask if mask.shape == tuple(hw) else np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST))
