"""PACKD's choices, validated on TRAINING categories only: meta-train on a split of the table's
training categories, validate k-shot on the two held back (carpet, nut; k=2, 3 support sets).

Two phases. `train` meta-trains one variant (run them side by side, one process each):
  relu-batch   the old student (ReLU after every decoder stage), BatchNorm
  linear-batch stage outputs linear where the teacher's are signed (the fix), BatchNorm
  linear-group the fix and a per-image GroupNorm (no category mixing in the statistics)
`score` scores every trained variant: per stage the KD map and the nearest-prototype map, upsampled
and blurred once (both linear), then every combination of stage weights, border and prototype
weight is a weighted sum, so the grid costs no further model calls. Reproduce:

    .venv/bin/python benchmarks/studies/packd_validation.py train --variant linear-group
    .venv/bin/python benchmarks/studies/packd_validation.py score
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import typer

from packd.data.datasets import AnomalyDataset, list_split
from packd.data.synth import synthesize
from packd.evaluation.fewshot import draw_support_sets, load_supports
from packd.evaluation.metrics import image_auroc, pixel_metrics
from packd.evaluation.reports import write_report
from packd.methods.packd.model import prototype_distance
from packd.models.loading import load_scorer
from packd.models.scoring import AnomalyMap, cosine_distances
from packd.models.student_plan import ChannelPlan
from packd.models.teachers import create_teacher
from packd.training.train import configure, train

TEACHER = "tf_efficientnet_lite0"
VAL_TRAIN = ["grid", "stripes", "wood", "disc", "plate", "weave", "marble", "leather", "perforated", "screw", "gear",
             "bottle", "chip"]
VAL = ["carpet", "nut"]
VARIANTS = {"relu-batch": ((False,) * 3, "batch"), "linear-batch": ((True,) * 3, "batch"),
            "linear-group": ((True,) * 3, "group")}
WEIGHTS = ["1,1,1", "0,1,1", "0.5,1,1", "0,0,1", "0.5,1,2", "1,1,2", "0,1,2"]
BORDERS = [0, 4, 8, 12]
PROTO = [0.0, 0.5, 1.0, 2.0, 4.0]
app = typer.Typer(add_completion=False)


@app.command("train")
def train_variant(variant: str, out: Path = Path("runs/packd_val"), epochs: int = 5, image_size: int = 128,
                  seed: int = 0, threads: int = 1) -> None:
    torch.set_num_threads(threads)
    linear, norm = VARIANTS[variant]
    data = out / "data"
    missing = [c for c in VAL_TRAIN + VAL if not (data / c / ".packd-synth").is_file()]
    if missing:
        synthesize(data, seed=seed, size=image_size, categories=missing)
    run, settings = configure("packd", teacher=TEACHER, image_size=image_size, epochs=epochs, lr=0.005, seed=seed,
                              batch_size=16, norm=norm, prototype_score=0.0)
    plan = ChannelPlan(create_teacher(TEACHER).channels, linear=linear, norm=norm)
    train("packd", data=data, categories=VAL_TRAIN, out=out / variant, run=run, settings=replace(settings, plan=plan),
          resume=False, progress=False)


@torch.no_grad()
def stage_maps(ckpt: Path, data: Path, k: int, runs: int, seed: int) -> dict[str, list]:
    """Per category and support set: blurred full-size KD and prototype maps per stage, masks, labels."""
    scorer, _ = load_scorer(ckpt)
    model, amap = scorer.model, AnomalyMap(scorer.spec.image_size)  # one stage map at a time, unweighted
    out = {}
    for cat in VAL:
        test = AnomalyDataset(list_split(data, cat, "test"), scorer.spec)
        xs = torch.stack([test[i][0] for i in range(len(test))])
        masks = np.stack([test[i][1][0].numpy() > 0.5 for i in range(len(test))])
        labels = np.array([test[i][2] for i in range(len(test))])
        sets = []
        for support in draw_support_sets(data, cat, k, runs, seed):
            protos = scorer.prototypes(load_supports(support, scorer.spec))
            kd, pd = [], []
            for i in range(0, len(xs), 16):
                t, s = model(xs[i:i + 16], protos)
                kd.append([amap([d])[1].numpy() for d in cosine_distances(t, s)])
                pd.append([amap([prototype_distance(f, p)])[1].numpy() for f, p in zip(t, protos)])
            sets.append((np.concatenate([np.stack(b) for b in kd], axis=1),
                         np.concatenate([np.stack(b) for b in pd], axis=1)))  # (3 stages, N, S, S) each
        out[cat] = (sets, masks, labels)
    return out


def combine(kd: np.ndarray, pd: np.ndarray, weights: str, proto: float) -> np.ndarray:
    w = np.array([float(v) for v in weights.split(",")], dtype=np.float32)[:, None, None, None]
    return (w * (kd + proto * pd)).sum(0)


def score_of(maps: np.ndarray, border: int) -> np.ndarray:
    s = maps.shape[-1]
    return maps[:, border:s - border, border:s - border].reshape(len(maps), -1).max(1)


@app.command("score")
def score(out: Path = Path("runs/packd_val"), k: int = 2, runs: int = 3, seed: int = 0,
          results: Path = Path("benchmarks/results/packd_validation")) -> None:
    data = out / "data"
    report = {"teacher": TEACHER, "meta_train": VAL_TRAIN, "validation": VAL, "shots": k, "runs": runs,
              "variants": {}}
    for variant in VARIANTS:
        if not (out / variant / "config.json").is_file():
            continue
        maps = stage_maps(out / variant, data, k, runs, seed)
        grid = {}
        for weights, border, proto in itertools.product(WEIGHTS, BORDERS, PROTO):
            aurocs = [image_auroc(labels, score_of(combine(kd, pd, weights, proto), border))
                      for sets, _, labels in maps.values() for kd, pd in sets]
            grid[f"{weights}|{border}|{proto}"] = float(np.mean(aurocs))
        best = max(grid, key=grid.get)
        picks = {"paper (KD map, equal weights, whole image)": "1,1,1|0|0.0", "best": best}
        w, b, p = best.split("|")
        picks |= {"best without prototype score": max((g for g in grid if g.endswith("|0.0")), key=grid.get),
                  "best, whole image": max((g for g in grid if g.split("|")[1] == "0"), key=grid.get),
                  "best, equal weights": max((g for g in grid if g.startswith("1,1,1|")), key=grid.get)}
        detail = {}
        for name, key in picks.items():
            w, b, p = key.split("|")
            pix = [pixel_metrics(combine(kd, pd, w, float(p)), masks)["pixel_auroc"]
                   for sets, masks, _ in maps.values() for kd, pd in sets]
            detail[name] = {"stage_weights": w, "border": int(b), "prototype_score": float(p),
                            "image_auroc": grid[key], "pixel_auroc": float(np.mean(pix))}
            print(f"{variant:13s} {name:45s} {key:18s} image {grid[key]:.3f} pixel {np.mean(pix):.3f}", flush=True)
        report["variants"][variant] = {"choices": detail, "grid": grid}
    write_report(results.with_suffix(".json"), report)
    lines = [f"Validation on training categories only: meta-train on {', '.join(VAL_TRAIN)}; "
             f"{k}-shot on {', '.join(VAL)}, mean over {runs} support sets. Image / pixel AUROC.", "",
             "| student | scoring | stage weights | border | prototype score | image AUROC | pixel AUROC |",
             "|---|---|---|---|---|---|---|"]
    for variant, v in report["variants"].items():
        for name, d in v["choices"].items():
            lines.append(f"| {variant} | {name} | {d['stage_weights']} | {d['border']} | {d['prototype_score']} | "
                         f"{d['image_auroc']:.3f} | {d['pixel_auroc']:.3f} |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app()
