"""The interface every runtime backend implements, and the choice of backend for a bundle.

`Detector` depends only on `Backend`; benchmarks and reports go through `Detector` or this
interface, never through a backend's internals (sessions, contexts, buffers).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from packd_runtime.bundle_format import bundle_path
from packd_runtime.errors import PackdError

if TYPE_CHECKING:
    from packd_runtime.manifest import Manifest

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
        """This thread's calls since its previous `timings()`: their count and summed times in ms (GPU compute,
        H2D, D2H, host staging) where the backend measures them; else {}."""
        ...

    def close(self) -> None:
        """Release sessions, engines, contexts, buffers and streams."""
        ...


def engines_here(manifest: Manifest, device: int = 0) -> tuple[dict[str, str] | None, str]:
    """Engines of this bundle that run on GPU `device` (this TensorRT version and compute capability), or
    why none do. Engines built on a GPU of the same compute capability but another name are used, with a
    warning: they run, but their tactics were timed on the other GPU."""
    from packd_runtime.tensorrt.build import compute_capability, device_name, modules, why_no_tensorrt

    reason = why_no_tensorrt(device)
    if reason:
        return None, reason
    trt, _ = modules()
    cc, gpu = compute_capability(device), device_name(device)
    matching = [e for e in manifest.engines if e.tensorrt == trt.__version__ and e.compute_capability == cc]
    fits = {e.graph: e.file for e in matching}
    if set(fits) == set(manifest.graphs):
        others = sorted({e.gpu or "an unnamed GPU" for e in matching} - {gpu})
        if others:
            warnings.warn(f"the bundle's engines were built on {', '.join(others)}, this is {gpu} (same compute "
                          f"capability sm{cc}): they run, but `packd-export build` here would time them for it",
                          stacklevel=3)
        return fits, f"engines for TensorRT {trt.__version__} on sm{cc} ({gpu})"
    others = sorted({f"TensorRT {e.tensorrt} / sm{e.compute_capability}" for e in manifest.engines})
    if others:
        return None, (f"the bundle's engines were built for {', '.join(others)}; this machine has TensorRT "
                      f"{trt.__version__} / sm{cc}: rebuild them here with `packd-export build BUNDLE`")
    return None, "the bundle has no TensorRT engines yet (build them here with `packd-export build BUNDLE`)"


def open_backend(bundle: Path, manifest: Manifest, backend: str = "auto", device: int = 0,
                 build: bool = False, profile: bool = False, trusted_engines: set[str] | None = None,
                 verified: dict[str, bytes] | None = None) -> tuple[Backend, Manifest, str]:
    """(backend, manifest, reason): TensorRT when the bundle has engines for this GPU and TensorRT
    version (or `build=True` and the builder is here: build and cache them; the manifest then lists
    them), else ONNX Runtime (CUDA provider if present, else CPU). `trusted_engines`: when given, only these
    engine files are ever loaded (those a trusted signature vouched for). `verified`: the graphs' and engines'
    bytes as `verify_files` hashed them, which the backend loads instead of reading the files again."""
    if backend not in BACKENDS:
        raise PackdError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in ("auto", "tensorrt"):
        usable = manifest if trusted_engines is None else manifest.with_engines(
            tuple(e for e in manifest.engines if e.file in trusted_engines), manifest.files)
        engines, why = engines_here(usable, device)
        if len(usable.engines) < len(manifest.engines):
            why += (f"; {len(manifest.engines) - len(usable.engines)} engine(s) not covered by the signature "
                    "were ignored (sign the bundle again after building them)")
        if engines is None and build:
            from packd_runtime.tensorrt.build import build_bundle_engines, why_no_tensorrt

            if why_no_tensorrt(device) is None:
                manifest, verified = build_bundle_engines(bundle, device), None  # built here, now
                engines, why = engines_here(manifest, device)
                why = f"built and cached {why}"
        if engines is not None:
            from packd_runtime.tensorrt.backend import TensorRTBackend

            plans = {g: verified[f] if verified is not None else bundle_path(bundle, f).read_bytes()
                     for g, f in engines.items()}
            return TensorRTBackend(bundle, plans, device, profile=profile), manifest, f"TensorRT: {why}"
        if backend == "tensorrt":
            raise PackdError(f"TensorRT backend unavailable: {why}")
        fallback = f"ONNX Runtime, because TensorRT is not usable: {why}"
    else:
        fallback = "ONNX Runtime, as asked"
    from packd_runtime.onnxruntime.backend import OnnxRuntimeBackend

    ort_backend = OnnxRuntimeBackend.open(bundle, manifest.graphs, device, verified=verified)
    return ort_backend, manifest, f"{fallback} ({ort_backend.description})"
