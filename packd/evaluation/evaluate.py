"""Evaluation on a dataset's test split: metrics per category and their mean, optional PNG overlays."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import DataLoader

from packd.data.datasets import AnomalyDataset, Sample, list_categories, list_split, resolve_categories
from packd.data.preprocess import InputSpec
from packd.device import pick_device
from packd.errors import PackdError
from packd.evaluation.metrics import f1_max, image_auroc, pixel_metrics
from packd.evaluation.overlays import save_overlay
from packd.evaluation.reports import check_report_path, write_report
from packd.evaluation.tiled import TiledScorer, tiled_for
from packd.evaluation.tiling_options import TileOptions, untiled_warning
from packd.models.loading import load_scorer
from packd.models.scoring import Scorer
from packd.progress import LogProgress
from packd.progress import progress as progress_bars
from packd_runtime.atomic import check_writable
from packd_runtime.threshold import threshold_from_normal_scores

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_f1_max")
THRESHOLD_IMAGES = 32  # normal training images per category behind an overlay's threshold (as export uses)


def evaluation_categories(config: dict[str, Any], data: str | Path, categories: str | list[str] | None,
                          few_shot: bool) -> list[str]:
    """The categories to evaluate: the given ones; else for few-shot kinds every category of `data`
    not used in meta-training, for the others the trained categories `data` has (or all of them)."""
    if categories:
        return resolve_categories(data, categories)
    available = list_categories(data)
    trained = set(config.get("train", {}).get("categories", []))
    if few_shot:
        unseen = [c for c in available if c not in trained]
        if not unseen:
            raise PackdError(f"every category in {data} was used in meta-training; pass --categories")
        return unseen
    return [c for c in available if c in trained] or available


@torch.no_grad()
def predict(scorer: Scorer, dataset: AnomalyDataset, prototypes: list[torch.Tensor] | None = None, *,
            batch_size: int = 16, device: str = "auto", progress: Progress | LogProgress | None = None,
            ) -> dict[str, np.ndarray]:
    """Scores (N,), maps (N,S,S), masks (N,S,S) and labels (N,) for every sample of `dataset`."""
    dev = pick_device(device)
    scorer.to(dev).eval()
    protos = [p.to(dev) for p in prototypes] if prototypes else prototypes
    scores, maps, masks, labels = [], [], [], []
    task = progress.add_task("predict", total=len(dataset)) if progress else None
    for x, m, y in DataLoader(dataset, batch_size=batch_size):
        s, a = scorer(x.to(dev), protos)
        scores.append(s.cpu().numpy())
        maps.append(a.cpu().numpy())
        masks.append(m[:, 0].numpy() > 0.5)
        labels.append(y.numpy())
        if progress:
            progress.update(task, advance=len(x))
    return {"scores": np.concatenate(scores), "maps": np.concatenate(maps),
            "masks": np.concatenate(masks), "labels": np.concatenate(labels)}


def predict_split(scorer: Scorer, samples: list[Sample], prototypes: list[torch.Tensor] | None = None, *,
                  tiled: TiledScorer | None = None, batch_size: int = 16, device: str = "auto",
                  progress: Progress | LogProgress | None = None) -> dict[str, np.ndarray]:
    """`predict` on images, or with `tiled` on whole frames through their tiles (maps stitched)."""
    if tiled is not None:
        return tiled.predict(samples, prototypes, progress)
    return predict(scorer, AnomalyDataset(samples, scorer.spec), prototypes, batch_size=batch_size, device=device,
                   progress=progress)


def category_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """All metrics of one category's predictions."""
    return {
        "image_auroc": image_auroc(pred["labels"], pred["scores"]),
        "f1_max": f1_max(pred["labels"], pred["scores"]),
        **pixel_metrics(pred["maps"], pred["masks"]),
    }


def _denormalise(x: torch.Tensor, spec: InputSpec) -> np.ndarray:
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    return ((x * std + mean).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def normal_threshold(scorer: Scorer, data: str | Path, category: str, *, tiled: TiledScorer | None = None,
                     batch_size: int, device: str) -> float:
    """The threshold a bundle of this model would get by default: mean + 3 std of the scores of (up to
    `THRESHOLD_IMAGES`) normal training images of the category (whole frames through their tiles with `tiled`);
    never the test labels."""
    normals = list_split(data, category, "train")[:THRESHOLD_IMAGES]
    return threshold_from_normal_scores(predict_split(scorer, normals, tiled=tiled, batch_size=batch_size,
                                                      device=device)["scores"])


def write_overlays(folder: Path, samples: list[Sample], scorer: Scorer, pred: dict[str, np.ndarray], threshold: float,
                   tiled: TiledScorer | None = None) -> None:
    """One PNG per test image, named <defect>_<file>.png: verdict, score and threshold, colours tied to it; a tiled
    evaluation shows the whole frame at its map's size, the regions of interest outlined."""
    dataset = AnomalyDataset(samples, scorer.spec)
    for i, sample in enumerate(samples):
        image = tiled.overlay_image(sample) if tiled else _denormalise(dataset[i][0], dataset.spec)
        save_overlay(folder / f"{sample.defect}_{sample.path.stem}.png", image, pred["maps"][i], pred["masks"][i],
                     score=float(pred["scores"][i]), threshold=threshold, rois=tiled.overlay_rois() if tiled else ())


def image_rows(samples: list[Sample], pred: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every test image's file, defect type, label (1 = anomalous) and score, for the report."""
    return [{"file": str(s.path), "defect": s.defect, "label": int(label), "score": float(score)}
            for s, label, score in zip(samples, pred["labels"], pred["scores"])]


def evaluate(checkpoint: str | Path, data: str | Path, categories: str | list[str] | None = None, *,
             json_path: str | Path | None = None, overlays: str | Path | None = None, batch_size: int = 16,
             device: str = "auto", progress: bool = True, scoring: dict[str, Any] | None = None,
             tile: TileOptions | None = None, warn: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Full-shot evaluation of a checkpoint on the test split of `categories` (see `evaluation_categories`);
    `scoring` overrides the checkpoint's scoring settings (see `load_scorer`); with `tile`, whole frames through
    their tiles, metrics on the stitched maps. `warn` gets what the user should know (a checkpoint trained on
    tiles evaluated whole)."""
    if json_path:
        check_report_path(json_path)
    if overlays:
        check_writable(overlays)
    scorer, config = load_scorer(checkpoint, scoring)
    if warning := untiled_warning(config, tile):
        warn(warning)
    if scorer.few_shot:
        raise PackdError(f"{checkpoint} is a few-shot {config['kind']} model: evaluate it with --shots K")
    cats = evaluation_categories(config, data, categories, few_shot=False)
    per_cat: dict[str, dict[str, float]] = {}
    with progress_bars(disable=not progress) as bar:
        splits = {cat: list_split(data, cat, "test") for cat in cats}
        tilings = {cat: tiled_for(scorer, tile, s, batch_size=batch_size, device=device) for cat, s in splits.items()}
        for cat, samples in splits.items():
            tiled = tilings[cat]  # every category's tiling checked before the first is scored
            pred = predict_split(scorer, samples, tiled=tiled, batch_size=batch_size, device=device, progress=bar)
            per_cat[cat] = {**category_metrics(pred), "n_images": len(samples),
                            "n_anomalous": int(pred["labels"].sum())}
            if tiled:
                per_cat[cat]["tiling"] = tiled.describe()
            if overlays:
                threshold = normal_threshold(scorer, data, cat, tiled=tiled, batch_size=batch_size, device=device)
                write_overlays(Path(overlays) / cat, samples, scorer, pred, threshold, tiled)
                per_cat[cat]["overlay_threshold"] = threshold
            per_cat[cat]["images"] = image_rows(samples, pred)
    report = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "kind": config["kind"],
        "teacher": config["teacher"]["name"],
        "image_size": scorer.spec.image_size,
        **({"tiling": tile.to_dict()} if tile else {}),
        "categories": per_cat,
        "mean": {k: float(np.mean([m[k] for m in per_cat.values()])) for k in METRIC_KEYS},
    }
    if json_path:
        write_report(json_path, report)
    return report
