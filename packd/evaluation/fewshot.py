"""The few-shot evaluation protocol (RegAD's, which PACKD follows).

For each target category, R support sets of k images are drawn from train/good, once, from a
seed that depends only on (seed, category, k, run): every model evaluated with the same seed sees
the same supports. The drawn file lists are saved in the report and can be fed back
(`supports_from`) to repeat a run exactly. Metrics: mean and std over the runs.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from packd.data.datasets import AnomalyDataset, Sample, list_split, resolve_categories
from packd.data.preprocess import InputSpec
from packd.errors import PackdError
from packd.evaluation.evaluate import category_metrics, predict_split
from packd.evaluation.reports import check_report_path, write_report
from packd.evaluation.tiled import TiledScorer, tiled_for
from packd.evaluation.tiling_options import TileOptions
from packd.models.scoring import Scorer
from packd.progress import progress as progress_bars

FEWSHOT_KEYS = ("image_auroc", "pixel_auroc", "aupro")
SWAPS = ("own", "other", "zero")  # whose prototypes score a category: its own, the next category's, or zeros


def draw_support_sets(data: str | Path, category: str, shots: int, runs: int, seed: int = 0) -> list[list[Sample]]:
    """R support sets of k distinct normal training images, reproducible from (seed, category, k, run)."""
    train = list_split(data, category, "train")
    if shots < 1:
        raise PackdError(f"--shots must be at least 1, got {shots}")
    if shots > len(train):
        raise PackdError(f"category {category!r} has {len(train)} training images, fewer than --shots {shots}")
    sets = []
    for run in range(runs):
        rng = np.random.default_rng([seed, zlib.crc32(category.encode()), shots, run])
        sets.append([train[i] for i in sorted(rng.choice(len(train), shots, replace=False))])
    return sets


def _supports_from_report(path: str | Path, data: Path, category: str) -> list[list[Sample]]:
    try:
        report = json.loads(Path(path).read_text())
        sets = report["categories"][category]["support_sets"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise PackdError(f"cannot read support sets for {category!r} from {path}: {e}") from None
    return [[Sample(data / p, 0, "good") for p in files] for files in sets]


def load_supports(samples: list[Sample], spec: InputSpec) -> torch.Tensor:
    """Support images through the shared preprocessing -> (k,3,S,S)."""
    if not samples:
        raise PackdError("empty support set: give at least one normal image")
    ds = AnomalyDataset(samples, spec)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def _summary(runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    mean = {k: float(np.mean([r[k] for r in runs])) for k in FEWSHOT_KEYS}
    std = {k: float(np.std([r[k] for r in runs])) for k in FEWSHOT_KEYS}
    return mean, std


def _support_sets(data: Path, category: str, shots: int | None, runs: int, seed: int,
                  supports_from: str | Path | None) -> list[list[Sample]]:
    if supports_from is None:
        if shots is None:
            raise PackdError("few-shot evaluation needs --shots K (or --supports-from an earlier report)")
        return draw_support_sets(data, category, shots, runs, seed)
    sets = _supports_from_report(supports_from, data, category)
    if not sets or any(len(s) != len(sets[0]) for s in sets) or (shots is not None and len(sets[0]) != shots):
        raise PackdError(f"{supports_from} holds support sets of sizes {sorted({len(s) for s in sets})} "
                         f"for {category!r}, not --shots {shots}")
    return sets


def support_prototypes(scorer: Scorer, support: list[Sample], tiled: TiledScorer | None = None) -> list[torch.Tensor]:
    """A support set's prototypes: of its images, or with `tiled` the shared memory of its frames' tiles."""
    return tiled.prototypes(support) if tiled else scorer.prototypes(load_supports(support, scorer.spec))


def _swapped(scorer: Scorer, protos: list[torch.Tensor], swap: str, donor: list[Sample],
             tiled: TiledScorer | None) -> list[torch.Tensor]:
    if swap == "zero":
        return [torch.zeros_like(p) for p in protos]
    return support_prototypes(scorer, donor, tiled) if swap == "other" else protos


def evaluate_fewshot(scorer: Scorer, data: str | Path, categories: list[str], *, shots: int | None = None,
                     runs: int = 10, seed: int = 0, json_path: str | Path | None = None,
                     supports_from: str | Path | None = None, batch_size: int = 16, device: str = "auto",
                     progress: bool = True, meta: dict[str, Any] | None = None, swap: str = "own",
                     tile: TileOptions | None = None) -> dict[str, Any]:
    """k-shot evaluation of one model on `categories`; models without a support path are scored once
    per category. With `supports_from`, the support sets (and so k and the run count) come from that report.

    `swap` is the prototype diagnostic: "other" scores each category with the prototypes of the next
    category's support set (same k and run), "zero" with zeros. If the prototypes matter, both hurt.

    With `tile`, support and test frames go through their tiles (shared memory), metrics on the stitched maps."""
    data = Path(data)
    if json_path:
        check_report_path(json_path)
    if runs < 1:
        raise PackdError(f"--runs must be at least 1, got {runs}")
    if swap not in SWAPS:
        raise PackdError(f"swap must be one of {', '.join(SWAPS)}, got {swap!r}")
    cats = resolve_categories(data, categories)
    if swap != "own" and not scorer.few_shot:
        raise PackdError("the prototype swap needs a few-shot model")
    if swap == "other" and len(cats) < 2:
        raise PackdError("swapping in another category's prototypes needs at least two categories")
    per_cat: dict[str, Any] = {}
    tests = {cat: list_split(data, cat, "test") for cat in cats}
    tilings = {cat: tiled_for(scorer, tile, s, batch_size=batch_size, device=device) for cat, s in tests.items()}
    with progress_bars(disable=not progress) as bar:
        for ci, cat in enumerate(cats):
            sets = _support_sets(data, cat, shots, runs, seed, supports_from)
            donors = (_support_sets(data, cats[(ci + 1) % len(cats)], shots, runs, seed, supports_from)
                      if swap == "other" else sets)
            test, tiled = tests[cat], tilings[cat]  # every category's tiling checked before the first is scored
            results, shared = [], None
            for support, donor in zip(sets, donors):
                if scorer.few_shot or shared is None:
                    protos = _swapped(scorer, support_prototypes(scorer, support, tiled), swap, donor, tiled)
                    pred = predict_split(scorer, test, protos, tiled=tiled, batch_size=batch_size, device=device,
                                         progress=bar)
                    shared = category_metrics(pred)
                results.append({k: shared[k] for k in FEWSHOT_KEYS})
            mean, std = _summary(results)
            per_cat[cat] = {"runs": results, "mean": mean, "std": std,
                            "support_sets": [[str(s.path.relative_to(data)) for s in support] for support in sets],
                            **({"tiling": tiled.describe()} if tiled else {})}
    first = next(iter(per_cat.values()))
    per_run = [{k: float(np.mean([per_cat[c]["runs"][r][k] for c in cats])) for k in FEWSHOT_KEYS}
               for r in range(len(first["runs"]))]
    mean, std = _summary(per_run)
    report = {**(meta or {}), "data": str(data), "shots": len(first["support_sets"][0]), "runs": len(per_run),
              "seed": seed, "prototypes": swap, **({"tiling": tile.to_dict()} if tile else {}), "categories": per_cat,
              "mean": mean, "std": std}
    if json_path:
        write_report(json_path, report)
    return report
