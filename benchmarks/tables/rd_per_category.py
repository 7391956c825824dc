"""RD per category on the synthetic dataset and on texture photographs with painted defects.

Trains one RD model per category with the offline EfficientNet-Lite0 teacher, evaluates on that
category's held-out test images and writes JSON + a Markdown table. Reproduce:

    .venv/bin/python benchmarks/tables/rd_per_category.py --out runs/rd_bench --epochs 20
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from packd.data.synth import synthesize, synthesize_photos
from packd.evaluation.evaluate import METRIC_KEYS, evaluate
from packd.evaluation.reports import check_report_path, write_report
from packd.training.train import configure, train


def main(out: Path = Path("runs/rd_bench"), epochs: int = 20, image_size: int = 128, batch_size: int = 8,
         size: int = 256, seed: int = 0, results: Path = Path("benchmarks/results/rd_per_category")) -> None:
    check_report_path(results.with_suffix(".json"))  # before the long run, not after it
    data = out / "data"
    cats = synthesize(data, seed=seed, size=size) + synthesize_photos(data, seed=seed, size=size)
    rows = {}
    for cat in cats:
        t0 = time.perf_counter()
        run, settings = configure("rd", teacher="tf_efficientnet_lite0", image_size=image_size, epochs=epochs,
                                  batch_size=batch_size, seed=seed)
        train("rd", data=data, categories=cat, out=out / "ckpt" / cat, run=run, settings=settings, resume=False,
              progress=False)
        train_s = time.perf_counter() - t0
        report = evaluate(out / "ckpt" / cat, data, cat, progress=False)
        rows[cat] = {**report["categories"][cat], "train_seconds": round(train_s, 1)}
        print(cat, {k: round(v, 4) for k, v in rows[cat].items()}, flush=True)
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in METRIC_KEYS}
    results.parent.mkdir(parents=True, exist_ok=True)
    write_report(results.with_suffix(".json"), {"epochs": epochs, "image_size": image_size, "batch_size": batch_size,
                                              "teacher": "tf_efficientnet_lite0", "categories": rows, "mean": mean})
    lines = ["| category | image AUROC | pixel AUROC | AUPRO | F1-max | train s |", "|---|---|---|---|---|---|"]
    mean_row = {**mean, "train_seconds": sum(r["train_seconds"] for r in rows.values()) / len(rows)}
    for cat, r in {**rows, "mean": mean_row}.items():
        lines.append(f"| {cat} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} "
                     f"| {r['f1_max']:.3f} | {r['train_seconds']:.0f} |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
