"""The normal training images export computes from: a bundle's default threshold and int8's calibration and
validation data. Loaded once per export as uint8 camera frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packd.data.datasets import list_split
from packd.data.preprocess import load_frames
from packd.errors import PackdError

NORMAL_IMAGES = 32  # normal training images per training category: the default threshold and int8 calibration
VALIDATION_IMAGES = 16  # the next ones per category: int8's sensitivity analysis and checks (never calibrated on)


def normal_frames(config: dict[str, Any], frame_hw: tuple[int, int], per_category: int,
                  data: Path | None = None) -> dict[str, np.ndarray]:
    """Normal training images of the checkpoint's categories as uint8 camera frames (N,H,W,3)."""
    root = Path(data or config["train"]["data"])
    frames = {}
    for cat in config["train"]["categories"]:
        try:
            samples = list_split(root, cat, "train")[:per_category]
        except PackdError as e:
            raise PackdError(f"normal images: {e} (pass --calibration-data DIR with the training dataset)") from None
        frames[cat] = load_frames([s.path for s in samples], frame_hw)
    return frames
