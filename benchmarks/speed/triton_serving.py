"""The cost of serving through Triton: frames/s and latency from N concurrent cameras, through a real
Triton (the `packd` line model; nvidia-pytriton's tritonserver, `make triton-env`) and through the local
runtime (one `Detector` shared by N threads), on the same machine and bundle.

Each camera sends one frame per call for `--calls` calls; lines alternate between two products whose
prototypes were set by one changeover each. Reproduce:

    .venv/bin/python benchmarks/speed/triton_serving.py --bundle runs/fewshot/bundles/packd_best_fp32
"""

from __future__ import annotations

import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import typer

from packd.evaluation.reports import check_report_path, write_report
from packd_bench.triton_local import local_triton
from packd_export.triton import write_repository
from packd_runtime import Detector
from packd_runtime.triton.client import TritonDetector

LINES = ("line-a", "line-b")


def _stats(latencies: list[float], wall: float) -> dict[str, float]:
    ms = np.array(latencies) * 1e3
    return {"frames_per_s": len(ms) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def _run(cameras: int, calls: int, call) -> dict[str, float]:
    """`cameras` threads, each `calls` timed calls of `call(camera)` after 3 untimed ones."""
    def camera(i: int) -> list[float]:
        for _ in range(3):
            call(i)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - t0)
        return times

    t0 = time.perf_counter()
    with ThreadPoolExecutor(cameras) as pool:
        latencies = [t for ts in pool.map(camera, range(cameras)) for t in ts]
    return _stats(latencies, time.perf_counter() - t0)


def main(bundle: Path = Path("runs/fewshot/bundles/packd_best_fp32"), env: Path = Path(".venv-triton"),
         cameras: str = "1,4,8", calls: int = 40, protocol: str = "grpc",
         results: Path = Path("benchmarks/results/triton_serving")) -> None:
    check_report_path(results.with_suffix(".json"))
    rng = np.random.default_rng(0)
    rows: dict[str, dict] = {}
    with Detector.open(bundle, backend="onnxruntime") as det:
        shape = (*det.frame_hw, 3)
        frame = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
        supports = {line: rng.integers(0, 256, (2, *shape), dtype=np.uint8) for line in LINES}
        protos = {line: det.prototypes(s) if det.few_shot else None for line, s in supports.items()}
        for n in map(int, cameras.split(",")):
            rows[f"local Detector, {n} cameras"] = _run(n, calls, lambda i: det.detect(frame, protos[LINES[i % 2]]))
            print(rows[f"local Detector, {n} cameras"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_repository(bundle, Path(tmp) / "repo", backend="onnxruntime")
        with local_triton(Path(tmp) / "repo", env) as server:
            url = server.grpc if protocol == "grpc" else server.http
            with TritonDetector(url, protocol=protocol) as setup:
                for line, s in supports.items():
                    setup.changeover(line, s)
            for n in map(int, cameras.split(",")):
                clients = [TritonDetector(url, protocol=protocol) for _ in range(n)]
                rows[f"Triton ({protocol}), {n} cameras"] = _run(
                    n, calls, lambda i, clients=clients: clients[i].detect(LINES[i % 2], frame))
                for c in clients:
                    c.close()
                print(rows[f"Triton ({protocol}), {n} cameras"], flush=True)
    write_report(results.with_suffix(".json"), {"machine": platform.processor() or platform.machine(),
                                                "bundle": str(bundle), "calls_per_camera": calls,
                                                "protocol": protocol, "rows": rows})
    lines = ["| path | frames/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {k} | {r['frames_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for k, r in rows.items()]
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
