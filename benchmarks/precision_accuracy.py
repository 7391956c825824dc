"""Accuracy of fp16 and int8 bundles against fp32, executed by ONNX Runtime on the CPU.

For each checkpoint: export fp32, fp16 and int8 bundles (int8 calibrated on the training
categories' normal images), run them on the held-out categories' test images (PACKD: prototypes
from the same 2 supports, through each precision's own support graph) and compare with fp32:
score rank agreement (Spearman), map error relative to the fp32 map range, and the change of
image / pixel AUROC. Reproduce (after benchmarks/fewshot_table.py has trained its models):

    .venv/bin/python benchmarks/precision_accuracy.py --runs-dir runs/fewshot
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from scipy.stats import spearmanr

from packd.data import list_split
from packd.fewshot import draw_support_sets
from packd.metrics import image_auroc, pixel_metrics
from packd.preprocess import load_frames, load_mask
from packd_export.bundle import export_bundle
from packd_runtime import Detector
from packd_runtime.atomic import check_report_path, write_report

PRECISIONS = ("fp32", "fp16", "int8")


def _run(bundle: Path, images: np.ndarray, supports: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of a bundle through the runtime (ONNX Runtime on the CPU); prototypes from its own
    support graph."""
    with Detector.open(bundle, backend="onnxruntime") as det:
        if supports is not None:
            det.prototypes(supports)
        result = det.detect(images)
    return result.scores, result.maps


def main(runs_dir: Path = Path("runs/fewshot"), categories: str = "dots,tiles,capsule",
         results: Path = Path("benchmarks/results/precision_accuracy")) -> None:
    check_report_path(results.with_suffix(".json"))  # before the long run, not after it
    data = runs_dir / "data"
    out: dict = {}
    for name in ("packd", "rd_meta"):
        ckpt = runs_dir / name
        bundles = {p: export_bundle(ckpt, runs_dir / "bundles" / f"{name}_{p}", precision=p, max_batch=16,
                                    max_shots=8, engines="never") for p in PRECISIONS}
        size = bundles["fp32"]["image_size"]
        preds = {p: {} for p in PRECISIONS}
        truth = {}
        for cat in categories.split(","):
            test = list_split(data, cat, "test")
            images = load_frames([s.path for s in test], (size, size))
            masks = np.stack([load_mask(s.mask, (size, size)) if s.mask else np.zeros((size, size), bool)
                              for s in test])
            truth[cat] = (np.array([s.label for s in test]), masks)
            support = (load_frames([s.path for s in draw_support_sets(data, cat, 2, 1, 0)[0]], (size, size))
                       if name == "packd" else None)
            for p in PRECISIONS:
                preds[p][cat] = _run(runs_dir / "bundles" / f"{name}_{p}", images, support)
        rows = {}
        for p in PRECISIONS:
            per_cat = {}
            for cat, (labels, masks) in truth.items():
                s32, m32 = preds["fp32"][cat]
                s, m = preds[p][cat]
                rng = float(m32.max() - m32.min())
                per_cat[cat] = {
                    "spearman": float(spearmanr(s, s32).statistic),
                    "map_max_err_rel": float(np.abs(m - m32).max() / rng),
                    "map_mean_err_rel": float(np.abs(m - m32).mean() / rng),
                    "image_auroc": image_auroc(labels, s),
                    "pixel_auroc": pixel_metrics(m, masks)["pixel_auroc"],
                }
            rows[p] = {"categories": per_cat,
                       "mean": {k: float(np.mean([c[k] for c in per_cat.values()]))
                                for k in next(iter(per_cat.values()))},
                       "query_onnx_bytes": (runs_dir / "bundles" / f"{name}_{p}" / "query.onnx").stat().st_size}
        out[name] = rows
        print(name, {p: {k: round(v, 4) for k, v in r["mean"].items()} for p, r in rows.items()}, flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    write_report(results.with_suffix(".json"), out)
    lines = ["| model | precision | score rank agreement (Spearman) | max map error / map range "
             "| mean map error / map range | image AUROC | pixel AUROC | query.onnx MB |", "|---" * 8 + "|"]
    for name, rows in out.items():
        for p, r in rows.items():
            m = r["mean"]
            lines.append(f"| {name} | {p} | {m['spearman']:.4f} | {m['map_max_err_rel']:.4f} "
                         f"| {m['map_mean_err_rel']:.5f} | {m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} "
                         f"| {r['query_onnx_bytes'] / 1e6:.1f} |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
