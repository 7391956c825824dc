"""The bundle format, defined once: what a bundle holds, the names of its graphs, their inputs, outputs and axes, the
manifest that describes them (`make_manifest`, which export calls) and its reader and validator (`read_manifest`,
`check_manifest`, `verify_files`), which the runtime, `packd-export check` and the Triton writer call.

A bundle is a folder: `manifest.json`, `support.onnx` (few-shot kinds), `query.onnx`, and engines built on a target
GPU. The graphs:

    query:   images uint8 (batch, H, W, 3) RGB [+ prototypes_1..N float32 (prototypes, C_i)]
             -> scores float32 (batch,), maps float32 (batch, S, S)
    support: images uint8 (shots, H, W, 3) RGB -> prototypes_1..N float32 (prototypes, C_i)   (few-shot kinds)

A tiled bundle with a per-position memory ("tiling": {"memory": "position"}) keeps one memory per tile position P:
its query graph takes prototypes_i float32 (P, prototypes, C_i) and tile_index int64 (batch,), each tile's position.

What is verified before any graph is handed to a loader: the manifest's schema (every key present and typed, a
finite threshold, I/O that fits together), that every path it names stays inside the bundle (no absolute paths, no
`..`, no symbolic links), the sha256 of every listed file, and that every external-data file an ONNX graph refers to
lies inside the bundle and is listed (so hashed).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from packd_runtime.atomic import json_marker, read_output
from packd_runtime.errors import PackdError
from packd_runtime.files import sha256
from packd_runtime.onnx_scan import external_data_locations, graph_inputs_outputs, local_functions
from packd_runtime.tiling import tiling_from_manifest

BUNDLE_FORMAT = 3  # 3: the manifest records its threshold's normal-score range
THRESHOLD_SLACK = 10.0  # a manifest threshold more than 10x outside its normal scores' range is refused
MANIFEST = "manifest.json"
SUPPORT, QUERY = "support", "query"  # the graphs
IMAGES = "images"  # both graphs' image input
SCORES, MAPS = "scores", "maps"  # the query graph's outputs
QUERY_OUTPUTS = (SCORES, MAPS)
BATCH, SHOTS, PROTOTYPES = "batch", "shots", "prototypes"  # dynamic axes (and the manifest's "dynamic" keys)
TILE_INDEX = "tile_index"  # a per-position query graph's last input: each tile's position in its frame's tiling
MEMORIES = ("shared", "position")  # a tiled few-shot bundle's memory: pooled over every tile, or one per position
INPUT_CONTRACT = {"dtype": "uint8", "layout": "NHWC", "color": "RGB", "range": [0, 255]}
MAX_SIDE = 8192  # frame and image sides a manifest may name
MAX_DYNAMIC = {BATCH: 4096, SHOTS: 1024, PROTOTYPES: 1 << 24}  # the largest dynamic ranges a manifest may name
# a manifest.json is a packd bundle's when it has these: a web app's manifest.json is not
BUNDLE = json_marker(MANIFEST, "bundle", {"format": int, "kind": str, "graphs": dict, "files": dict})


def graph_file(graph: str) -> str:
    """The ONNX file of a graph inside the bundle."""
    return f"{graph}.onnx"


def prototype_names(count: int) -> list[str]:
    """The prototype tensors' names (support outputs, query inputs): prototypes_1..N."""
    return [f"{PROTOTYPES}_{i + 1}" for i in range(count)]


def graph_axes(prototype_count: int, per_position: bool = False) -> dict[str, dict[str, dict[int, str]]]:
    """Per graph, the dynamic axis of every input and output by name (what the ONNX export declares); a
    per-position query graph's prototypes have a fixed position axis first."""
    protos = {n: {0: PROTOTYPES} for n in prototype_names(prototype_count)}
    query_protos = {n: {1: PROTOTYPES} for n in protos} if per_position else protos
    query = {IMAGES: {0: BATCH}, **query_protos, **({TILE_INDEX: {0: BATCH}} if per_position else {}),
             SCORES: {0: BATCH}, MAPS: {0: BATCH}}
    return {QUERY: query, **({SUPPORT: {IMAGES: {0: SHOTS}, **protos}} if prototype_count else {})}


def tiling_memory(manifest: dict[str, Any]) -> str | None:
    """A tiled few-shot bundle's memory, "shared" or "position" (None: not tiled)."""
    tiling = manifest.get("tiling")
    return None if tiling is None else tiling.get("memory", "shared")


def make_manifest(*, kind: str, teacher: Mapping[str, Any], image_size: int, frame_hw: tuple[int, int],
                  mean: tuple[float, ...], std: tuple[float, ...], settings: Mapping[str, Any], precision: str,
                  opset: int, graphs: Mapping[str, Any], limits: Mapping[str, int], threshold: float,
                  normal_scores: Mapping[str, float | int],
                  versions: Mapping[str, str], checkpoint: Mapping[str, Any], created: str,
                  files: Mapping[str, str], prototypes: Mapping[str, Any] | None = None,
                  int8: Mapping[str, Any] | None = None, tiling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a bundle, checked by `check_manifest` before it is returned (so export never writes one
    the runtime would refuse). `graphs`: per graph {"file", "inputs", "outputs"}; `limits`: the largest batch,
    shot count and prototype count the graphs are exported for; `normal_scores`: how many normal images the
    threshold came from and their score range (`score_range`); `files`: name -> sha256; `tiling`: {"tile",
    "overlap", "rois"} when the graphs take tiles of `frame_hw` frames (see `packd_runtime.tiling`)."""
    few_shot = SUPPORT in graphs
    manifest = {
        "format": BUNDLE_FORMAT,
        "kind": kind,
        "teacher": dict(teacher),
        "image_size": image_size,
        "input": {**INPUT_CONTRACT, "height": frame_hw[0], "width": frame_hw[1]},
        "normalisation": {"mean": list(mean), "std": list(std)},
        "settings": dict(settings),
        "precision": precision,
        "opset": opset,
        "graphs": dict(graphs),
        "dynamic": {k: [1, v] for k, v in limits.items() if k == BATCH or few_shot},
        "threshold": threshold,
        "normal_scores": dict(normal_scores),
        "versions": dict(versions),
        "checkpoint": dict(checkpoint),
        "created": created,
        "engines": [],
        **({"prototypes": dict(prototypes)} if prototypes is not None else {}),
        **({"int8": dict(int8)} if int8 is not None else {}),
        **({"tiling": dict(tiling)} if tiling is not None else {}),
        "files": dict(files),
    }
    return check_manifest(manifest, "being written")


def _fail(where: str, what: str) -> PackdError:
    return PackdError(f"invalid manifest {where}: {what}")


def _need(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise _fail(where, f"missing {key!r}")
    value, kinds = d[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _fail(where, f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def _number(d: Any, key: str, where: str) -> float:
    try:
        return float(_need(d, key, (int, float), where))
    except OverflowError:
        raise _fail(where, f"{key!r} is not a usable number (too many digits)") from None


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
    if not all(1 <= v <= MAX_SIDE for v in (size, h, w)):
        raise _fail(where, f"image size {size} and frame size {h}x{w} must be 1 to {MAX_SIDE} pixels")
    if any(contract.get(k) != INPUT_CONTRACT[k] for k in ("dtype", "layout", "color")):
        raise _fail(where, "the input contract must be uint8 NHWC RGB")
    threshold = _number(m, "threshold", where)
    if not math.isfinite(threshold):
        raise _fail(where, f"the threshold is {threshold}: the model it was computed with is broken")
    if threshold < 0:
        raise _fail(where, f"the threshold is {threshold}: scores are distances, never negative")
    basis = _need(m, "normal_scores", dict, where)
    low, high = (_number(basis, k, where) for k in ("min", "max"))
    if _need(basis, "images", int, where) < 1 or not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise _fail(where, f"normal_scores must count at least one image and range over finite scores, got {basis}")
    if not low / THRESHOLD_SLACK <= threshold <= high * THRESHOLD_SLACK:
        raise _fail(where, f"the threshold {threshold} is more than {THRESHOLD_SLACK}x outside the scores of the "
                           f"normal images it was computed from ({low:.4g} to {high:.4g}): edited by hand?")
    files = _need(m, "files", dict, where)
    if not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()):
        raise _fail(where, "'files' must map file names to sha256 digests")
    _need(m, "engines", list, where)
    graphs = _need(m, "graphs", dict, where)
    if QUERY not in graphs or not set(graphs) <= {SUPPORT, QUERY}:
        raise _fail(where, f"graphs must be 'query' and optionally 'support', got {sorted(graphs)}")
    io = {}
    for name, spec in graphs.items():
        file = _need(spec, "file", str, where)
        if file not in files:
            raise _fail(where, f"the {name} graph's file {file!r} is not listed in 'files' (so never hashed)")
        io[name] = (_io_list(spec, "inputs", where), _io_list(spec, "outputs", where))
    dynamic = _need(m, "dynamic", dict, where)
    for axis in (BATCH, *((SHOTS, PROTOTYPES) if SUPPORT in graphs else ())):
        lo_hi = _need(dynamic, axis, list, where)
        if (len(lo_hi) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in lo_hi)
                or not 1 <= lo_hi[0] <= lo_hi[1] <= MAX_DYNAMIC[axis]):
            raise _fail(where, f"dynamic range {axis} must be [1, max] with max at most {MAX_DYNAMIC[axis]}, "
                               f"got {lo_hi}")
    inputs, outputs = io[QUERY]
    positions = 0  # a per-position memory's tile positions
    if "tiling" in m:  # the graphs take tiles of the frame; the contract's height and width are the camera's
        tiling = tiling_from_manifest(m, where)
        h = w = tiling.tile
        memory = m["tiling"].get("memory", "shared")
        if memory not in MEMORIES or (memory == "position" and SUPPORT not in graphs):
            raise _fail(where, f"the tiling's memory must be shared or (few-shot kinds) position, got {memory!r}")
        if memory == "position":
            positions = tiling.count
            if inputs[-1:] != [{"name": TILE_INDEX, "dtype": "int64", "shape": [BATCH]}]:
                raise _fail(where, f"a per-position query graph's last input must be {TILE_INDEX} int64 (batch)")
            inputs = inputs[:-1]
    expected_images = {"name": IMAGES, "dtype": "uint8", "shape": [BATCH, h, w, 3]}
    if not inputs or inputs[0] != expected_images:
        raise _fail(where, f"the query graph's first input must be {expected_images}")
    expected_out = [{"name": SCORES, "dtype": "float32", "shape": [BATCH]},
                    {"name": MAPS, "dtype": "float32", "shape": [BATCH, size, size]}]
    if sorted(outputs, key=lambda o: o["name"]) != sorted(expected_out, key=lambda o: o["name"]):
        raise _fail(where, f"the query graph's outputs must be {expected_out}")
    protos = inputs[1:]
    lead = [positions, PROTOTYPES] if positions else [PROTOTYPES]
    if any(p["dtype"] != "float32" or p["shape"][:-1] != lead or len(p["shape"]) != len(lead) + 1 for p in protos):
        raise _fail(where, "prototype inputs must be float32 (prototypes, C)" + (
            f", per position ({positions}, prototypes, C)" if positions else ""))
    if SUPPORT in graphs:
        protos_info = _need(m, "prototypes", dict, where)
        if _need(protos_info, "per_shot", int, where) < 1 or _need(protos_info, "max_count", int, where) < 0:
            raise _fail(where, "prototypes per shot must be at least 1 and max_count 0 (no bound) or more")
        s_in, s_out = io[SUPPORT]
        if s_in != [{"name": IMAGES, "dtype": "uint8", "shape": [SHOTS, h, w, 3]}]:
            raise _fail(where, "the support graph must take images uint8 (shots, H, W, 3)")

        def signature(items: list[dict]) -> list:  # the prototype count's symbol differs ("8*shots")
            return [(i["name"], i["dtype"], i["shape"][-1:]) for i in items]

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
    path, manifest = read_output(bundle, BUNDLE)
    return check_manifest(manifest, str(path))


def verify_files(bundle: str | Path, manifest: dict[str, Any]) -> None:
    """Every listed file is inside the bundle and has its recorded sha256; every graph has the manifest's inputs
    and outputs (names, dtypes, shapes) and defines no function; every external-data file a graph refers to is
    inside the bundle and listed (so hashed too)."""
    bundle = Path(bundle)
    for name, digest in manifest["files"].items():
        path = bundle_path(bundle, name)
        if not path.is_file():
            raise PackdError(f"bundle file missing: {path}")
        if sha256(path) != digest:
            raise PackdError(f"bundle file {path} was altered or corrupted (sha256 does not match the manifest)")
    for spec in manifest["graphs"].values():
        graph = bundle_path(bundle, spec["file"])
        data = graph.read_bytes()
        real = graph_inputs_outputs(data)
        if real != tuple([(i["name"], i["dtype"], i["shape"]) for i in spec[k]] for k in ("inputs", "outputs")):
            raise PackdError(f"{graph.name} has inputs {real[0]} and outputs {real[1]}, not the manifest's "
                             f"{spec['inputs']} and {spec['outputs']} (a frame size or prototype width the graph "
                             "does not take): refused")
        functions = local_functions(data)
        if functions:
            raise PackdError(f"{graph.name} defines ONNX functions ({', '.join(functions[:3])}), which packd never "
                             "emits: refused")
        for location in external_data_locations(data):
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
