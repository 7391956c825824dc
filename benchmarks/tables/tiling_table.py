"""The line-resolution accuracy table: whole frames resized to the model's input against tiles at the model's scale
(a shared memory and a per-position memory), k = 1, 2, 4, 8 support frames; image AUROC, pixel AUROC and AUPRO.

Frames: `packd data synth --size 512 --defect-window 128` of the checkpoints' TRAINING categories (validation: every
choice was made on them), so a defect covers a few per cent of the frame's side, as on a line; the target category
(never trained on) is scored once, at k = 2, for the final rows. Everything runs through `packd eval --tile`'s
functions (`evaluate_fewshot` with `TileOptions`), which compute what a tiled bundle of the same options computes.

    .venv/bin/python benchmarks/tables/tiling_table.py        # after `make demo` (its knn and PACKD checkpoints)
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import typer

from packd.data.synth import Counts, synthesize
from packd.evaluation.fewshot import evaluate_fewshot
from packd.evaluation.reports import check_report_path, write_report
from packd.evaluation.tiling_options import TileOptions
from packd.models.loading import load_scorer

KEYS = ("image_auroc", "pixel_auroc", "aupro")


def _row(report: dict, kind: str, variant: str, shots: int, seconds: float, cats: list[str]) -> dict:
    return {"kind": kind, "variant": variant, "shots": shots, **{k: round(report["mean"][k], 3) for k in KEYS},
            "per_category_image_auroc": {c: round(report["categories"][c]["mean"]["image_auroc"], 3) for c in cats},
            "seconds": round(seconds, 1)}


def main(checkpoints: str = "runs/demo/checkpoint_knn,runs/demo/checkpoint_packd", data: Path = Path("runs/line"),
         categories: str = "grid,carpet,stripes,plate", target: str = "tiles", frame: int = 512, window: int = 128,
         tile: int = 128, overlap: int = 32, shots: str = "1,2,4,8", runs: int = 2, seed: int = 0,
         results: Path = Path("benchmarks/results/tiling_table")) -> None:
    check_report_path(results.with_suffix(".json"))
    cats, ks = categories.split(","), [int(k) for k in shots.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)
    synthesize(data, seed=seed, size=frame, categories=[*cats, target], defect_window=window,
               counts=Counts(train=12, test_good=8, test_defect=3))
    variants = {"whole frame": None, "tiles, shared memory": TileOptions(tile=tile, overlap=overlap),
                "tiles, per-position memory": TileOptions(tile=tile, overlap=overlap, memory="position")}
    rows, final = [], []
    for path in checkpoints.split(","):
        scorer, config = load_scorer(path)
        for variant, options in variants.items():
            for k in ks:
                start = time.perf_counter()
                rep = evaluate_fewshot(scorer, data, cats, shots=k, runs=runs, seed=seed, tile=options, progress=False)
                rows.append(_row(rep, config["kind"], variant, k, time.perf_counter() - start, cats))
                print(rows[-1], flush=True)
            start = time.perf_counter()  # the target: once, k = 2, after every choice above was made
            rep = evaluate_fewshot(scorer, data, [target], shots=2, runs=runs, seed=seed, tile=options, progress=False)
            final.append(_row(rep, config["kind"], variant, 2, time.perf_counter() - start, [target]))
            print(final[-1], flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "backend": "PyTorch eager, CPU"}
    setup = {"checkpoints": checkpoints.split(","), "categories": cats, "target": target, "frame": frame,
             "defect_window": window, "tile": tile, "overlap": overlap, "runs": runs, "seed": seed,
             "test_frames_per_category": "8 normal + 3 per defect type"}
    write_report(results.with_suffix(".json"), {"setup": setup, "machine": machine, "rows": rows, "target": final})
    head = ("| kind | variant | k | image AUROC | pixel AUROC | AUPRO | " + " | ".join(cats) + " | s |\n"
            + "|---" * (len(cats) + 7) + "|\n")
    lines = [f"| {r['kind']} | {r['variant']} | {r['shots']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
             f"{r['aupro']:.3f} | " + " | ".join(f"{r['per_category_image_auroc'][c]:.3f}" for c in cats)
             + f" | {r['seconds']} |" for r in rows]
    target_lines = [f"| {r['kind']} | {r['variant']} | {r['shots']} | {r['image_auroc']:.3f} | "
                    f"{r['pixel_auroc']:.3f} | {r['aupro']:.3f} |" for r in final]
    best = {kind: max((r for r in rows if r["kind"] == kind), key=lambda r: r["image_auroc"])
            for kind in dict.fromkeys(r["kind"] for r in rows)}
    results.with_suffix(".md").write_text(
        f"{frame} px line frames (defects painted in a {window} px window) of the training categories "
        f"{', '.join(cats)}; {tile} px tiles overlapping by {overlap}; mean over categories of the mean over {runs} "
        f"support sets; pixel metrics on each variant's own map (whole frame: {scorer.spec.image_size} px; tiles: "
        f"the stitched full-resolution map). {machine['cores']} cores, {machine['backend']}, load average "
        f"{machine['load_avg_1m_at_end']} at the end; seconds per row include changeovers.\n\n" + head
        + "\n".join(lines) + f"\n\nTarget category `{target}` (never trained on), scored once, k = 2:\n\n"
        "| kind | variant | k | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|---|\n"
        + "\n".join(target_lines) + "\n\nBest mean image AUROC per kind on the training categories: "
        + "; ".join(f"{k}: {r['variant']}, k = {r['shots']}, {r['image_auroc']:.3f}" for k, r in best.items())
        + "\n")
    print(np.round([r["image_auroc"] for r in rows], 3))


if __name__ == "__main__":
    typer.run(main)
