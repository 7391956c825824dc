"""MemKD: model (`model.py`), settings and training (`training.py`)."""

from packd.methods.memkd.model import MemKD, NRMemory
from packd.methods.memkd.training import PRESETS, MemKDSettings, build, training

__all__ = ["PRESETS", "MemKD", "MemKDSettings", "NRMemory", "build", "training"]
