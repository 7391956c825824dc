"""The bundle's manifest.json: what the bundle is, its input contract, I/O, versions, hashes,
threshold and engines; and the checks that refuse a corrupted, altered or unknown bundle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from packd.errors import PackdError
from packd_export import BUNDLE_FORMAT

MANIFEST = "manifest.json"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def threshold_from_normal_scores(scores: np.ndarray) -> float:
    """Default decision threshold from normal images only: mean + 3 std of their scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise PackdError("a threshold needs scores of at least one normal image")
    return float(scores.mean() + 3.0 * scores.std())


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """Parse and version-check a bundle's manifest."""
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise PackdError(f"{bundle} is not a packd bundle: {MANIFEST} missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackdError(f"corrupted {path}: {e}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise PackdError(f"{path} has bundle format {manifest.get('format')!r}; this packd reads format {BUNDLE_FORMAT}")
    return manifest


def verify_files(bundle: str | Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists and has its recorded sha256."""
    for name, digest in manifest["files"].items():
        path = Path(bundle) / name
        if not path.is_file():
            raise PackdError(f"bundle file missing: {path}")
        if sha256(path) != digest:
            raise PackdError(f"bundle file {path} was altered or corrupted (sha256 does not match the manifest)")
