"""Datasets: their layouts on disk, the synthetic generator, and the one preprocessing path."""
