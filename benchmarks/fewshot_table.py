"""The k-shot table: six rows on the same support sets, for k = 1, 2, 4, 8.

(0) the training-free nearest-neighbour kind (`knn`, its defaults) with the same rotated supports,
    evaluated through its exported bundle in the torch-free runtime; (1) RD trained only on the
    target's k supports (rotated); (2) RD meta-trained on the training categories (no PEIM, no CDS);
    (3) PACKD with PEIM only; (4) full PACKD; (5) MemKD per target category on its full training
    data (full-shot reference).

Targets are categories never seen in meta-training: held-out synthetic categories, and the
scikit-image texture photographs with painted defects (cross-dataset: images the generator did
not make). No checkpoint is selected on target data: every model is the last epoch. Reproduce:

    .venv/bin/python benchmarks/fewshot_table.py --out runs/fewshot
    .venv/bin/python benchmarks/fewshot_table.py --out runs/fewshot --rows knn   # one row, others kept
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import typer

from packd.data import AnomalyDataset, list_split
from packd.evaluate import category_metrics, predict
from packd.fewshot import FEWSHOT_KEYS, draw_support_sets, evaluate_fewshot, load_supports
from packd.layers import plan_for, rotate_supports
from packd.losses import kd_loss
from packd.methods import load_scorer
from packd.methods.rd import ReverseDistillation
from packd.preprocess import InputSpec
from packd.scoring import Scorer
from packd.synth import synthesize, synthesize_photos
from packd.teachers import create_teacher
from packd.train import configure, train
from packd_bench.runtime_eval import bundle_fewshot_runs
from packd_export.bundle import export_bundle
from packd_runtime import Detector
from packd_runtime.atomic import check_report_path, write_report

TEACHER = "tf_efficientnet_lite0"
TRAIN_CATS = ["grid", "carpet", "stripes", "wood", "disc", "nut", "plate"]
HELD_OUT = ["dots", "tiles", "capsule"]
CROSS = ["photo_brick", "photo_grass", "photo_gravel"]
ROWS = {
    "knn": "(0) nearest neighbour, the `knn` kind (training-free; its bundle in ONNX Runtime)",
    "rd_supports": "(1) RD trained on the k supports only",
    "rd_meta": "(2) RD meta-trained (no PEIM, no CDS)",
    "packd_peim": "(3) PACKD, PEIM only",
    "packd": "(4) PACKD (PEIM + CDS)",
    "memkd_full": "(5) MemKD per category, full training data",
}


def rd_on_supports(supports: torch.Tensor, steps: int, seed: int) -> ReverseDistillation:
    """Row (1): a fresh RD trained on the rotated supports alone (Adam 0.005, betas 0.5/0.999)."""
    torch.manual_seed(seed)
    teacher = create_teacher(TEACHER)
    model = ReverseDistillation(teacher, plan_for(TEACHER, teacher.channels))
    x = rotate_supports(supports, 4)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.005, betas=(0.5, 0.999))
    model.train()
    for _ in range(steps):
        loss = kd_loss(*model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main(out: Path = Path("runs/fewshot"), shots: str = "1,2,4,8", runs: int = 3, epochs: int = 20,
         image_size: int = 128, support_steps: int = 40, seed: int = 0, quick: bool = False,
         rows: str = ",".join(ROWS), results: Path = Path("benchmarks/results/fewshot_table")) -> None:
    """`--rows` recomputes only the listed rows and keeps the others from the existing results JSON."""
    check_report_path(results.with_suffix(".json"))  # before the long run, not after it
    selected = [r for r in rows.split(",") if r]
    if set(selected) - set(ROWS):
        raise typer.BadParameter(f"--rows must name rows of {', '.join(ROWS)}")
    previous = {}
    if set(selected) != set(ROWS) and results.with_suffix(".json").is_file():
        previous = json.loads(results.with_suffix(".json").read_text())
    data = out / "data"
    ks = [int(k) for k in shots.split(",")]
    targets = HELD_OUT + CROSS
    if quick:
        targets, ks, runs, epochs, support_steps = ["dots", "photo_brick"], [2], 1, 1, 2
    t0 = time.perf_counter()
    synthesize(data, seed=seed, size=image_size)
    synthesize_photos(data, seed=seed, size=image_size)
    timing = {**previous.get("timing", {}), "data_s": time.perf_counter() - t0}
    # RD / MemKD: batch 8; PACKD: 4 categories x 4 queries per batch (16), 2 supports each; kNN: its defaults
    options = dict(teacher=TEACHER, image_size=image_size, epochs=epochs, lr=0.005, seed=seed)
    plan = {"knn": ("knn", TRAIN_CATS, configure("knn", teacher=TEACHER, image_size=image_size)),
            "rd_meta": ("rd", TRAIN_CATS, configure("rd", batch_size=8, **options)),
            "packd_peim": ("packd", TRAIN_CATS, configure("packd", batch_size=16, cds_weight=0.0, **options)),
            "packd": ("packd", TRAIN_CATS, configure("packd", batch_size=16, **options))}
    plan |= {f"memkd_{c}": ("memkd", [c], configure("memkd", batch_size=8, **options)) for c in targets}
    plan = {name: p for name, p in plan.items() if name in selected or ("memkd_full" in selected
                                                                        and name.startswith("memkd_"))}
    ckpts = {}
    for name, (kind, cats, (run, settings)) in plan.items():
        t = time.perf_counter()
        ckpts[name] = train(kind, data=data, categories=cats, out=out / name, run=run, settings=settings,
                            resume=False, progress=False)
        timing[f"train_{name}_s"] = round(time.perf_counter() - t, 1)
        print(f"trained {name} in {timing[f'train_{name}_s']} s", flush=True)
    teacher = create_teacher(TEACHER)
    spec = InputSpec(image_size, teacher.mean, teacher.std)
    scorers = {name: load_scorer(ckpts[name])[0] for name in ("rd_meta", "packd_peim", "packd") if name in ckpts}
    table: dict[str, dict[str, dict]] = {row: {} if row in selected else previous.get("raw", {}).get(row, {})
                                         for row in ROWS}
    if "knn" in ckpts:  # row (0) through its exported bundle, in the torch-free runtime
        export_bundle(ckpts["knn"], out / "knn_bundle", max_batch=32, max_shots=max(ks), engines="never")
        with Detector.open(out / "knn_bundle", backend="onnxruntime") as det:
            for k in ks:
                table["knn"][str(k)] = bundle_fewshot_runs(det, data, targets, k, runs, seed)
    for k in ks:
        for name, scorer in scorers.items():
            rep = evaluate_fewshot(scorer, data, targets, shots=k, runs=runs, seed=seed, progress=False)
            table[name][str(k)] = {c: rep["categories"][c]["runs"] for c in targets}
        if "memkd_full" in selected:
            reps = {c: evaluate_fewshot(load_scorer(ckpts[f"memkd_{c}"])[0], data, [c], shots=k, runs=runs,
                                        seed=seed, progress=False) for c in targets}
            table["memkd_full"][str(k)] = {c: reps[c]["categories"][c]["runs"] for c in targets}
        if "rd_supports" in selected:
            per_cat = {}
            t = time.perf_counter()
            for c in targets:
                test = AnomalyDataset(list_split(data, c, "test"), spec)
                per_cat[c] = []
                for run, support in enumerate(draw_support_sets(data, c, k, runs, seed)):
                    model = rd_on_supports(load_supports(support, spec), support_steps, seed + run)
                    m = category_metrics(predict(Scorer(model, spec, few_shot=False), test, device="cpu"))
                    per_cat[c].append({key: m[key] for key in FEWSHOT_KEYS})
            timing[f"rd_supports_k{k}_s"] = round(time.perf_counter() - t, 1)
            table["rd_supports"][str(k)] = per_cat
        print(f"k={k} done", flush=True)

    def summary(row: str, k: str, cats: list[str], key: str) -> tuple[float, float]:
        per_run = [np.mean([table[row][k][c][r][key] for c in cats]) for r in range(runs)]
        return float(np.mean(per_run)), float(np.std(per_run))

    groups = {"held-out synthetic": [c for c in HELD_OUT if c in targets],
              "cross-dataset photos": [c for c in CROSS if c in targets]}
    out_json = {"teacher": TEACHER, "image_size": image_size, "epochs": epochs, "runs": runs, "shots": ks,
                "train_categories": TRAIN_CATS, "targets": targets, "timing": timing, "raw": table,
                "summary": {g: {row: {str(k): {key: summary(row, str(k), cats, key) for key in FEWSHOT_KEYS}
                                     for k in ks} for row in ROWS} for g, cats in groups.items() if cats}}
    results.parent.mkdir(parents=True, exist_ok=True)
    write_report(results.with_suffix(".json"), out_json)
    lines = []
    for key in ("image_auroc", "pixel_auroc"):
        for g, cats in groups.items():
            if not cats:
                continue
            lines += [f"**{key.replace('_', ' ')}, {g}** ({', '.join(cats)}), mean ± std over {runs} support sets",
                      "",
                      "| row | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
            for row, label in ROWS.items():
                cells = [summary(row, str(k), cats, key) for k in ks]
                lines.append(f"| {label} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in cells) + " |")
            lines.append("")
    results.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
