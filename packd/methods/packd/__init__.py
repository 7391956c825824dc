"""PACKD: model (`model.py`), losses (`losses.py`), episodes (`episodes.py`), settings and training (`training.py`)."""

from packd.methods.packd.model import PACKD
from packd.methods.packd.training import PRESETS, PACKDSettings, build, make_training

__all__ = ["PACKD", "PRESETS", "PACKDSettings", "build", "make_training"]
