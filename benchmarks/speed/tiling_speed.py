"""Line-resolution speed on this machine: a 512 x 512 and a 2048 x 2448 (5 MP) frame through tiled bundles of one
checkpoint, shared and per-position memory: changeover (k = 2 support frames), per-frame latency at batch 1,
frames/s, and the process's peak RSS. Each case runs in its own process, so each peak RSS is that case's alone.

    .venv/bin/python benchmarks/speed/tiling_speed.py --checkpoint runs/demo/checkpoint_knn   # after `make demo`
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import typer

from packd_bench.timing import median_ms, peak_rss_mb

CASES = [  # (frame, tile, overlap, memory)
    ((512, 512), 128, 32, "shared"), ((512, 512), 128, 32, "position"), ((2048, 2448), 128, 0, "position"),
]


def measure(bundle: Path, repeats: int) -> dict:
    """One case, in this process: changeover and frame latency through the runtime, then this process's peak RSS."""
    from packd_runtime import Detector

    rng = np.random.default_rng(0)
    with Detector.open(bundle, backend="onnxruntime") as det:
        supports = rng.integers(0, 256, (2, *det.frame_hw, 3), dtype=np.uint8)
        frame = rng.integers(0, 256, (1, *det.frame_hw, 3), dtype=np.uint8)
        changeover = median_ms(lambda: det.prototypes(supports), max(1, repeats // 2))
        det.detect(frame)  # warm
        frame_ms = median_ms(lambda: det.detect(frame), repeats)
        tiles = det.tiling.count
    return {"tiles": tiles, "changeover_ms": round(changeover, 1), "frame_ms": round(frame_ms, 1),
            "frames_per_s": round(1000 / frame_ms, 2),
            "peak_rss_mb": round(peak_rss_mb() or 0)}


def main(checkpoint: Path = Path("runs/demo/checkpoint_knn"), out: Path = Path("runs/tiling_speed"), repeats: int = 5,
         measure_bundle: Path | None = None, results: Path = Path("benchmarks/results/tiling_speed")) -> None:
    if measure_bundle is not None:  # the child: one case
        print(json.dumps(measure(measure_bundle, repeats)))
        return
    from packd.evaluation.reports import check_report_path, write_report
    from packd_export.bundle import export_bundle

    check_report_path(results.with_suffix(".json"))
    rows = []
    for (h, w), tile, overlap, memory in CASES:
        bundle = out / f"{h}x{w}_{tile}_{overlap}_{memory}"
        if not (bundle / "manifest.json").is_file():
            start = time.perf_counter()
            export_bundle(checkpoint, bundle, frame_size=(h, w), tile=tile, overlap=overlap, memory=memory,
                          max_batch=32, engines="never")
            print(f"exported {bundle.name} in {time.perf_counter() - start:.0f} s", flush=True)
        child = subprocess.run([sys.executable, __file__, "--measure-bundle", str(bundle), "--repeats", str(repeats)],
                               capture_output=True, text=True, check=True)
        row = {"frame": f"{h}x{w}", "tile": tile, "overlap": overlap, "memory": memory,
               **json.loads(child.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(row, flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "backend": "onnxruntime CPU", "batch": 1}
    write_report(results.with_suffix(".json"), {"checkpoint": str(checkpoint), "machine": machine, "rows": rows})
    header = ("| frame | tile | overlap | memory | tiles | changeover ms (k = 2) | ms per frame | frames/s | "
              "peak RSS MB |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['frame']} | {r['tile']} | {r['overlap']} | {r['memory']} | {r['tiles']} | {r['changeover_ms']} | "
             f"{r['frame_ms']} | {r['frames_per_s']} | {r['peak_rss_mb']} |" for r in rows]
    results.with_suffix(".md").write_text(
        f"Tiled bundles of {checkpoint.name} at batch 1 ({machine['cores']} cores, {machine['backend']}, load average "
        f"{machine['load_avg_1m_at_end']} at the end; medians of {repeats} frames)\n\n" + header + "\n".join(lines)
        + "\n")


if __name__ == "__main__":
    typer.run(main)
