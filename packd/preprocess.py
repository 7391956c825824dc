"""The single preprocessing path shared by training, evaluation and the exported graphs.

Input contract: uint8 RGB images, NHWC (as cameras and image decoders deliver them). Everything
from there to the teacher's input, resize and normalisation, is the torch module `Preprocess`,
so the exported graphs contain exactly the code the model was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from packd.errors import PackdError


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: square side in pixels and the teacher's normalisation."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))


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


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 (H,W,3) RGB; grey and RGBA files are converted."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise PackdError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PackdError(f"cannot decode image {path}: {e}") from None


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
    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L")) != 0
    except FileNotFoundError:
        raise PackdError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PackdError(f"cannot decode mask {path}: {e}") from None
    if m.shape != tuple(expected_hw):
        raise PackdError(f"mask {path} is {m.shape[1]}x{m.shape[0]} but its image is "
                         f"{expected_hw[1]}x{expected_hw[0]}")
    return m
