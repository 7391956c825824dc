"""Torch device selection, shared by training, evaluation and the benchmarks."""

from __future__ import annotations

import torch

from packd.errors import PackdError


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PackdError(f"device {name} requested but CUDA is not available")
    return torch.device(name)
