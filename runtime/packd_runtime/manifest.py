"""Reading and verifying a bundle's manifest.json, and the threshold rule shared by export (default
threshold) and runtime (`Detector.calibrate`).

What is verified before any graph is handed to a loader: the manifest's schema (every key present
and typed, a finite threshold, I/O that fits together), that every path it names stays inside the
bundle (no absolute paths, no `..`, no symbolic links), the sha256 of every listed file, and that
every external-data file an ONNX graph refers to lies inside the bundle and is listed (so hashed).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from packd_runtime.errors import PackdError
from packd_runtime.onnx_scan import external_data_locations

BUNDLE_FORMAT = 2
MANIFEST = "manifest.json"
QUERY_OUTPUTS = ("scores", "maps")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def threshold_from_normal_scores(scores: np.ndarray) -> float:
    """Decision threshold from normal images only (few-shot has no anomalous validation set):
    mean + 3 std of their scores. Non-finite scores (a broken model) are refused."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise PackdError("a threshold needs scores of at least one normal image")
    if not np.isfinite(scores).all():
        raise PackdError("the model gives non-finite scores on normal images: it is broken (diverged training?)")
    return float(scores.mean() + 3.0 * scores.std())


def read_json(path: Path, missing: str) -> Any:
    """A JSON file packd wrote, or a one-line PackdError: `missing` when absent, 'corrupted' when unreadable."""
    if not path.is_file() or path.is_symlink():
        raise PackdError(missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackdError(f"corrupted {path}: {e}") from None


def _fail(where: str, what: str) -> PackdError:
    return PackdError(f"invalid manifest {where}: {what}")


def _need(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise _fail(where, f"missing {key!r}")
    value, kinds = d[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _fail(where, f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def _io_list(spec: dict, key: str, where: str) -> list[dict[str, Any]]:
    items = _need(spec, key, list, where)
    for item in items:
        _need(item, "name", str, where)
        _need(item, "dtype", str, where)
        shape = _need(item, "shape", list, where)
        if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in shape):
            raise _fail(where, f"{item['name']} has an invalid shape {shape}")
    return items


def check_manifest(m: Any, where: str) -> dict[str, Any]:
    """The manifest's schema and the consistency of its graphs' I/O; returns it."""
    if not isinstance(m, dict):
        raise _fail(where, "not a JSON object")
    if m.get("format") != BUNDLE_FORMAT:
        raise PackdError(f"{where} has bundle format {m.get('format')!r}; this packd reads format {BUNDLE_FORMAT}")
    _need(m, "kind", str, where)
    size = _need(m, "image_size", int, where)
    contract = _need(m, "input", dict, where)
    h, w = _need(contract, "height", int, where), _need(contract, "width", int, where)
    if (contract.get("dtype"), contract.get("layout"), contract.get("color")) != ("uint8", "NHWC", "RGB"):
        raise _fail(where, "the input contract must be uint8 NHWC RGB")
    threshold = _need(m, "threshold", (int, float), where)
    if not math.isfinite(threshold):
        raise _fail(where, f"the threshold is {threshold}: the model it was computed with is broken")
    files = _need(m, "files", dict, where)
    if not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()):
        raise _fail(where, "'files' must map file names to sha256 digests")
    _need(m, "engines", list, where)
    graphs = _need(m, "graphs", dict, where)
    if "query" not in graphs or not set(graphs) <= {"support", "query"}:
        raise _fail(where, f"graphs must be 'query' and optionally 'support', got {sorted(graphs)}")
    io = {}
    for name, spec in graphs.items():
        file = _need(spec, "file", str, where)
        if file not in files:
            raise _fail(where, f"the {name} graph's file {file!r} is not listed in 'files' (so never hashed)")
        io[name] = (_io_list(spec, "inputs", where), _io_list(spec, "outputs", where))
    dynamic = _need(m, "dynamic", dict, where)
    for axis in ("batch", *(("shots", "prototypes") if "support" in graphs else ())):
        lo_hi = _need(dynamic, axis, list, where)
        if len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi) or not 1 <= lo_hi[0] <= lo_hi[1]:
            raise _fail(where, f"dynamic range {axis} must be [1, max], got {lo_hi}")
    inputs, outputs = io["query"]
    expected_images = {"name": "images", "dtype": "uint8", "shape": ["batch", h, w, 3]}
    if not inputs or inputs[0] != expected_images:
        raise _fail(where, f"the query graph's first input must be {expected_images}")
    expected_out = [{"name": "scores", "dtype": "float32", "shape": ["batch"]},
                    {"name": "maps", "dtype": "float32", "shape": ["batch", size, size]}]
    if sorted(outputs, key=lambda o: o["name"]) != sorted(expected_out, key=lambda o: o["name"]):
        raise _fail(where, f"the query graph's outputs must be {expected_out}")
    protos = inputs[1:]
    if any(p["dtype"] != "float32" or len(p["shape"]) != 2 or p["shape"][0] != "prototypes" for p in protos):
        raise _fail(where, "prototype inputs must be float32 (prototypes, C)")
    if "support" in graphs:
        protos_info = _need(m, "prototypes", dict, where)
        _need(protos_info, "per_shot", int, where)
        _need(protos_info, "max_count", int, where)
        s_in, s_out = io["support"]
        if s_in != [{"name": "images", "dtype": "uint8", "shape": ["shots", h, w, 3]}]:
            raise _fail(where, "the support graph must take images uint8 (shots, H, W, 3)")
        def signature(items: list[dict]) -> list:  # the prototype count's symbol differs ("8*shots")
            return [(i["name"], i["dtype"], i["shape"][1:]) for i in items]

        if signature(s_out) != signature(protos) or not protos:
            raise _fail(where, "the support graph's outputs must be the query graph's prototype inputs")
    elif protos:
        raise _fail(where, "a bundle without a support graph takes no prototypes")
    return m


def bundle_path(bundle: str | Path, name: str) -> Path:
    """`bundle / name`, refused unless `name` is a plain relative path that stays inside the bundle
    through no symbolic link."""
    bundle = Path(bundle)
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or "\\" in name or ".." in rel.parts:
        raise PackdError(f"bundle {bundle} names a file outside it: {name!r}")
    path = bundle.joinpath(*rel.parts)
    current = bundle
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            raise PackdError(f"bundle file {current} is a symbolic link: refused")
    root = bundle.resolve()
    if root not in path.resolve().parents:
        raise PackdError(f"bundle {bundle} names a file outside it: {name!r}")
    return path


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """Parse a bundle's manifest and check its version and schema."""
    from packd_runtime.atomic import recover_if_unlocked

    bundle = Path(bundle)
    recover_if_unlocked(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise PackdError(f"bundle folder not found: {bundle}")
    return check_manifest(read_json(path, f"{bundle} is not a packd bundle: {MANIFEST} missing"), str(path))


def verify_files(bundle: str | Path, manifest: dict[str, Any]) -> None:
    """Every listed file is inside the bundle and has its recorded sha256; every external-data file a
    graph refers to is inside the bundle and listed (so hashed too)."""
    bundle = Path(bundle)
    for name, digest in manifest["files"].items():
        path = bundle_path(bundle, name)
        if not path.is_file():
            raise PackdError(f"bundle file missing: {path}")
        if sha256(path) != digest:
            raise PackdError(f"bundle file {path} was altered or corrupted (sha256 does not match the manifest)")
    for spec in manifest["graphs"].values():
        graph = bundle_path(bundle, spec["file"])
        for location in external_data_locations(graph.read_bytes()):
            name = str(PurePosixPath(spec["file"]).parent / location)
            try:
                if not location or PurePosixPath(location).is_absolute():
                    raise PackdError("absolute or empty location")
                bundle_path(bundle, name)
            except PackdError as e:
                raise PackdError(f"{graph.name} keeps tensor data outside the bundle ({location!r}: {e}): "
                                 "refused") from None
            if name not in manifest["files"]:
                raise PackdError(f"{graph.name} keeps tensor data in {location!r}, which the manifest does not "
                                 "list (so it was never hashed): refused")
    for engine in manifest["engines"]:
        if not isinstance(engine, dict) or engine.get("file") not in manifest["files"]:
            raise PackdError(f"engine {engine!r} is not a hashed file of the bundle: refused")


def fingerprint(manifest: dict[str, Any]) -> str:
    """Identity of the model inside a bundle: hash of its graphs' hashes (engines excluded, they
    are derived). Prototypes carry it so that prototypes of another model are refused."""
    graphs = sorted((name, manifest["files"][spec["file"]]) for name, spec in manifest["graphs"].items())
    return hashlib.sha256(json.dumps(graphs).encode()).hexdigest()[:16]
