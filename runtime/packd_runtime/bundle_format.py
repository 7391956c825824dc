"""The bundle format, defined once: what a bundle holds, the names of its graphs, their inputs, outputs and axes,
where its files may lie (`bundle_path`), their verification (`verify_files`) and the model's identity
(`fingerprint`). The manifest that describes a bundle is typed in `packd_runtime.manifest`.

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
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from packd_runtime.atomic import json_marker
from packd_runtime.errors import PackdError
from packd_runtime.files import sha256
from packd_runtime.onnx_scan import external_data_locations, graph_inputs_outputs, local_functions

if TYPE_CHECKING:
    from packd_runtime.manifest import Manifest

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


def verify_files(bundle: str | Path, manifest: Manifest) -> dict[str, bytes]:
    """Every listed file is inside the bundle and has its recorded sha256; every graph has the manifest's inputs
    and outputs (names, dtypes, shapes) and defines no function; every external-data file a graph refers to is
    inside the bundle and listed (so hashed too). Returns the graphs' and engines' bytes as hashed: what loaders
    get, so a file swapped after the check is never loaded (only external tensor data is read again, by path)."""
    bundle = Path(bundle)
    loaded = {spec.file for spec in manifest.graphs.values()} | {e.file for e in manifest.engines}
    verified: dict[str, bytes] = {}
    for name, digest in manifest.files.items():
        path = bundle_path(bundle, name)
        if not path.is_file():
            raise PackdError(f"bundle file missing: {path}")
        data = path.read_bytes() if name in loaded else None
        if (hashlib.sha256(data).hexdigest() if data is not None else sha256(path)) != digest:
            raise PackdError(f"bundle file {path} was altered or corrupted (sha256 does not match the manifest)")
        if data is not None:
            verified[name] = data
    for spec in manifest.graphs.values():
        graph = bundle_path(bundle, spec.file)
        data = verified[spec.file]
        real = graph_inputs_outputs(data)
        said = tuple([(t.name, t.dtype, list(t.shape)) for t in ts] for ts in (spec.inputs, spec.outputs))
        if real != said:
            raise PackdError(f"{graph.name} has inputs {real[0]} and outputs {real[1]}, not the manifest's "
                             f"{said[0]} and {said[1]} (a frame size or prototype width the graph "
                             "does not take): refused")
        functions = local_functions(data)
        if functions:
            raise PackdError(f"{graph.name} defines ONNX functions ({', '.join(functions[:3])}), which packd never "
                             "emits: refused")
        for location in external_data_locations(data):
            name = str(PurePosixPath(spec.file).parent / location)
            try:
                if not location or PurePosixPath(location).is_absolute():
                    raise PackdError("absolute or empty location")
                bundle_path(bundle, name)
            except PackdError as e:
                raise PackdError(f"{graph.name} keeps tensor data outside the bundle ({location!r}: {e}): "
                                 "refused") from None
            if name not in manifest.files:
                raise PackdError(f"{graph.name} keeps tensor data in {location!r}, which the manifest does not "
                                 "list (so it was never hashed): refused")
    return verified


def fingerprint(manifest: Manifest) -> str:
    """Identity of what prototypes and thresholds are valid for: the graphs' hashes (engines excluded, they are
    derived), the frame size, the model's input size and normalisation, and the tiling with its memory. Prototypes
    carry it, so those of another model, frame size, tiling or memory are refused."""
    identity = {"graphs": sorted((name, manifest.files[spec.file]) for name, spec in manifest.graphs.items()),
                "frame": list(manifest.frame_hw), "image_size": manifest.image_size,
                "normalisation": [list(manifest.mean), list(manifest.std)],
                "tiling": manifest.tiling.to_dict() if manifest.tiling is not None else None}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
