"""The nearest-neighbour kind: its defaults chosen on training categories, its k-shot row evaluated on
the targets through the exported bundle in ONNX Runtime, and bank size against changeover time,
query latency and AUROC.

1. Validation (training categories only: the k-shot table's meta-training categories, k = 2):
   both distances (cosine, l2) x both image scores (max, top1). The best image AUROC sets the
   defaults of `KNNSettings`.
2. Row (0) of the k-shot table with those defaults: the exported fp32 bundle in the torch-free
   runtime (ONNX Runtime, CPU), on the targets, with the table's support sets (same seed).
3. Bank size (k = 8 on the held-out synthetic targets): the full bank and greedy coresets of it;
   changeover (support graph + coreset) and query latency in the runtime, and the coreset's time
   in numpy (where it runs: the runtime) against the same algorithm in PyTorch (what a support-graph
   implementation would cost), with the AUROC beside each size.

Reproduce (after `benchmarks/tables/fewshot_table.py` wrote runs/fewshot/data):

    .venv/bin/python benchmarks/tables/knn_table.py --runs-dir runs/fewshot
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer

from packd.data.preprocess import load_frames
from packd.evaluation.fewshot import FEWSHOT_KEYS, draw_support_sets, evaluate_fewshot
from packd.evaluation.reports import check_report_path, write_report
from packd.models.loading import load_scorer
from packd.training.train import configure, train
from packd_bench.bench import time_calls
from packd_bench.runtime_eval import bundle_fewshot_runs, category_test_frames
from packd_export.bundle import export_bundle
from packd_runtime import Detector
from packd_runtime.coreset import greedy_coreset

TEACHER = "tf_efficientnet_lite0"
TRAIN_CATS = ["grid", "carpet", "stripes", "wood", "disc", "nut", "plate"]
HELD_OUT = ["dots", "tiles", "capsule"]
CROSS = ["photo_brick", "photo_grass", "photo_gravel"]
OLD_ROW0 = {"held-out synthetic": {1: 0.966, 2: 0.980, 4: 0.984, 8: 0.990},  # README before this kind existed
            "cross-dataset photos": {1: 0.871, 2: 0.866, 4: 0.904, 8: 0.919}}


def _knn(data: Path, out: Path, **options) -> Path:
    run, settings = configure("knn", teacher=TEACHER, image_size=128, **options)
    return train("knn", data=data, categories=TRAIN_CATS, out=out, run=run, settings=settings, resume=False,
                 progress=False)


def _torch_coreset(bank: np.ndarray, n: int, dim: int = 128) -> torch.Tensor:
    """The same greedy k-centre in PyTorch: what running it inside the support graph would cost."""
    x = torch.from_numpy(bank)
    x = x @ torch.from_numpy(np.random.default_rng(0).standard_normal((x.shape[1], dim)).astype(np.float32)) / dim ** .5
    sq = (x * x).sum(1)
    chosen = [0]
    nearest = sq + sq[0] - 2 * x @ x[0]
    for _ in range(n - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, sq + sq[i] - 2 * x @ x[i])
    return torch.from_numpy(bank)[sorted(chosen)]


def main(runs_dir: Path = Path("runs/fewshot"), runs: int = 3, seed: int = 0, shots: str = "1,2,4,8",
         results: Path = Path("benchmarks/results/knn_table")) -> None:
    check_report_path(results.with_suffix(".json"))
    data, out = runs_dir / "data", runs_dir / "knn_study"
    report: dict = {"teacher": TEACHER, "image_size": 128, "runs": runs, "seed": seed, "validation": {}}

    # 1. validation on training categories
    for distance in ("cosine", "l2"):
        for score in ("max", "top1"):
            scorer = load_scorer(_knn(data, out / f"val_{distance}_{score}", distance=distance, score=score))[0]
            rep = evaluate_fewshot(scorer, data, TRAIN_CATS, shots=2, runs=runs, seed=seed, progress=False)
            report["validation"][f"{distance}/{score}"] = {k: rep["mean"][k] for k in FEWSHOT_KEYS}
            print("validation", distance, score, report["validation"][f"{distance}/{score}"], flush=True)
    best = max(report["validation"], key=lambda k: report["validation"][k]["image_auroc"])
    distance, score = best.split("/")
    report["chosen"] = {"distance": distance, "score": score}

    # 2. row (0) through the exported bundle, in the runtime
    ckpt = _knn(data, out / "chosen", distance=distance, score=score)
    bundle = out / "bundle_fp32"
    export_bundle(ckpt, bundle, max_batch=32, max_shots=8, engines="never")
    rows: dict = {}
    with Detector.open(bundle, backend="onnxruntime") as det:
        for k in (int(v) for v in shots.split(",")):
            rows[str(k)] = bundle_fewshot_runs(det, data, HELD_OUT + CROSS, k, runs, seed)
            print("row 0, k =", k, flush=True)
    groups = {"held-out synthetic": HELD_OUT, "cross-dataset photos": CROSS}
    report["row0"] = {g: {k: {key: _summary(rows[k], cats, key, runs) for key in ("image_auroc", "pixel_auroc")}
                          for k in rows} for g, cats in groups.items()}
    report["row0_raw"] = rows

    # 3. bank size: changeover, query latency, AUROC (k = 8, held-out synthetic)
    sizes = [0, 2048, 512, 128]
    report["bank"] = {}
    frames = category_test_frames(data, "dots", (128, 128), (128, 128))[0][:8]
    for size in sizes:
        ck = _knn(data, out / f"bank_{size}", distance=distance, score=score, max_bank=size)
        b = out / f"bundle_bank_{size}"
        export_bundle(ck, b, max_batch=8, max_shots=8, engines="never")
        with Detector.open(b, backend="onnxruntime") as det:
            supports = load_frames([s.path for s in draw_support_sets(data, "dots", 8, 1, seed)[0]], det.frame_hw)
            changeover = time_calls(lambda d=det, s=supports: d.prototypes(s), warmup=1, iters=5, images=8)["median_ms"]
            bank = det.prototypes(supports).arrays[0]
            one = time_calls(lambda d=det: d.detect(frames[:1]), warmup=2, iters=20, images=1)["median_ms"]
            eight = time_calls(lambda d=det: d.detect(frames), warmup=2, iters=10, images=8)["median_ms"]
            per_cat = bundle_fewshot_runs(det, data, HELD_OUT, 8, runs, seed)
            auroc = float(np.mean([np.mean([r["image_auroc"] for r in runs_]) for runs_ in per_cat.values()]))
        full = det.max_shots * det.manifest.prototypes.per_shot
        entry = {"bank": int(bank.shape[0]), "changeover_ms": changeover, "query_ms_batch1": one,
                 "query_ms_batch8": eight, "image_auroc_held_out_k8": auroc}
        if size:
            full_bank = np.random.default_rng(0).standard_normal((full, bank.shape[1])).astype(np.float32)
            for name, fn in (("coreset_numpy_ms", greedy_coreset), ("coreset_torch_ms", _torch_coreset)):
                stats = time_calls(lambda n=size, f=fn, x=full_bank: f(x, n), warmup=0, iters=3, images=1)
                entry[name] = stats["median_ms"]
        report["bank"][str(size or full)] = entry
        print("bank", size or full, entry, flush=True)
    write_report(results.with_suffix(".json"), report)
    results.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def _summary(per_cat: dict, cats: list[str], key: str, runs: int) -> tuple[float, float]:
    per_run = [np.mean([per_cat[c][r][key] for c in cats]) for r in range(runs)]
    return float(np.mean(per_run)), float(np.std(per_run))


def markdown(r: dict) -> str:
    lines = [f"Validation (training categories {', '.join(TRAIN_CATS)}; k = 2, {r['runs']} support sets; PyTorch):",
             "", "| distance / image score | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|"]
    for name, m in r["validation"].items():
        lines.append(f"| {name} | {m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} | {m['aupro']:.3f} |")
    lines += ["", f"Chosen: distance {r['chosen']['distance']}, image score {r['chosen']['score']}.", ""]
    for g, rows in r["row0"].items():
        ks = list(rows)
        lines += [f"Row (0) through the exported fp32 bundle in ONNX Runtime, {g}, mean ± std over {r['runs']} "
                  "support sets:", "", "| | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for key in ("image_auroc", "pixel_auroc"):
            lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(f"{rows[k][key][0]:.3f} ± {rows[k][key][1]:.3f}"
                                                                   for k in ks) + " |")
        lines.append("| old row (0), image AUROC | " + " | ".join(f"{OLD_ROW0[g][int(k)]:.3f}" for k in ks) + " |")
        lines.append("")
    lines += ["Bank size (k = 8 supports x 4 rotations x 16 x 16 patches = 8192 entries in full; CPU, ONNX Runtime):",
              "", "| bank entries | changeover ms | query ms (batch 1) | query ms (batch 8) | coreset numpy ms "
              "| same in PyTorch ms | image AUROC held-out k=8 |", "|---|---|---|---|---|---|---|"]
    for e in r["bank"].values():
        coreset = (f"{e['coreset_numpy_ms']:.0f} | {e['coreset_torch_ms']:.0f}" if "coreset_numpy_ms" in e
                   else "- | -")
        lines.append(f"| {e['bank']} | {e['changeover_ms']:.1f} | {e['query_ms_batch1']:.2f} "
                     f"| {e['query_ms_batch8']:.2f} | {coreset} | {e['image_auroc_held_out_k8']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    typer.run(main)
