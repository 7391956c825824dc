"""MemKD: model (`model.py`), settings and presets (`settings.py`), build and training (`training.py`)."""
