"""Latency, throughput, changeover time, memory and accuracy of every backend available here.

Words as trtexec uses them: GPU compute time (CUDA events around the kernels), H2D / D2H copy
time, latency = end to end for one call (uint8 frames in, maps and scores out, pre- and
post-processing included), throughput = images / wall time over the timed calls.

Backends: PyTorch eager fp32 (CPU or GPU), and on a GPU PyTorch fp16 / bf16 autocast, CUDA graphs
and torch.compile; ONNX Runtime (CPU, and CUDA when onnxruntime-gpu is installed) on each bundle
precision; TensorRT on each bundle that has engines for this GPU.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from packd.models.loading import load_scorer
from packd_export.graphs import QueryGraph
from packd_runtime import Detector
from packd_runtime.bundle_format import IMAGES, QUERY

PERCENTILES = (90, 95, 99)


def latency_stats(seconds: list[float], images: int, wall: float) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    out = {"min_ms": float(ms.min()), "median_ms": float(np.median(ms)), "mean_ms": float(ms.mean())}
    out |= {f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES}
    out["throughput_img_s"] = images * len(seconds) / wall
    return out


def gpu_compute_stats(ms: list[float]) -> dict[str, float]:
    """GPU compute time (CUDA events) over many calls, the same statistics for every backend."""
    a = np.asarray(ms, dtype=np.float64)
    return {"gpu_compute_median_ms": float(np.median(a)), "gpu_compute_min_ms": float(a.min()),
            "gpu_compute_mean_ms": float(a.mean()), "gpu_compute_p90_ms": float(np.percentile(a, 90)),
            "gpu_compute_n": len(a)}


def time_calls(fn: Callable[[], Any], *, warmup: int, iters: int, images: int) -> dict[str, float]:
    """Warm up, then time `iters` calls one by one (each call ends with results on the host)."""
    for _ in range(warmup):
        fn()
    seconds = []
    start = time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t)
    return latency_stats(seconds, images, time.perf_counter() - start)


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) for this process, where Linux allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def machine_info() -> dict[str, Any]:
    import onnxruntime

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                 "compute_capability": "".join(map(str, torch.cuda.get_device_capability(0)))}
        try:
            import subprocess

            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


@dataclass
class TorchRunner:
    """The PyTorch model as a deployable function: uint8 frames (numpy) -> (scores, maps) numpy."""

    ckpt: Path
    device: str = "cpu"
    mode: str = "eager"  # eager | fp16 | bf16 | cudagraphs | compile
    query: Any = None
    support: Any = None  # frames -> prototypes, as the deployed support path (graph + bank bound)
    prototypes: list[torch.Tensor] = field(default_factory=list)
    _graphs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device.startswith("cuda"):  # FP32 means FP32: no TF32 convolutions or matmuls in the reference
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        scorer = load_scorer(self.ckpt)[0].to(self.device)
        self.query = QueryGraph(scorer).eval().to(self.device)
        self.support = lambda frames: scorer.prototypes(self.query.preprocess(frames))  # bank bound included
        if self.mode == "compile":
            self.query = torch.compile(self.query)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.no_grad()
    def set_supports(self, frames: np.ndarray) -> None:
        self.prototypes = list(self.support(torch.from_numpy(frames).to(self.device)))
        self._sync()

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        scores, maps = self._run(x)
        return scores.float().cpu().numpy(), maps.float().cpu().numpy()

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The query as this row runs it: graph replay, or the module under this row's autocast."""
        if self.mode == "cudagraphs":
            return self._graph(x)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mode)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            return self.query(x, *self.prototypes)

    def _graph(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.query(static_in, *self.prototypes)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.query(static_in, *self.prototypes)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def compute_samples(self, frames: np.ndarray, iters: int) -> list[float]:
        """GPU compute time of each of `iters` calls (CUDA events around the query exactly as this row runs
        it: its autocast dtype, its graph replay; frames already on the GPU); [] on the CPU."""
        if not self.device.startswith("cuda"):
            return []
        x = torch.from_numpy(frames).to(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        with torch.no_grad():
            for _ in range(iters):
                start.record()
                self._run(x)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
        return times


def accuracy(ref: tuple[np.ndarray, np.ndarray], out: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Against PyTorch FP32 on the same frames: max map error (absolute and / map range), score rank agreement."""
    (rs, rm), (s, m) = ref, out
    err = float(np.abs(m - rm).max())
    rank = float(spearmanr(s, rs).statistic) if len(s) > 2 else float("nan")
    return {"max_map_err": err, "max_map_err_rel": err / float(rm.max() - rm.min() or 1.0), "score_spearman": rank}


def runtime_overhead(bundle: Path, frames: np.ndarray, supports: np.ndarray | None, iters: int) -> dict[str, float]:
    """Detector.detect against its backend's bare `run` of the query graph on the same feeds (the
    `Backend` interface), calls interleaved so that both see the same machine load."""
    with Detector.open(bundle, backend="onnxruntime") as det:
        feeds = {IMAGES: frames}
        if supports is not None:
            protos = det.prototypes(supports)
            feeds |= dict(zip(det.prototype_names, protos.arrays))
        raw, full = [], []
        for i in range(iters + 3):
            t = time.perf_counter()
            det.backend.run(QUERY, feeds)
            t1 = time.perf_counter()
            det.detect(frames)
            t2 = time.perf_counter()
            if i >= 3:
                raw.append(t1 - t)
                full.append(t2 - t1)
    r, f = float(np.median(raw)) * 1e3, float(np.median(full)) * 1e3
    return {"raw_median_ms": r, "detector_median_ms": f, "overhead_ms": f - r, "overhead_pct": 100 * (f - r) / r}
