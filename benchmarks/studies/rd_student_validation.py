"""Which student RD (and MemKD, which shares it) should use: the bisection of the change that cost RD
0.14 image AUROC, on TRAINING categories only, with several seeds.

"PACKD that uses its prototypes" changed the student in two ways that reach RD: decoder stages that end
linear where the teacher's stage outputs are signed (EfficientNet-Lite0: all three), and a choice of
normalisation (RD kept BatchNorm). Border and stage weights are scoring settings that RD leaves at their
neutral defaults (border 0, equal weights), and the KD loss did not change. So the variants are the two
student choices crossed: stage outputs {relu, linear} x norm {batch, group}, each trained per category
(EfficientNet-Lite0, 128 px, 10 epochs, batch 8) for every seed, scored with image AUROC, pixel AUROC and
AUPRO on the category's own test split. Reproduce (about 40 min on 2 cores for three seeds):

    .venv/bin/python benchmarks/studies/rd_student_validation.py --out runs/rd_student
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

from packd.data.synth import synthesize
from packd.evaluation.evaluate import evaluate
from packd.evaluation.reports import check_report_path, write_report
from packd.models.student_plan import plan_for
from packd.models.teachers import create_teacher
from packd.training.train import configure, train

TEACHER = "tf_efficientnet_lite0"
VALIDATION_CATS = ["carpet", "wood", "leather", "nut", "screw", "gear"]  # training categories, never targets
VARIANTS = {  # name -> (stage outputs, norm)
    "relu-batch": ("relu", "batch"),  # the student before the change (commit 71ab64b), the default again
    "linear-batch": ("linear", "batch"),  # what RD had between 71ab64b and the fix
    "relu-group": ("relu", "group"),
    "linear-group": ("linear", "group"),  # PACKD's student
}
KEYS = ("image_auroc", "pixel_auroc", "aupro")


def main(out: Path = Path("runs/rd_student"), kind: str = "rd", epochs: int = 10, image_size: int = 128,
         seeds: str = "0,1,2", categories: str = ",".join(VALIDATION_CATS), variants: str = ",".join(VARIANTS),
         results: Path = Path("benchmarks/results/rd_student_validation")) -> None:
    check_report_path(results.with_suffix(".json"))
    cats = [c for c in categories.split(",") if c]
    names = [v for v in variants.split(",") if v]
    data = out / "data"
    synthesize(data, seed=0, size=256, categories=cats)
    teacher = create_teacher(TEACHER)
    raw: dict[str, dict[str, list[dict]]] = {v: {c: [] for c in cats} for v in names}
    loss: dict[str, dict[str, list[float]]] = {v: {c: [] for c in cats} for v in names}
    t0 = time.perf_counter()
    for seed in (int(s) for s in seeds.split(",")):
        for name in names:
            outputs, norm = VARIANTS[name]
            for cat in cats:
                plan = plan_for(teacher, norm, outputs)
                run, settings = configure(kind, teacher=TEACHER, image_size=image_size, epochs=epochs, batch_size=8,
                                          seed=seed, plan=plan)
                ckpt = train(kind, data=data, categories=cat, out=out / f"{name}_s{seed}" / cat, run=run,
                             settings=settings, progress=False)  # resume: a restarted run keeps finished models
                m = evaluate(ckpt, data, cat, progress=False)["categories"][cat]
                raw[name][cat].append({k: m[k] for k in KEYS})
                history = json.loads((ckpt / "config.json").read_text())["train"]["history"]
                loss[name][cat].append(history[-1])
                print(f"seed {seed} {name} {cat}: image {m['image_auroc']:.3f} pixel {m['pixel_auroc']:.3f} "
                      f"loss {history[-1]:.3f}", flush=True)
    summary = {name: {c: {k: (float(np.mean([r[k] for r in raw[name][c]])), float(np.std([r[k] for r in raw[name][c]])))
                          for k in KEYS} for c in cats} for name in names}
    means = {name: {k: float(np.mean([summary[name][c][k][0] for c in cats])) for k in KEYS} for name in names}
    results.parent.mkdir(parents=True, exist_ok=True)
    write_report(results.with_suffix(".json"), {
        "kind": kind, "teacher": TEACHER, "image_size": image_size, "epochs": epochs, "seeds": seeds,
        "categories": cats,
        "variants": {n: {"stage_outputs": VARIANTS[n][0], "norm": VARIANTS[n][1]} for n in names},
        "raw": raw, "final_loss": loss, "summary": summary, "mean": means,
        "seconds": round(time.perf_counter() - t0, 1)})
    lines = [f"{kind} per training category, image AUROC mean ± std over seeds {seeds} ({TEACHER}, {image_size} px, "
             f"{epochs} epochs)", "", "| variant | " + " | ".join(cats) + " | mean | mean pixel AUROC | mean AUPRO "
             "| mean final loss |", "|---|" + "---|" * (len(cats) + 4)]
    for name in names:
        cells = [f"{summary[name][c]['image_auroc'][0]:.3f} ± {summary[name][c]['image_auroc'][1]:.3f}" for c in cats]
        mean_loss = np.mean([x for c in cats for x in loss[name][c]])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{means[name]['image_auroc']:.3f}** | "
                     f"{means[name]['pixel_auroc']:.3f} | {means[name]['aupro']:.3f} | {mean_loss:.3f} |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
