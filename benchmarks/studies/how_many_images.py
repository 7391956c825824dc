"""How many images a product needs: image AUROC, false-alarm rate and missed defects against the number of support
images k and the number of normal frames the threshold is calibrated on, whole frames and tiles.

Everything runs as a line runs it: a bundle exported by `packd-export`, opened by the torch-free `Detector`, support
frames through `Detector.prototypes`, the threshold by the runtime's rule (mean + 3 std, what `Detector.calibrate`
applies, computed here also below its floor of 5 frames). Per category and draw: k support frames and a pool of
other normal training frames are drawn; every pool and test frame is scored once with those prototypes; each
calibration size n then draws `--subsets` subsets of the pool, and each subset's threshold is applied to the test
frames. Frames: `packd data synth` of the checkpoint's TRAINING categories (validation only); whole frames at
256 px, line frames at 512 px with defects in a 128 px window, tiled 128 px with 32 px overlap (whole frames are
resized to the bundle's input, as the camera software does).

    .venv/bin/python benchmarks/studies/how_many_images.py      # after `make demo` (its knn checkpoint)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import typer
from sklearn.metrics import roc_auc_score

from packd.data.datasets import list_split
from packd.data.preprocess import load_frames
from packd.data.synth import Counts, synthesize
from packd.evaluation.reports import check_report_path, write_report
from packd_runtime import Detector

VARIANTS = {  # name: (frame side, defect window, export options)
    "whole frame": (256, 0, []),
    "tiles": (512, 128, ["--frame-size", "512x512", "--tile", "128", "--overlap", "32"]),
}


def _rule(scores: np.ndarray) -> float:
    """The runtime's threshold rule (`threshold_from_normal_scores`), here also below its floor of
    MIN_NORMAL_IMAGES frames, to show why the floor is there."""
    return float(scores.mean() + 3.0 * scores.std())


def _bundle(checkpoint: str, out: Path, options: list[str]) -> Path:
    if not (out / "manifest.json").exists():
        subprocess.run([Path(sys.executable).with_name("packd-export"), checkpoint, "--out", str(out), *options],
                       check=True)
    return out




def _draw(detector: Detector, pool: np.ndarray, good: np.ndarray, bad: np.ndarray, k: int, sizes: list[int],
          subsets: int, rng: np.random.Generator) -> dict:
    """One support set: AUROC, and per calibration size the false-alarm and miss rates of `subsets` thresholds."""
    order = rng.permutation(len(pool))
    detector.prototypes(pool[order[:k]])
    rest = detector.detect(pool[order[k:]]).scores
    s_good, s_bad = detector.detect(good).scores, detector.detect(bad).scores
    auroc = roc_auc_score(np.r_[np.zeros(len(s_good)), np.ones(len(s_bad))], np.r_[s_good, s_bad])
    rates = {}
    for n in sizes:
        if n > len(rest):
            continue
        thresholds = [_rule(rest[rng.choice(len(rest), n, replace=False)]) for _ in range(subsets)]
        rates[n] = [((s_good > t).mean(), (s_bad <= t).mean()) for t in thresholds]
    return {"auroc": auroc, "rates": rates}


def main(checkpoint: str = "runs/demo/checkpoint_knn", work: Path = Path("runs/how_many"),
         categories: str = "grid,carpet,plate", shots: str = "1,2,4,8", calibration: str = "1,2,3,5,8,12,16",
         draws: int = 4, subsets: int = 20, seed: int = 0,
         results: Path = Path("benchmarks/results/how_many_images")) -> None:
    check_report_path(results.with_suffix(".json"))
    cats, ks, sizes = categories.split(","), [int(k) for k in shots.split(",")], [int(n) for n in
                                                                                   calibration.split(",")]
    rows = []
    for variant, (side, window, options) in VARIANTS.items():
        data = work / f"data_{side}"
        if not data.exists():
            synthesize(data, seed=seed, size=side, categories=cats, defect_window=window,
                       counts=Counts(train=max(ks) + max(sizes) + 4, test_good=40, test_defect=6))
        bundle = _bundle(checkpoint, work / f"bundle_{variant.replace(' ', '_')}", options)
        with Detector.open(bundle, backend="onnxruntime") as detector:
            for k in ks:
                start, found = time.perf_counter(), []
                for cat in cats:
                    test = list_split(data, cat, "test")
                    pool = load_frames([s.path for s in list_split(data, cat, "train")], detector.frame_hw)
                    good = load_frames([s.path for s in test if s.label == 0], detector.frame_hw)
                    bad = load_frames([s.path for s in test if s.label == 1], detector.frame_hw)
                    rng = np.random.default_rng([seed, k, cats.index(cat)])
                    found += [_draw(detector, pool, good, bad, k, sizes, subsets, rng) for _ in range(draws)]
                for n in sizes:
                    rates = np.array([r for f in found for r in f["rates"].get(n, [])])
                    if not len(rates):
                        continue
                    rows.append({"variant": variant, "shots": k, "calibration_frames": n,
                                 "image_auroc": round(float(np.mean([f["auroc"] for f in found])), 3),
                                 "false_alarms": round(float(rates[:, 0].mean()), 3),
                                 "false_alarms_p90": round(float(np.quantile(rates[:, 0], 0.9)), 3),
                                 "missed": round(float(rates[:, 1].mean()), 3),
                                 "missed_p90": round(float(np.quantile(rates[:, 1], 0.9)), 3),
                                 "thresholds": len(rates), "seconds": round(time.perf_counter() - start, 1)})
                    print(rows[-1], flush=True)
    header = ("| frames | k | calibration frames | image AUROC | false alarms (mean / 90th pct.) "
              "| missed defects (mean / 90th pct.) |\n|---|---|---|---|---|---|\n")
    table = header + "".join(
        f"| {r['variant']} | {r['shots']} | {r['calibration_frames']} | {r['image_auroc']:.3f} "
        f"| {r['false_alarms']:.3f} / {r['false_alarms_p90']:.3f} | {r['missed']:.3f} / {r['missed_p90']:.3f} |\n"
        for r in rows)
    write_report(results.with_suffix(".json"), {"checkpoint": checkpoint, "categories": cats, "draws": draws,
                                                "subsets": subsets, "seed": seed, "rows": rows})
    results.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    typer.run(main)
