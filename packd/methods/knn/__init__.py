"""Training-free nearest-neighbour detector: model (`model.py`), settings and presets (`training.py`)."""

from packd.methods.knn.model import NearestNeighbour
from packd.methods.knn.training import PRESETS, KNNSettings, build

__all__ = ["PRESETS", "KNNSettings", "NearestNeighbour", "build"]
