"""Reverse Distillation: model (`model.py`), settings and training (`training.py`)."""

from packd.methods.rd.model import ReverseDistillation
from packd.methods.rd.training import PRESETS, RDSettings, build, make_training

__all__ = ["PRESETS", "RDSettings", "ReverseDistillation", "build", "make_training"]
