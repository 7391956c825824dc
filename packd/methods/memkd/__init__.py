"""MemKD: model (`model.py`), settings and training (`training.py`)."""

from packd.methods.memkd.model import MemKD, NRMemory
from packd.methods.memkd.training import PRESETS, MemKDSettings, build, make_training

__all__ = ["PRESETS", "MemKD", "MemKDSettings", "NRMemory", "build", "make_training"]
