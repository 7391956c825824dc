"""Whole-frame resize against tiles on line-resolution frames: image AUROC of one checkpoint exported both ways.

Frames: `--frame` px normal frames of the synthetic TRAINING categories (validation only; targets are not touched),
and copies with one small defect each, painted on a random `--defect-window` px window of the frame (so a defect
covers a few per cent of the frame's side, as on a line). Each kind of bundle gets k normal support frames
(few-shot kinds) and scores the same test frames; image AUROC per category and mean.

    .venv/bin/python benchmarks/tiling_accuracy.py --checkpoint runs/demo/checkpoint_knn
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from sklearn.metrics import roc_auc_score

from packd.synth import CATEGORIES, DEFECTS, _finish
from packd_export.bundle import export_bundle
from packd_runtime import Detector
from packd_runtime.reports import check_report_path, write_report


def line_frames(category: str, size: int, window: int, normal: int, defective: int, seed: int):
    """(normal frames, defective frames) uint8 (N, size, size, 3) of a synthetic category; each defective frame is
    a normal one with one defect painted inside a random window x window square."""
    gen, defects = CATEGORIES[category]
    rng = np.random.default_rng([seed, sum(map(ord, category))])
    frames = np.stack([_finish(rng, gen(rng, size)[0]) for _ in range(normal + defective)])
    bad = frames[normal:].copy()
    for i, frame in enumerate(bad):
        y, x = rng.integers(0, size - window + 1, 2)
        crop = frame[y:y + window, x:x + window].astype(np.float32) / 255
        painted, _ = DEFECTS[defects[i % len(defects)]](rng, crop, None, crop[0, 0].copy())
        frame[y:y + window, x:x + window] = (np.clip(painted, 0, 1) * 255 + 0.5).astype(np.uint8)
    return frames[:normal], bad


def main(checkpoint: Path = Path("runs/demo/checkpoint_knn"), categories: str = "grid,carpet,stripes",
         frame: int = 512, tile: int = 128, overlap: int = 32, defect_window: int = 128, shots: int = 2,
         test: int = 12, seed: int = 0, results: Path = Path("benchmarks/results/tiling_accuracy")) -> None:
    check_report_path(results.with_suffix(".json"))
    cats = categories.split(",")
    data = {c: line_frames(c, frame, defect_window, shots + test, test, seed) for c in cats}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"whole frame resized": {}, f"tiles {tile} px, overlap {overlap}": {"tile": tile,
                                                                                      "overlap": overlap}}
        for name, options in variants.items():
            bundle = Path(tmp) / name.split()[0]
            export_bundle(checkpoint, bundle, frame_size=(frame, frame), max_batch=32, engines="never", **options)
            with Detector.open(bundle, backend="onnxruntime") as det:
                row = {"variant": name, "tiles_per_frame": det.tiling.count if det.tiling else 1}
                seconds = []
                for c, (normal, bad) in data.items():
                    if det.few_shot:
                        det.prototypes(normal[:shots])
                    start = time.perf_counter()
                    scores = det.detect(np.concatenate([normal[shots:], bad])).scores
                    seconds.append((time.perf_counter() - start) / (len(normal) - shots + len(bad)))
                    labels = np.r_[np.zeros(len(normal) - shots), np.ones(len(bad))]
                    row[c] = round(float(roc_auc_score(labels, scores)), 3)
                row["mean"] = round(float(np.mean([row[c] for c in cats])), 3)
                row["ms_per_frame"] = round(1000 * float(np.mean(seconds)), 1)
            rows.append(row)
            print(row, flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "backend": "onnxruntime CPU"}
    setup = {"checkpoint": str(checkpoint), "categories": cats, "frame": frame, "defect_window": defect_window,
             "shots": shots, "test_normal": test, "test_defective": test, "seed": seed}
    write_report(results.with_suffix(".json"), {"setup": setup, "machine": machine, "rows": rows})
    head = "| variant | tiles per frame | " + " | ".join(cats) + " | mean | ms per frame |\n"
    head += "|---" * (len(cats) + 4) + "|\n"
    lines = [f"| {r['variant']} | {r['tiles_per_frame']} | " + " | ".join(f"{r[c]:.3f}" for c in cats)
             + f" | {r['mean']:.3f} | {r['ms_per_frame']} |" for r in rows]
    results.with_suffix(".md").write_text(
        f"Image AUROC on {frame} px line frames of training categories, defects painted in a {defect_window} px "
        f"window, k = {shots}, {test} normal + {test} defective test frames per category ({checkpoint.name}; "
        f"{machine['cores']} cores, {machine['backend']}, load average {machine['load_avg_1m_at_end']} at the "
        "end)\n\n" + head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    typer.run(main)
