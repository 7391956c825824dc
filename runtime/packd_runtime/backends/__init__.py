"""The interface every runtime backend implements, and the choice of backend for a bundle.

`Detector` depends only on `Backend`; benchmarks and reports go through `Detector` or this
interface, never through a backend's internals (sessions, contexts, buffers).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from packd_runtime.errors import PackdError

BACKENDS = ("auto", "tensorrt", "onnxruntime")


class Backend(Protocol):
    """Runs a bundle's graphs. Implementations must be safe to call from several threads."""

    name: str  # "onnxruntime" or "tensorrt"
    device: str  # where the graphs run: "cpu" or "cuda:N"
    description: str  # e.g. the ONNX Runtime provider, or the engines' TensorRT version and GPU

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Outputs of `graph` ("support" or "query") by output name, as host arrays."""
        ...

    def timings(self) -> dict[str, float]:
        """This thread's last call, in ms (GPU compute, H2D, D2H) where the backend measures them; else {}."""
        ...

    def close(self) -> None:
        """Release sessions, engines, contexts, buffers and streams."""
        ...


def _engines_here(manifest: dict[str, Any]) -> tuple[dict[str, str] | None, str]:
    """Engines of this bundle that run here (this TensorRT version and GPU), or why none do."""
    from packd_runtime.tensorrt_build import compute_capability, why_no_tensorrt

    reason = why_no_tensorrt()
    if reason:
        return None, reason
    import tensorrt as trt

    cc = compute_capability(0)
    fits = {e["graph"]: e["file"] for e in manifest["engines"]
            if e["tensorrt"] == trt.__version__ and e["compute_capability"] == cc}
    if set(fits) == set(manifest["graphs"]):
        return fits, f"engines for TensorRT {trt.__version__} on sm{cc}"
    others = sorted({f"TensorRT {e['tensorrt']} / sm{e['compute_capability']}" for e in manifest["engines"]})
    if others:
        return None, (f"the bundle's engines were built for {', '.join(others)}; this machine has TensorRT "
                      f"{trt.__version__} / sm{cc}: rebuild them here with `packd-export build BUNDLE`")
    return None, "the bundle has no TensorRT engines yet (build them here with `packd-export build BUNDLE`)"


def open_backend(bundle: Path, manifest: dict[str, Any], backend: str = "auto", device: int = 0,
                 build: bool = False, profile: bool = False) -> tuple[Backend, dict[str, Any], str]:
    """(backend, manifest, reason): TensorRT when the bundle has engines for this GPU and TensorRT
    version (or `build=True` and the builder is here: build and cache them; the manifest then lists
    them), else ONNX Runtime (CUDA provider if present, else CPU)."""
    if backend not in BACKENDS:
        raise PackdError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in ("auto", "tensorrt"):
        engines, why = _engines_here(manifest)
        if engines is None and build:
            from packd_runtime.tensorrt_build import build_bundle_engines, why_no_tensorrt

            if why_no_tensorrt() is None:
                manifest = build_bundle_engines(bundle)
                engines, why = _engines_here(manifest)
                why = f"built and cached {why}"
        if engines is not None:
            from packd_runtime.backends.tensorrt_backend import TensorRTBackend

            return TensorRTBackend(bundle, engines, device, profile=profile), manifest, f"TensorRT: {why}"
        if backend == "tensorrt":
            raise PackdError(f"TensorRT backend unavailable: {why}")
        fallback = f"ONNX Runtime, because TensorRT is not usable: {why}"
    else:
        fallback = "ONNX Runtime, as asked"
    from packd_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    ort_backend = OnnxRuntimeBackend(bundle, manifest, device)
    return ort_backend, manifest, f"{fallback} ({ort_backend.description})"
