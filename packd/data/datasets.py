"""Dataset layouts: MVTec AD, MPDD (MVTec layout, masks `NNN.png` or `NNN_mask.png`) and VisA.

A dataset is listed as `Sample`s; `AnomalyDataset` decodes them through the shared preprocessing.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from packd.data.preprocess import InputSpec, Preprocess, load_image, load_mask, resize_mask
from packd.errors import PackdError
from packd_runtime.atomic import check_writable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".JPG", ".PNG")
VISA_SPLIT = Path("split_csv") / "1cls.csv"


@dataclass(frozen=True)
class Sample:
    """One image: its label (0 normal, 1 anomalous), defect type and mask file (None for normal images)."""

    path: Path
    label: int
    defect: str
    mask: Path | None = None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES)


def _is_visa(root: Path) -> bool:
    return (root / VISA_SPLIT).is_file()


def check_category_name(name: str) -> str:
    """A category name becomes a folder name (overlays, conversions): no separators, no '..'."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise PackdError(f"invalid category name {name!r}: it must be a plain folder name")
    return name


def _inside(root: Path, relative: str, what: str) -> Path:
    """`root / relative`, refused unless it stays inside `root` (a dataset file must not point outside it)."""
    path = root / relative
    base = root.resolve()
    if Path(relative).is_absolute() or (path.resolve() != base and base not in path.resolve().parents):
        raise PackdError(f"{what} {relative!r} lies outside the dataset folder {root}")
    return path


def list_categories(root: str | Path) -> list[str]:
    """Category names found in a dataset root (MVTec/MPDD folders or VisA's split CSV)."""
    root = Path(root)
    if not root.is_dir():
        raise PackdError(f"dataset folder not found: {root}")
    if _is_visa(root):
        cats = sorted({check_category_name(row["object"]) for row in _visa_rows(root)})
    else:
        cats = sorted(p.name for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
    if not cats:
        raise PackdError(f"no categories in {root}: expected CAT/train/good and CAT/test/<defect> (MVTec layout) "
                         f"or {VISA_SPLIT} (VisA)")
    return cats


def resolve_categories(root: str | Path, categories: str | list[str] | None) -> list[str]:
    """`None`/empty list -> all categories; otherwise check every name is a plain name that exists."""
    if categories is None or (isinstance(categories, list) and not categories):
        return list_categories(root)
    names = [c.strip() for c in categories.split(",")] if isinstance(categories, str) else list(categories)
    names = [check_category_name(c) for c in names if c]
    if not names:
        raise PackdError("--categories names no category")
    available = list_categories(root)
    missing = [c for c in names if c not in available]
    if missing:
        raise PackdError(f"unknown categories {missing} in {root}; available: {', '.join(available)}")
    return names


def _mvtec_mask(root: Path, category: str, defect: str, image: Path) -> Path:
    folder = root / category / "ground_truth" / defect
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (folder / name).is_file():
            return folder / name
    raise PackdError(f"no mask for {image} (looked for {folder}/{image.stem}_mask.png and {image.stem}.png)")


def _mvtec_split(root: Path, category: str, split: str) -> list[Sample]:
    base = root / category / split
    if not base.is_dir():
        raise PackdError(f"missing folder {base} (MVTec layout: {category}/train/good, {category}/test/<defect>)")
    if split == "train":
        good = base / "good"
        if not good.is_dir():
            raise PackdError(f"missing folder {good}")
        return [Sample(p, 0, "good") for p in _images_in(good)]
    samples = []
    for defect_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for p in _images_in(defect_dir):
            if defect == "good":
                samples.append(Sample(p, 0, "good"))
            else:
                samples.append(Sample(p, 1, defect, _mvtec_mask(root, category, defect, p)))
    return samples


def _visa_rows(root: Path) -> list[dict]:
    try:
        with open(root / VISA_SPLIT, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error) as e:
        raise PackdError(f"cannot read VisA split file {root / VISA_SPLIT}: {e}") from None
    need = {"object", "split", "label", "image", "mask"}
    if rows and not need <= set(rows[0]):
        raise PackdError(f"{root / VISA_SPLIT} must have columns {sorted(need)}, has {sorted(rows[0])}")
    return rows


def _visa_split(root: Path, category: str, split: str) -> list[Sample]:
    samples = []
    for row in _visa_rows(root):
        if row["object"] != category or row["split"] != split:
            continue
        anomalous = row["label"].strip().lower() != "normal"
        if split == "train" and anomalous:
            continue
        mask = _inside(root, row["mask"], "VisA mask") if anomalous and row["mask"].strip() else None
        if anomalous and mask is None:
            raise PackdError(f"VisA row for {row['image']} is anomalous but names no mask")
        image = _inside(root, row["image"], "VisA image")
        samples.append(Sample(image, int(anomalous), "anomaly" if anomalous else "good", mask))
    return samples


def list_split(root: str | Path, category: str, split: str) -> list[Sample]:
    """Samples of `split` ('train': normal images only, 'test': normal and anomalous) for one category."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(root)
    samples = _visa_split(root, category, split) if _is_visa(root) else _mvtec_split(root, category, split)
    if not samples:
        raise PackdError(f"category {category!r} has no {split} images in {root}")
    return samples


def convert_visa(root: str | Path, out: str | Path) -> list[str]:
    """Copy a VisA tree into the MVTec layout (masks binarised to 0/255); returns the categories written."""
    from PIL import Image

    root, out = Path(root), Path(out)
    if not _is_visa(root):
        raise PackdError(f"{root} is not a VisA tree: {VISA_SPLIT} not found")
    if out.exists() and any(out.iterdir()):
        raise PackdError(f"output folder {out} exists and is not empty")
    check_writable(out)
    categories = list_categories(root)
    for cat in categories:
        for split in ("train", "test"):
            for s in list_split(root, cat, split):
                sub = "good" if s.label == 0 else "anomaly"
                dest = out / cat / split / sub / (s.path.stem + ".png")
                dest.parent.mkdir(parents=True, exist_ok=True)
                image = load_image(s.path)
                Image.fromarray(image).save(dest)
                if s.mask is not None:
                    m = load_mask(s.mask, image.shape[:2])
                    mdest = out / cat / "ground_truth" / sub / f"{s.path.stem}_mask.png"
                    mdest.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray((m * 255).astype(np.uint8)).save(mdest)
    return categories


class AnomalyDataset(Dataset):
    """Samples -> (image float (3,S,S), mask float (1,S,S), label) through the shared `Preprocess`. With `tile`
    (training on line-resolution frames): a random tile x tile crop of each image instead, where a tiled bundle's
    tiles would lie; the crop depends only on (seed, epoch, index), so a resumed run sees the crops an uninterrupted
    one would (`set_epoch`, as PyTorch's DistributedSampler)."""

    def __init__(self, samples: list[Sample], spec: InputSpec, tile: int = 0, seed: int = 0):
        if not samples:
            raise PackdError("empty dataset: no images given")
        self.samples = list(samples)
        self.spec, self.tile, self.seed, self.epoch = spec, tile, seed, 0
        self.preprocess = Preprocess(spec)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Which epoch's crops `tile` draws."""
        self.epoch = epoch

    def _crop(self, i: int, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, (h, w) = self.tile, image.shape[:2]
        if t > min(h, w):
            raise PackdError(f"--tile {t} does not fit in the {h}x{w} image {self.samples[i].path}")
        y, x = np.random.default_rng([self.seed, self.epoch, i]).integers(0, (h - t + 1, w - t + 1))
        return image[y:y + t, x:x + t], mask[y:y + t, x:x + t]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        s = self.samples[i]
        image = load_image(s.path)
        if s.mask is not None:
            mask = load_mask(s.mask, image.shape[:2])
        else:
            mask = np.zeros(image.shape[:2], dtype=bool)
        if self.tile:
            image, mask = self._crop(i, image, mask)
        with torch.no_grad():
            x = self.preprocess(torch.from_numpy(image)[None])[0]
        return x, resize_mask(mask, self.spec.image_size), s.label

