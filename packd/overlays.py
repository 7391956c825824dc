"""PNG overlays of anomaly maps: image | map blended over it | ground truth outline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

# jet-like colour ramp: blue -> cyan -> green -> yellow -> red
_RAMP = np.array([[0, 0, 0.5], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0.5, 0, 0]], np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0,1] (H,W) -> uint8 RGB (H,W,3)."""
    pos = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    t = (pos - lo)[..., None]
    return ((_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t) * 255).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, lo: float, hi: float) -> np.ndarray:
    """Side by side: the image, the map (scaled by lo..hi) blended at 50 %, the mask outlined in white."""
    heat = colorize((amap - lo) / max(hi - lo, 1e-12))
    blend = (0.5 * image + 0.5 * heat).astype(np.uint8)
    outlined = image.copy()
    if mask is not None and mask.any():
        edge = mask & ~ndimage.binary_erosion(mask)
        outlined[ndimage.binary_dilation(edge)] = 255
        blend[ndimage.binary_dilation(edge)] = 255
    return np.concatenate([image, blend, outlined], axis=1)


def save_overlay(path: str | Path, image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, lo: float,
                 hi: float) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, amap, mask, lo, hi)).save(path)
