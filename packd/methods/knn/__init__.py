"""Training-free nearest neighbour: model (`model.py`), settings and presets (`settings.py`), build
(`training.py`)."""
