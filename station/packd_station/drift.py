"""Drift: a product's normal scores over time against its calibration. The statistic is the z of the rolling
window's mean against the calibration frames' mean, with both samples' uncertainty:

    z = (mean(window) - mean(calibration)) / (std(calibration) * sqrt(1 / len(window) + 1 / len(calibration)))

|z| above the limit (default 4) raises the alarm once the window holds at least MIN_SCORES scores; it clears when
|z| falls below the limit again. Only scores judged OK feed it (a defect is not the product drifting)."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

MIN_SCORES = 30


@dataclass(frozen=True)
class Calibration:
    """The normal scores a threshold came from, summarised."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, scores: np.ndarray) -> Calibration:
        scores = np.asarray(scores, np.float64)
        return cls(float(scores.mean()), float(scores.std()), int(scores.size))


class Drift:
    """One line's monitor: the recorder adds scores, the page and the sinks read its state (under one lock)."""

    def __init__(self, window: int, limit: float):
        self.window, self.limit = window, limit
        self.scores: deque[float] = deque(maxlen=window)
        self.calibration: Calibration | None = None
        self.alarm = False
        self._lock = threading.Lock()

    def reset(self, calibration: Calibration | None) -> None:
        with self._lock:
            self.calibration, self.alarm = calibration, False
            self.scores.clear()

    def add(self, scores: list[float]) -> bool:
        """Add OK scores; True when the alarm switched on or off."""
        with self._lock:
            self.scores.extend(scores)
            z = self._z()
            alarm = z is not None and abs(z) > self.limit
            changed, self.alarm = alarm != self.alarm, alarm
            return changed

    def z(self) -> float | None:
        with self._lock:
            return self._z()

    def _z(self) -> float | None:
        c = self.calibration
        if c is None or len(self.scores) < MIN_SCORES:
            return None
        spread = max(c.std, 1e-6 * max(abs(c.mean), 1e-12)) * math.sqrt(1 / len(self.scores) + 1 / c.n)
        return (math.fsum(self.scores) / len(self.scores) - c.mean) / spread  # every frame: no numpy array

    def state(self) -> dict:
        """What the page, MQTT and OPC UA show: the window's mean and quantiles, z, its limit and the alarm."""
        with self._lock:
            s, c, z, alarm = np.asarray(self.scores, np.float64), self.calibration, self._z(), self.alarm
        q = np.quantile(s, [0.1, 0.5, 0.9]).tolist() if s.size else [None] * 3
        return {"scores": int(s.size), "window": self.window, "mean": float(s.mean()) if s.size else None,
                "q10": q[0], "q50": q[1], "q90": q[2], "z": z, "limit": self.limit, "alarm": alarm,
                "calibration": None if c is None else {"mean": c.mean, "std": c.std, "n": c.n}}
