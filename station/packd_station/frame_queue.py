"""A bounded frame queue that never blocks the camera: when inspection falls behind, the oldest frame is dropped
and counted, and the inspector takes what waits in micro-batches."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """A decoded frame at the bundle's frame size, where it came from, and when it arrived."""

    image: np.ndarray
    source: str
    time: float


class FrameQueue:
    """put() never waits; take() waits for at least one frame and returns up to `most` of the oldest."""

    def __init__(self, size: int):
        self._frames: deque[Frame] = deque()
        self._size = size
        self._ready = threading.Condition()
        self.dropped = 0  # since the last take_dropped()
        self.closed = False

    def put(self, frame: Frame) -> None:
        with self._ready:
            if len(self._frames) >= self._size:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self._ready.notify()

    def take(self, most: int, timeout: float = 0.5) -> list[Frame]:
        with self._ready:
            if not self._frames and not self.closed:
                self._ready.wait(timeout)
            return [self._frames.popleft() for _ in range(min(most, len(self._frames)))]

    def take_dropped(self) -> int:
        with self._ready:
            n, self.dropped = self.dropped, 0
            return n

    def __len__(self) -> int:
        return len(self._frames)

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()
