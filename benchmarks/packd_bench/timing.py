"""Timing for the benchmark scripts that must not import torch (what camera software runs has none)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def median_ms(call: Callable[[], Any], repeats: int) -> float:
    """The median wall time of `repeats` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec), where Linux says."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
