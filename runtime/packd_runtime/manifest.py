"""Reading and verifying a bundle's manifest.json (format version, sha256 of every file), and the
threshold rule shared by export (default threshold) and runtime (`Detector.calibrate`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from packd_runtime.errors import PackdError

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def threshold_from_normal_scores(scores: np.ndarray) -> float:
    """Decision threshold from normal images only (few-shot has no anomalous validation set):
    mean + 3 std of their scores."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise PackdError("a threshold needs scores of at least one normal image")
    return float(scores.mean() + 3.0 * scores.std())


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """Parse and version-check a bundle's manifest."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise PackdError(f"bundle folder not found: {bundle}")
    if not path.is_file():
        raise PackdError(f"{bundle} is not a packd bundle: {MANIFEST} missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackdError(f"corrupted {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        version = manifest.get("format") if isinstance(manifest, dict) else None
        raise PackdError(f"{path} has bundle format {version!r}; this packd reads format {BUNDLE_FORMAT}")
    return manifest


def verify_files(bundle: str | Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists and has its recorded sha256."""
    for name, digest in manifest["files"].items():
        path = Path(bundle) / name
        if not path.is_file():
            raise PackdError(f"bundle file missing: {path}")
        if sha256(path) != digest:
            raise PackdError(f"bundle file {path} was altered or corrupted (sha256 does not match the manifest)")


def fingerprint(manifest: dict[str, Any]) -> str:
    """Identity of the model inside a bundle: hash of its graphs' hashes (engines excluded, they
    are derived). Prototypes carry it so that prototypes of another model are refused."""
    graphs = sorted((name, manifest["files"][spec["file"]]) for name, spec in manifest["graphs"].items())
    return hashlib.sha256(json.dumps(graphs).encode()).hexdigest()[:16]
