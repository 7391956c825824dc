"""Image bytes -> the uint8 RGB frames a bundle takes, and the pictures the station shows (overlays, thumbnails)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from packd_runtime.errors import PackdError
from packd_runtime.threshold import verdict_text
from packd_station import MAX_IMAGE_PIXELS

MAX_IMAGE_BYTES = 64 << 20  # one encoded image file; a camera's 20 MP PNG is about 60 MiB


def decode(data: bytes, name: str) -> np.ndarray:
    """Encoded image (PNG, JPEG, BMP, TIFF, ...) -> uint8 (H, W, 3) RGB; grey, alpha and 16-bit files converted.
    Files over MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS (decompression bombs) are refused before decoding."""
    if len(data) > MAX_IMAGE_BYTES:
        raise PackdError(f"{name}: {len(data)} bytes, more than {MAX_IMAGE_BYTES}: refused")
    if not data:
        raise PackdError(f"{name}: empty file")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:  # OpenCV raises on an image over its pixel limit
        raise PackdError(f"{name}: cannot decode it ({str(e).strip().splitlines()[-1][:160]})") from None
    if image is None:
        raise PackdError(f"{name}: not an image OpenCV can decode, truncated, or over {MAX_IMAGE_PIXELS} pixels")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read(path: Path) -> np.ndarray:
    """An image file -> uint8 RGB (at most MAX_IMAGE_BYTES read: a larger file is refused, never read whole)."""
    with open(path, "rb") as f:
        return decode(f.read(MAX_IMAGE_BYTES + 1), path.name)


def read_frames(paths: Iterable[Path], hw: tuple[int, int]) -> list[np.ndarray]:
    """Image files -> frames at a bundle's frame size."""
    return [fit(read(Path(p)), hw) for p in paths]


def fit(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A frame at the bundle's frame size (bilinear; area averaging when shrinking), unchanged when it already is."""
    if frame.shape[:2] == tuple(hw):
        return frame
    shrink = frame.shape[0] > hw[0] or frame.shape[1] > hw[1]
    return cv2.resize(frame, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def encode(image: np.ndarray, ext: str = ".png", quality: int = 90) -> bytes:
    """uint8 RGB -> PNG (lossless, what goes back to a normal pool) or JPEG (overlays, thumbnails) bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise PackdError(f"cannot encode a {image.shape} image as {ext}")
    return buf.tobytes()


def overlay(frame: np.ndarray, amap: np.ndarray, score: float, threshold: float | None) -> np.ndarray:
    """frame | anomaly map blended over it (blue below half the threshold, red at or above it), under a header
    with `verdict_text`: what a defect's record keeps."""
    h, w = frame.shape[:2]
    top = threshold if threshold and threshold > 0 else float(amap.max()) or 1.0
    level = cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) / top
    level = np.clip(2 * level - 1, 0, 1)  # blue up to half the threshold, red at and above it
    heat = cv2.cvtColor(cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blend = (0.5 * frame + 0.5 * heat).astype(np.uint8)
    scale = max(1, 256 // h)
    panels = np.concatenate([frame, blend], axis=1)
    panels = cv2.resize(panels, (panels.shape[1] * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    header = np.full((28, panels.shape[1], 3), (200, 40, 40) if threshold and score > threshold else (30, 120, 60),
                     np.uint8)
    cv2.putText(header, verdict_text(score, threshold), (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.concatenate([header, panels], axis=0)
