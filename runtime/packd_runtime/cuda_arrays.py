"""Device arrays handed to the runtime through `__cuda_array_interface__` (cupy, torch, numba, pycuda): on which
stream their producer wrote them, so a backend orders its reads after that write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LEGACY_STREAM = 1  # __cuda_array_interface__ v3: 1 = the legacy default stream, 2 = per-thread default


def producer_stream(cai: Mapping[str, Any]) -> int | None:
    """The stream a device array was written on: the one it names, the legacy default stream when it names
    none (torch's version 2 export) or 0; None when the producer says no ordering is needed."""
    if "stream" not in cai:
        return LEGACY_STREAM
    return None if cai["stream"] is None else cai["stream"] or LEGACY_STREAM
