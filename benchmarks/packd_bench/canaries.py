"""Accuracy canaries: each kind trained and scored at a tiny scale (64 px, a few epochs, synthetic
categories, fixed seeds), so a change that costs a kind a real share of its accuracy fails the test run
(`tests/test_accuracy_canaries.py`) instead of waiting for someone to re-run a benchmark.

They guard accuracy, they do not measure it: the recorded tables (`make bench-accuracy`) do that. Each
canary's floor is its value on the code that fixed RD's student, less a margin stated beside it (see the
docs' accuracy page for how each was chosen). Print today's values and the floors:

    .venv/bin/python -m packd_bench.canaries --out runs/canaries
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from packd.data.synth import Counts, synthesize
from packd.evaluation.evaluate import evaluate
from packd.evaluation.fewshot import evaluate_fewshot
from packd.models.loading import load_scorer
from packd.training.train import configure, train

TEACHER = "tf_efficientnet_lite0"
SIZE = 64
COUNTS = Counts(train=24, test_good=8, test_defect=4)
PER_CATEGORY = ["wood", "leather", "carpet"]  # RD and MemKD, one model each: textures, where RD's regression showed
META = ["carpet", "nut", "screw"]  # PACKD's meta-training categories
TARGETS = ["leather", "gear"]  # few-shot targets (kNN and PACKD): never meta-trained on
CATEGORIES = sorted(set(PER_CATEGORY + META + TARGETS))


@dataclass(frozen=True)
class Canary:
    """One kind's canary: its training options, the categories it is scored on, and its floor."""

    kind: str
    options: dict[str, Any]
    floor: float  # mean image AUROC below which the test fails
    reference: float  # the value measured when the floor was set (fixed seeds, 2-core CPU)


# References: fixed seed 0 on the 2-core CPU machine. Margins: about twice the spread over training seeds
# 0-2 (RD 0.927-0.948, MemKD 0.892-0.913, PACKD 0.776-0.839), so a change that only reshuffles random numbers
# passes, while RD's linear-output student (0.837 / 0.892 at seeds 0 / 1) fails.
CANARIES = {
    "rd": Canary("rd", dict(epochs=10, batch_size=4), floor=0.90, reference=0.948),
    "memkd": Canary("memkd", dict(epochs=10, batch_size=4, slots=10, exemplars=4), floor=0.85, reference=0.913),
    "packd": Canary("packd", dict(epochs=3, batch_size=8, shots=2, prototypes=8, rotations=2,
                                  categories_per_batch=2, border=4), floor=0.74, reference=0.809),
    "knn": Canary("knn", dict(rotations=2), floor=0.88, reference=0.918),  # training-free: no seed spread
}


def make_data(root: Path) -> Path:
    """The canaries' synthetic categories at 64 px (seed 0)."""
    synthesize(root, seed=0, size=SIZE, categories=CATEGORIES, counts=COUNTS)
    return root


def run_canary(kind: str, data: Path, out: Path, seed: int = 0, **overrides: Any) -> float:
    """Train `kind` as its canary says (options overridable, e.g. to show a regression) and return its
    mean image AUROC: per category for RD/MemKD, 2-shot on the targets (3 support sets) for PACKD/kNN."""
    canary = CANARIES[kind]
    run, settings = configure(kind, teacher=TEACHER, image_size=SIZE, seed=seed, **{**canary.options, **overrides})
    if kind in ("rd", "memkd"):
        scores = []
        for cat in PER_CATEGORY:
            ckpt = train(kind, data=data, categories=cat, out=out / f"{kind}_{cat}", run=run, settings=settings,
                         resume=False, progress=False)
            scores.append(evaluate(ckpt, data, cat, progress=False)["categories"][cat]["image_auroc"])
        return float(np.mean(scores))
    cats = META if kind == "packd" else META + TARGETS
    ckpt = train(kind, data=data, categories=cats, out=out / kind, run=run, settings=settings, resume=False,
                 progress=False)
    report = evaluate_fewshot(load_scorer(ckpt)[0], data, TARGETS, shots=2, runs=3, seed=0, progress=False)
    return float(report["mean"]["image_auroc"])


def main(out: Path = Path("runs/canaries"), kinds: str = ",".join(CANARIES)) -> None:
    """Print each canary's value, its floor and the time it took."""
    data = make_data(out / "data")
    for kind in kinds.split(","):
        t0 = time.perf_counter()
        value = run_canary(kind, data, out)
        c = CANARIES[kind]
        print(f"{kind}: image AUROC {value:.4f} (floor {c.floor:.3f}, reference {c.reference:.3f}) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    typer.run(main)
