"""Accuracy of fp16 and int8 bundles against fp32, every kind, executed by ONNX Runtime on the CPU.

For each checkpoint: export one bundle per variant (int8 calibrated on the normal training images the
checkpoint was trained on, its FP16 fallbacks chosen by the sensitivity analysis), run them through the
runtime on the test images of the given categories (few-shot kinds: prototypes from the same 2 supports,
through each variant's own support graph; MemKD: the model trained on that category) and compare with
fp32: score rank agreement (Spearman), map error relative to the fp32 map's range, and image AUROC.
`--reuse` keeps bundles an earlier run exported. Variants: fp32, fp16, int8 (sensitivity analysis,
min/max calibration), int8-none (every trunk layer int8), int8-percentile, int8-modelopt.
Reproduce (after benchmarks/tables/fewshot_table.py has trained its models):

    .venv/bin/python benchmarks/tables/precision_accuracy.py --runs-dir runs/fewshot
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer
from scipy.stats import spearmanr

from packd.data.datasets import list_split
from packd.data.preprocess import load_frames, load_mask
from packd.evaluation.fewshot import draw_support_sets
from packd.evaluation.metrics import image_auroc, pixel_metrics
from packd.evaluation.reports import check_report_path, write_report
from packd_export.bundle import export_bundle
from packd_export.int8 import Int8Settings
from packd_runtime import Detector

VARIANTS = {"fp32": ("fp32", None), "fp16": ("fp16", None), "int8": ("int8", Int8Settings()),
            "int8-none": ("int8", Int8Settings(fallback="none")),
            "int8-percentile": ("int8", Int8Settings(calibration="percentile")),
            "int8-modelopt": None}  # written by benchmarks/modelopt_int8.py (NVIDIA ModelOpt, optional)
KINDS = {"packd": "packd_best", "knn": "knn", "rd": "rd_meta", "memkd": "memkd_{category}"}


def _run(bundle: Path, images: np.ndarray, supports: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of a bundle through the runtime (ONNX Runtime on the CPU)."""
    with Detector.open(bundle, backend="onnxruntime") as det:
        if supports is not None:
            det.prototypes(supports)
        result = det.detect(images)
    return result.scores, result.maps


def _compare(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], labels: np.ndarray,
             masks: np.ndarray) -> dict[str, float]:
    (s32, m32), (s, m) = ref, got
    span = float(m32.max() - m32.min())
    return {"spearman": float(spearmanr(s, s32).statistic), "map_max_err_rel": float(np.abs(m - m32).max() / span),
            "map_mean_err_rel": float(np.abs(m - m32).mean() / span), "image_auroc": image_auroc(labels, s),
            "image_auroc_fp32": image_auroc(labels, s32), "pixel_auroc": pixel_metrics(m, masks)["pixel_auroc"]}


def main(runs_dir: Path = Path("runs/fewshot"), categories: str = "dots,tiles,capsule",
         kinds: str = "packd,knn,rd,memkd", variants: str = "fp32,fp16,int8,int8-none", reuse: bool = False,
         results: Path = Path("benchmarks/results/precision_accuracy")) -> None:
    check_report_path(results.with_suffix(".json"))  # before the long run, not after it
    data, cats = runs_dir / "data", categories.split(",")
    names = variants.split(",")
    earlier = results.with_suffix(".json")
    out: dict = json.loads(earlier.read_text()).get("kinds", {}) if earlier.exists() else {}
    for kind in kinds.split(","):
        per_cat: dict[str, dict] = {v: {} for v in names}
        exports: dict[str, dict] = {v: {} for v in names}  # per variant and checkpoint: time and FP16 layers
        for cat in cats:
            ckpt = runs_dir / KINDS[kind].format(category=cat)
            test = list_split(data, cat, "test")
            for v in names:
                if ckpt.name in exports[v]:
                    continue
                path, t0 = runs_dir / "bundles" / f"{ckpt.name}_{v}", time.perf_counter()
                if (reuse or VARIANTS[v] is None) and (path / "manifest.json").exists():
                    manifest = json.loads((path / "manifest.json").read_text())
                elif VARIANTS[v] is None:
                    raise typer.BadParameter(f"{path} is missing: run benchmarks/modelopt_int8.py first")
                else:
                    precision, settings = VARIANTS[v]
                    manifest = export_bundle(ckpt, path, precision=precision, max_batch=16, max_shots=8,
                                             engines="never", int8=settings)
                exports[v][ckpt.name] = {"export_s": round(time.perf_counter() - t0, 1), **(
                    {k: x for k, x in manifest.int8.items() if k in ("fp16_layers", "validation", "calibration")}
                    if manifest.int8 is not None else {})}
            size = json.loads((runs_dir / "bundles" / f"{ckpt.name}_fp32" / "manifest.json").read_text())["image_size"]
            images = load_frames([s.path for s in test], (size, size))
            masks = np.stack([load_mask(s.mask, (size, size)) if s.mask else np.zeros((size, size), bool)
                              for s in test])
            labels = np.array([s.label for s in test])
            support = (load_frames([s.path for s in draw_support_sets(data, cat, 2, 1, 0)[0]], (size, size))
                       if kind in ("packd", "knn") else None)
            preds = {v: _run(runs_dir / "bundles" / f"{ckpt.name}_{v}", images, support) for v in names}
            for v in names:
                per_cat[v][cat] = _compare(preds["fp32"], preds[v], labels, masks)
        rows = {}
        for v in names:
            mean = {k: float(np.mean([c[k] for c in per_cat[v].values()])) for k in next(iter(per_cat[v].values()))}
            rows[v] = {"categories": per_cat[v], "mean": mean, "exports": exports[v]}
        out[kind] = out.get(kind, {}) | rows  # a run with fewer variants adds its rows to an earlier run's
        print(kind, {v: {k: round(x, 4) for k, x in r["mean"].items()} for v, r in rows.items()}, flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    write_report(results.with_suffix(".json"), {"categories": cats, "kinds": out})
    lines = ["| kind | variant | Spearman vs fp32 | mean map error / range | max map error / range "
             "| image AUROC (fp32) | pixel AUROC | FP16 layers |", "|---" * 8 + "|"]
    for kind, rows in out.items():
        for v, r in rows.items():
            m = r["mean"]
            fp16 = ", ".join(str(sum(len(x) for x in e["fp16_layers"].values())) for e in r["exports"].values()
                             if "fp16_layers" in e) or "-"
            lines.append(f"| {kind} | {v} | {m['spearman']:.4f} | {100 * m['map_mean_err_rel']:.2f} % "
                         f"| {100 * m['map_max_err_rel']:.1f} % | {m['image_auroc']:.3f} ({m['image_auroc_fp32']:.3f}) "
                         f"| {m['pixel_auroc']:.3f} | {fp16} |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
