"""What cutting frames into tiles and stitching their maps costs on the host, against the query graph on those tiles.

For each frame size and tiling: `Tiling` construction (once per bundle), `cut` (frames -> tile batch) and `stitch`
(tile maps -> one map per frame), each the median of `--repeats` runs, and the bundle's query graph on the same
tiles through the runtime (`Detector.detect`, ONNX Runtime here). The bundle's frame size must equal the tile size
(the demo's 128-px bundles do). This decides where tiling runs: if host cutting and stitching stay a few per cent of
the graph, the runtime can do it with unchanged graphs.

    .venv/bin/python benchmarks/speed/tiling_overhead.py --bundle runs/demo/bundle_knn
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import typer

from packd.evaluation.reports import check_report_path, write_report
from packd_bench.timing import median_ms
from packd_runtime import Detector
from packd_runtime.tiling import Tiling

CASES = [((512, 512), 0), ((512, 512), 32), ((2048, 2448), 0), ((2048, 2448), 32)]


def main(bundle: Path = Path("runs/demo/bundle_knn"), repeats: int = 7, graph_repeats: int = 2,
         results: Path = Path("benchmarks/results/tiling_overhead")) -> None:
    check_report_path(results.with_suffix(".json"))
    rows = []
    with Detector.open(bundle, backend="onnxruntime") as det:
        tile = det.frame_hw[0]
        rng = np.random.default_rng(0)
        if det.few_shot:
            det.prototypes(rng.integers(0, 256, (2, tile, tile, 3), dtype=np.uint8))
        for frame_hw, overlap in CASES:
            made = time.perf_counter()
            tiling = Tiling(frame_hw, tile=tile, overlap=overlap)
            made = (time.perf_counter() - made) * 1000
            frame = rng.integers(0, 256, (1, *frame_hw, 3), dtype=np.uint8)
            tiles = tiling.cut(frame)
            maps = det.detect(tiles).maps
            tiling.stitch(maps)  # warm: the first call pages in the output buffers
            row = {"frame": f"{frame_hw[0]}x{frame_hw[1]}", "tile": tile, "overlap": overlap, "tiles": tiling.count,
                   "setup_ms": round(made, 1),
                   "cut_ms": round(median_ms(lambda t=tiling, f=frame: t.cut(f), repeats), 2),
                   "stitch_ms": round(median_ms(lambda t=tiling, m=maps: t.stitch(m), repeats), 2),
                   "graph_ms": round(median_ms(lambda t=tiles: det.detect(t), graph_repeats), 1)}
            row["overhead_pct"] = round(100 * (row["cut_ms"] + row["stitch_ms"]) / row["graph_ms"], 2)
            rows.append(row)
            print(row, flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "backend": "onnxruntime CPU"}
    write_report(results.with_suffix(".json"), {"bundle": str(bundle), "machine": machine, "rows": rows})
    header = "| frame | tile | overlap | tiles | setup ms | cut ms | stitch ms | query graph ms | cut + stitch |\n"
    header += "|---|---|---|---|---|---|---|---|---|\n"
    lines = [f"| {r['frame']} | {r['tile']} | {r['overlap']} | {r['tiles']} | {r['setup_ms']} | {r['cut_ms']} | "
             f"{r['stitch_ms']} | {r['graph_ms']} | {r['overhead_pct']} % |" for r in rows]
    results.with_suffix(".md").write_text(
        f"Tiling on the host vs the query graph on the tiles ({machine['cores']} cores, {machine['backend']}, load "
        f"average {machine['load_avg_1m_at_end']} at the end)\n\n" + header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    typer.run(main)
