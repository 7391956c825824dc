"""`packd-station detect`: a folder of the user's own images judged in one command, from plain folders of good
images for the changeover and the threshold (no dataset layout)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from packd_runtime.atomic import atomic_dir, atomic_file, check_replaceable, check_writable, text_marker
from packd_runtime.detector import Detector
from packd_runtime.errors import PackdError
from packd_runtime.threshold import check_normal_count, margin
from packd_station.images import encode, overlay, read_frames
from packd_station.sources import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Judged:
    file: str
    score: float
    threshold: float | None
    verdict: str  # ok, defect, uncalibrated
    margin: float | None  # (score - threshold) / threshold


def image_files(where: Path, what: str) -> list[Path]:
    """An image file, or a folder's image files (not its subfolders), sorted; one clear line when there are none."""
    if where.is_file():
        return [where]
    if not where.is_dir():
        raise PackdError(f"{what} {where} not found")
    files = sorted(p for p in where.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PackdError(f"{what} {where} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load(files: Iterable[Path], hw: tuple[int, int]) -> np.ndarray:
    return np.stack(read_frames(files, hw))


OVERLAYS_WRITTEN = "overlays written by packd-station detect\n"
OVERLAYS = text_marker(".packd-overlays", "overlay folder", OVERLAYS_WRITTEN)
FIELDS = ("file", "score", "threshold", "verdict", "margin")


def check_output(path: Path, kind: str) -> None:
    """Before any work: `path` is absent or a --json / --csv file this command wrote (its exact fields), never
    anything else; and it can be written."""
    if path.is_dir() or path.is_symlink():
        raise PackdError(f"--{kind} {path} is a folder or a link: give a file name")
    if path.exists():
        try:
            text = path.read_text()
            ours = (text.startswith(",".join(FIELDS) + "\n") if kind == "csv" else
                    all(isinstance(j, dict) and tuple(j) == FIELDS for j in json.loads(text)))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise PackdError(f"--{kind} {path} exists and was not written by packd-station detect: refusing to "
                             "overwrite it")
    check_writable(path)


def detect(bundle: Path, images: Path, *, supports: Path | None, calibrate: Path | None,
           trusted_keys: list[Path] | None = None, overlays: Path | None = None, backend: str = "auto",
           batch: int = 16) -> list[Judged]:
    """Changeover on `supports`, threshold from `calibrate` (or the bundle's own, per-category kinds), then every
    image judged; every input is checked before the first image is scored. `overlays`: a folder of one PNG per image,
    replaced whole (only one this command wrote)."""
    targets = image_files(images, "images")
    if overlays is not None:
        check_replaceable(overlays, OVERLAYS)
    with Detector.open(bundle, backend=backend, trusted_keys=trusted_keys) as det:
        hw = det.frame_hw
        support_files = image_files(supports, "support folder") if supports else None
        normal_files = image_files(calibrate, "calibration folder") if calibrate else None
        if det.few_shot and support_files is None:
            raise PackdError(f"this {det.manifest.kind} bundle is few-shot: give --supports DIR (k good images of "
                             "this product)")
        if not det.few_shot and support_files is not None:
            raise PackdError(f"this {det.manifest.kind} bundle is per category: it takes no --supports")
        if support_files is not None and det.tiling is None and len(support_files) > det.max_shots:
            raise PackdError(f"{len(support_files)} support images, but this bundle takes at most {det.max_shots}")
        if normal_files is not None:
            check_normal_count(len(normal_files))
        if support_files is not None:
            det.prototypes(load(support_files, hw))
        threshold = det.calibrate(load(normal_files, hw)) if normal_files is not None else det.threshold
        judged = []
        with atomic_dir(overlays, OVERLAYS) if overlays is not None else nullcontext() as pictures:
            if pictures is not None:
                (pictures / OVERLAYS.name).write_text(OVERLAYS_WRITTEN)
            for start in range(0, len(targets), batch):
                chunk = targets[start:start + batch]
                frames = load(chunk, hw)
                result = det.detect(frames)
                for i, f in enumerate(chunk):
                    score = float(result.scores[i])
                    verdict = "uncalibrated" if threshold is None else ("defect" if score > threshold else "ok")
                    judged.append(Judged(str(f), score, threshold, verdict,
                                         None if threshold is None else margin(score, threshold)))
                    if pictures is not None:
                        (pictures / f"{f.stem}.png").write_bytes(
                            encode(overlay(frames[i], result.maps[i], score, threshold)))
    return judged


def write_json(judged: list[Judged], path: Path) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps([j.__dict__ for j in judged], indent=2).encode())


def write_csv(judged: list[Judged], path: Path) -> None:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(FIELDS)
    out.writerows(j.__dict__.values() for j in judged)
    with atomic_file(path) as f:
        f.write(buf.getvalue().encode())
