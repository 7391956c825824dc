"""Device arrays handed to the runtime through `__cuda_array_interface__` (cupy, torch, numba, pycuda): whether the
interface is well formed, and on which stream their producer wrote them, so a backend orders its reads after that
write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from packd_runtime.errors import PackdError

LEGACY_STREAM = 1  # __cuda_array_interface__ v3: 1 = the legacy default stream, 2 = per-thread default


def array_interface(obj: Any, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a device array's `__cuda_array_interface__` declares; one line when it is malformed
    (not a dict, a shape that is not non-negative ints, a typestr numpy does not know, no (pointer, read-only))."""
    cai = obj.__cuda_array_interface__
    try:
        shape, data = tuple(cai["shape"]), cai["data"]
        dtype = np.dtype(cai["typestr"])
        ok = (all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
              and isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], int))
    except (TypeError, KeyError, ValueError, IndexError):
        ok = False
    if not ok:
        raise PackdError(f"{what}: {type(obj).__name__}'s __cuda_array_interface__ is malformed (it needs shape, "
                         "typestr and data as the CUDA Array Interface defines them)")
    return shape, dtype


def producer_stream(cai: Mapping[str, Any]) -> int | None:
    """The stream a device array was written on: the one it names, the legacy default stream when it names
    none (torch's version 2 export) or 0; None when the producer says no ordering is needed."""
    if "stream" not in cai:
        return LEGACY_STREAM
    return None if cai["stream"] is None else cai["stream"] or LEGACY_STREAM
