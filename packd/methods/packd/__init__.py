"""PACKD: model (`model.py`), episodes and losses, settings and presets (`settings.py`), build and meta-training
(`training.py`)."""
