"""The typed manifest: what a bundle's `manifest.json` says, read and checked once (`Manifest.from_dict`, which
`read_manifest` calls) and written through the same types (`Manifest.to_dict`, which export and the engine builder
call). No reader indexes the JSON: the runtime, export, Triton and the benchmarks take a frozen `Manifest`.

The checks (each value where it enters): every key present and typed and no unknown one, sides and dynamic ranges
within bounds, a finite threshold not far outside the normal scores it came from, graph I/O that fits together
(images, scores, maps, prototype inputs, a per-position query graph's `tile_index`), a usable tiling, engines that
are hashed files of the bundle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from packd_runtime.atomic import read_output
from packd_runtime.bundle_format import (
    BATCH,
    BUNDLE,
    BUNDLE_FORMAT,
    IMAGES,
    INPUT_CONTRACT,
    MAPS,
    MAX_DYNAMIC,
    MAX_SIDE,
    MEMORIES,
    PROTOTYPES,
    QUERY,
    SCORES,
    SHOTS,
    SUPPORT,
    THRESHOLD_SLACK,
    TILE_INDEX,
)
from packd_runtime.errors import PackdError
from packd_runtime.tiling import Tiling

KEYS = {"format", "kind", "teacher", "image_size", "input", "normalisation", "settings", "precision", "opset",
        "graphs", "dynamic", "threshold", "normal_scores", "versions", "checkpoint", "created", "engines", "files",
        "prototypes", "int8", "tiling"}


def _frozen(value: Any) -> Any:
    """A JSON value made read-only: objects as mapping proxies, arrays as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """The JSON value of a frozen one."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: name, dtype and shape (ints, or the names of dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Graph:
    """One ONNX graph of the bundle: its file and I/O."""

    file: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_io(cls, file: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> Graph:
        """A graph from the I/O lists export reads off its ONNX proto."""
        return cls(file, tuple(Tensor(i["name"], i["dtype"], tuple(i["shape"])) for i in inputs),
                   tuple(Tensor(o["name"], o["dtype"], tuple(o["shape"])) for o in outputs))


@dataclass(frozen=True)
class Limits:
    """The largest batch, shot count and prototype count the graphs were exported (and engines built) for; shots and
    prototypes are 0 for kinds without a support graph."""

    batch: int
    shots: int = 0
    prototypes: int = 0

    def most(self, axis: str) -> int:
        """The largest size of a dynamic axis: batch, shots or prototypes."""
        return {BATCH: self.batch, SHOTS: self.shots, PROTOTYPES: self.prototypes}[axis]

    def to_dict(self) -> dict[str, list[int]]:
        return {k: [1, self.most(k)] for k in (BATCH, SHOTS, PROTOTYPES) if self.most(k)}


@dataclass(frozen=True)
class PrototypeSpec:
    """A few-shot kind's prototypes: rows per support image, channels per tensor, the bank bound (0: none)."""

    per_shot: int
    channels: tuple[int, ...]
    max_count: int

    def to_dict(self) -> dict[str, Any]:
        return {"per_shot": self.per_shot, "channels": list(self.channels), "max_count": self.max_count}


@dataclass(frozen=True)
class NormalScores:
    """How many normal images a threshold came from and their score range."""

    images: int
    min: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class TilingSpec:
    """A tiled bundle's tiling (frame size, tile, overlap, regions of interest, stitched map side) and, for few-shot
    kinds, its memory: "shared" (every tile pooled) or "position" (one per tile position); None for other kinds."""

    tiling: Tiling
    memory: str | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory not in MEMORIES:
            raise PackdError(f"--memory must be one of {', '.join(MEMORIES)}, got {self.memory!r}")

    @property
    def per_position(self) -> bool:
        return self.memory == "position"

    def to_dict(self) -> dict[str, Any]:
        t = self.tiling
        return {"tile": t.tile, "overlap": t.overlap, "rois": [list(r) for r in t.rois], "map_side": t.map_side,
                **({"memory": self.memory} if self.memory is not None else {})}


@dataclass(frozen=True)
class Engine:
    """A TensorRT engine built on a target: its graph, file, TensorRT version, compute capability, GPU name and
    optimisation profile."""

    graph: str
    file: str
    tensorrt: str
    compute_capability: str
    gpu: str = ""
    profile: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "file": self.file, "tensorrt": self.tensorrt,
                "compute_capability": self.compute_capability, **({"gpu": self.gpu} if self.gpu else {}),
                **({"profile": _plain(self.profile)} if self.profile else {})}


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, checked. Free-form records (teacher, settings, versions, checkpoint, int8) are
    read-only mappings."""

    kind: str
    image_size: int
    frame_hw: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: str
    opset: int
    graphs: Mapping[str, Graph]
    limits: Limits
    threshold: float
    normal_scores: NormalScores
    files: Mapping[str, str]
    teacher: Mapping[str, Any]
    settings: Mapping[str, Any]
    versions: Mapping[str, str]
    checkpoint: Mapping[str, Any]
    created: str
    engines: tuple[Engine, ...] = ()
    prototypes: PrototypeSpec | None = None
    int8: Mapping[str, Any] | None = None
    tiling: TilingSpec | None = None

    # ---- facts every reader needs, derived once --------------------------------------------

    @property
    def few_shot(self) -> bool:
        """A support graph turns k normal images into prototypes."""
        return SUPPORT in self.graphs

    @property
    def memory(self) -> str | None:
        """A tiled few-shot bundle's memory, "shared" or "position"; None otherwise."""
        return self.tiling.memory if self.tiling is not None else None

    @property
    def positions(self) -> int:
        """A per-position memory's tile positions (0: none)."""
        return self.tiling.tiling.count if self.tiling is not None and self.tiling.per_position else 0

    @property
    def prototype_inputs(self) -> tuple[Tensor, ...]:
        """The query graph's prototype inputs (prototypes_1..N)."""
        return tuple(t for t in self.graphs[QUERY].inputs[1:] if t.name != TILE_INDEX)

    @property
    def prototype_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.prototype_inputs)

    @property
    def prototype_channels(self) -> tuple[int, ...]:
        return tuple(int(t.shape[-1]) for t in self.prototype_inputs)

    @property
    def graph_hw(self) -> tuple[int, int]:
        """What the graphs take: a tile of a tiled bundle, else the whole frame."""
        return (self.tiling.tiling.tile,) * 2 if self.tiling is not None else self.frame_hw

    @property
    def map_hw(self) -> tuple[int, int]:
        """The anomaly map the runtime returns per frame: a tiled bundle's stitched map, else the model's input."""
        return self.tiling.tiling.map_hw if self.tiling is not None else (self.image_size, self.image_size)

    @property
    def max_count(self) -> int:
        """The kind's bank bound (0: none)."""
        return self.prototypes.max_count if self.prototypes is not None else 0

    # ---- the JSON, both ways -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON object (what `manifest.json` holds and a signature covers)."""
        return {
            "format": BUNDLE_FORMAT, "kind": self.kind, "teacher": _plain(self.teacher), "image_size": self.image_size,
            "input": {**INPUT_CONTRACT, "height": self.frame_hw[0], "width": self.frame_hw[1]},
            "normalisation": {"mean": list(self.mean), "std": list(self.std)}, "settings": _plain(self.settings),
            "precision": self.precision, "opset": self.opset,
            "graphs": {name: g.to_dict() for name, g in self.graphs.items()}, "dynamic": self.limits.to_dict(),
            "threshold": self.threshold, "normal_scores": self.normal_scores.to_dict(),
            "versions": _plain(self.versions), "checkpoint": _plain(self.checkpoint), "created": self.created,
            "engines": [e.to_dict() for e in self.engines],
            **({"prototypes": self.prototypes.to_dict()} if self.prototypes is not None else {}),
            **({"int8": _plain(self.int8)} if self.int8 is not None else {}),
            **({"tiling": self.tiling.to_dict()} if self.tiling is not None else {}),
            "files": dict(self.files),
        }

    @classmethod
    def from_dict(cls, m: Any, where: str) -> Manifest:
        """Check a manifest's JSON object and type it; one line naming `where` for anything wrong."""
        return _parse(m, where)

    def checked(self, where: str = "being written") -> Manifest:
        """This manifest as the runtime would read it back (so export never writes one the runtime refuses)."""
        return _parse(self.to_dict(), where)

    def __reduce__(self) -> tuple:
        """Pickled as its JSON and read back through the checks (a process pool returns one from an export)."""
        return _parse, (self.to_dict(), "unpickled")

    def with_engines(self, engines: tuple[Engine, ...], files: Mapping[str, str]) -> Manifest:
        """The same manifest with other engines and files (after `packd-export build`)."""
        return replace(self, engines=tuple(engines), files=MappingProxyType(dict(files)))


def read_manifest(bundle: str | Path) -> Manifest:
    """Parse a bundle's manifest, check its version and schema, and type it."""
    path, manifest = read_output(bundle, BUNDLE)
    return Manifest.from_dict(manifest, str(path))


# ---- the checks ------------------------------------------------------------------------------


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


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensors(spec: dict, key: str, where: str) -> tuple[Tensor, ...]:
    items = _need(spec, key, list, where)
    out = []
    for item in items:
        name, dtype = _need(item, "name", str, where), _need(item, "dtype", str, where)
        shape = _need(item, "shape", list, where)
        if not all(isinstance(d, str) or _whole(d) for d in shape):
            raise _fail(where, f"{name} has an invalid shape {shape}")
        out.append(Tensor(name, dtype, tuple(shape)))
    return tuple(out)


def _floats(values: Any, what: str, where: str) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise _fail(where, f"normalisation {what} must be three finite numbers, got {values!r:.60}")
    return tuple(float(v) for v in values)


def _tiling(m: dict, frame_hw: tuple[int, int], size: int, few_shot: bool, where: str) -> TilingSpec:
    """A manifest's tiling, its geometry built once here."""
    spec = m["tiling"]
    if not isinstance(spec, dict):
        raise _fail(where, f"its tiling must be an object, got {type(spec).__name__}")
    tile, overlap, rois, side = (_need(spec, k, t, where) for k, t in
                                 (("tile", int), ("overlap", int), ("rois", list), ("map_side", int)))
    try:
        if not all(isinstance(r, list) and len(r) == 4 and all(map(_whole, r)) for r in rois):
            raise PackdError("every region of interest must be four whole numbers Y,X,H,W")
        if not 1 <= side <= size or size % side:
            raise PackdError(f"the map side {side!r} must divide the model's input size {size}")
        tiling = Tiling(frame_hw, tile=tile, overlap=overlap, rois=tuple(tuple(r) for r in rois), map_side=side)
    except PackdError as e:
        raise _fail(where, f"its tiling is unusable: {e}") from None
    memory = spec.get("memory")
    if memory not in (MEMORIES if few_shot else (None,)):
        raise _fail(where, f"the tiling's memory must be shared or (few-shot kinds) position, got {memory!r}")
    return TilingSpec(tiling, memory)


def _engines(m: dict, files: dict[str, str], where: str) -> tuple[Engine, ...]:
    engines = []
    for e in _need(m, "engines", list, where):
        if not isinstance(e, dict) or e.get("file") not in files:
            raise PackdError(f"engine {e!r:.200} is not a hashed file of the bundle: refused")
        named = {k: _need(e, k, str, where) for k in ("graph", "file", "tensorrt", "compute_capability")}
        gpu, profile = e.get("gpu", ""), e.get("profile", {})
        if not isinstance(gpu, str) or not isinstance(profile, dict):
            raise _fail(where, f"engine {named['file']!r} has a malformed gpu or profile")
        engines.append(Engine(**named, gpu=gpu, profile=_frozen(profile)))
    return tuple(engines)


def _difference(said: Any, read: Any, path: str = "") -> str | None:
    """The first entry where a manifest's JSON and what its typed reading writes back differ (None: the same)."""
    if isinstance(said, dict) and isinstance(read, dict):
        for key in sorted(set(said) | set(read), key=str):
            if key not in said or key not in read:
                return f"{path}{key}"
            if (d := _difference(said[key], read[key], f"{path}{key}.")) is not None:
                return d
        return None
    if isinstance(said, list) and isinstance(read, list) and len(said) == len(read):
        return next((d for i, (a, b) in enumerate(zip(said, read))
                     if (d := _difference(a, b, f"{path}{i}.")) is not None), None)
    same = said == read and type(said) is type(read) or (isinstance(said, (int, float)) and not isinstance(said, bool)
                                                          and isinstance(read, float) and said == read)
    return None if same else path.rstrip(".") or "the manifest"


def _parse(m: Any, where: str) -> Manifest:
    manifest = _typed(m, where)
    if (entry := _difference(m, manifest.to_dict())) is not None:  # nothing read is silently dropped or defaulted
        raise _fail(where, f"{entry!r} is not what packd writes (an entry missing, unknown or malformed)")
    return manifest


def _typed(m: Any, where: str) -> Manifest:
    if not isinstance(m, dict):
        raise _fail(where, "not a JSON object")
    if m.get("format") != BUNDLE_FORMAT:
        raise PackdError(f"{where} has bundle format {m.get('format')!r}; this packd reads format {BUNDLE_FORMAT}")
    unknown = sorted(set(m) - KEYS)
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(map(repr, unknown[:5]))}: packd writes none of them")
    kind = _need(m, "kind", str, where)
    size = _need(m, "image_size", int, where)
    contract = _need(m, "input", dict, where)
    h, w = _need(contract, "height", int, where), _need(contract, "width", int, where)
    if not all(1 <= v <= MAX_SIDE for v in (size, h, w)):
        raise _fail(where, f"image size {size} and frame size {h}x{w} must be 1 to {MAX_SIDE} pixels")
    if any(contract.get(k) != INPUT_CONTRACT[k] for k in ("dtype", "layout", "color")):
        raise _fail(where, "the input contract must be uint8 NHWC RGB")
    norm = _need(m, "normalisation", dict, where)
    mean, std = _floats(norm.get("mean"), "mean", where), _floats(norm.get("std"), "std", where)
    threshold = _number(m, "threshold", where)
    if not math.isfinite(threshold):
        raise _fail(where, f"the threshold is {threshold}: the model it was computed with is broken")
    if threshold < 0:
        raise _fail(where, f"the threshold is {threshold}: scores are distances, never negative")
    basis = _need(m, "normal_scores", dict, where)
    low, high = (_number(basis, k, where) for k in ("min", "max"))
    images = _need(basis, "images", int, where)
    if images < 1 or not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise _fail(where, f"normal_scores must count at least one image and range over finite scores, got {basis}")
    if not low / THRESHOLD_SLACK <= threshold <= high * THRESHOLD_SLACK:
        raise _fail(where, f"the threshold {threshold} is more than {THRESHOLD_SLACK}x outside the scores of the "
                           f"normal images it was computed from ({low:.4g} to {high:.4g}): edited by hand?")
    files = _need(m, "files", dict, where)
    if not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()):
        raise _fail(where, "'files' must map file names to sha256 digests")
    raw_graphs = _need(m, "graphs", dict, where)
    if QUERY not in raw_graphs or not set(raw_graphs) <= {SUPPORT, QUERY}:
        raise _fail(where, f"graphs must be 'query' and optionally 'support', got {sorted(raw_graphs)}")
    graphs = {}
    for name, spec in raw_graphs.items():
        file = _need(spec, "file", str, where)
        if file not in files:
            raise _fail(where, f"the {name} graph's file {file!r} is not listed in 'files' (so never hashed)")
        graphs[name] = Graph(file, _tensors(spec, "inputs", where), _tensors(spec, "outputs", where))
    few_shot = SUPPORT in graphs
    dynamic = _need(m, "dynamic", dict, where)
    limits = {}
    for axis in (BATCH, *((SHOTS, PROTOTYPES) if few_shot else ())):
        lo_hi = _need(dynamic, axis, list, where)
        if len(lo_hi) != 2 or not all(map(_whole, lo_hi)) or not 1 == lo_hi[0] <= lo_hi[1] <= MAX_DYNAMIC[axis]:
            raise _fail(where, f"dynamic range {axis} must be [1, max] with max at most {MAX_DYNAMIC[axis]}, "
                               f"got {lo_hi}")
        limits[axis] = lo_hi[1]
    if set(dynamic) != set(limits):
        raise _fail(where, f"dynamic ranges must be {sorted(limits)}, got {sorted(dynamic)}")
    tiling = _tiling(m, (h, w), size, few_shot, where) if "tiling" in m else None
    inputs, outputs = list(graphs[QUERY].inputs), graphs[QUERY].outputs
    gh, gw = (tiling.tiling.tile,) * 2 if tiling is not None else (h, w)
    positions = tiling.tiling.count if tiling is not None and tiling.per_position else 0
    if positions:
        if inputs[-1:] != [Tensor(TILE_INDEX, "int64", (BATCH,))]:
            raise _fail(where, f"a per-position query graph's last input must be {TILE_INDEX} int64 (batch)")
        inputs = inputs[:-1]
    expected_images = Tensor(IMAGES, "uint8", (BATCH, gh, gw, 3))
    if not inputs or inputs[0] != expected_images:
        raise _fail(where, f"the query graph's first input must be {expected_images.to_dict()}")
    expected_out = {Tensor(SCORES, "float32", (BATCH,)), Tensor(MAPS, "float32", (BATCH, size, size))}
    if len(outputs) != 2 or set(outputs) != expected_out:
        raise _fail(where, f"the query graph's outputs must be {sorted(t.name for t in expected_out)} float32 "
                           f"(batch) and (batch, {size}, {size})")
    protos = inputs[1:]
    lead = (positions, PROTOTYPES) if positions else (PROTOTYPES,)
    if any(p.dtype != "float32" or p.shape[:-1] != lead or len(p.shape) != len(lead) + 1 or not _whole(p.shape[-1])
           for p in protos):
        raise _fail(where, "prototype inputs must be float32 (prototypes, C)" + (
            f", per position ({positions}, prototypes, C)" if positions else ""))
    proto_spec = None
    if few_shot:
        info = _need(m, "prototypes", dict, where)
        per_shot, max_count = _need(info, "per_shot", int, where), _need(info, "max_count", int, where)
        channels = info.get("channels", [p.shape[-1] for p in protos])
        if per_shot < 1 or max_count < 0:
            raise _fail(where, "prototypes per shot must be at least 1 and max_count 0 (no bound) or more")
        if channels != [p.shape[-1] for p in protos]:
            raise _fail(where, f"the prototypes' channels {channels!r:.60} are not the query graph's")
        proto_spec = PrototypeSpec(per_shot, tuple(channels), max_count)
        if graphs[SUPPORT].inputs != (Tensor(IMAGES, "uint8", (SHOTS, gh, gw, 3)),):
            raise _fail(where, "the support graph must take images uint8 (shots, H, W, 3)")

        def signature(items: tuple[Tensor, ...] | list[Tensor]) -> list:  # the prototype count's symbol differs
            return [(i.name, i.dtype, i.shape[-1:]) for i in items]

        if signature(graphs[SUPPORT].outputs) != signature(protos) or not protos:
            raise _fail(where, "the support graph's outputs must be the query graph's prototype inputs")
    elif protos:
        raise _fail(where, "a bundle without a support graph takes no prototypes")
    elif "prototypes" in m:
        raise _fail(where, "a bundle without a support graph has no 'prototypes' entry")
    int8 = m.get("int8")
    if int8 is not None and not isinstance(int8, dict):
        raise _fail(where, f"'int8' must be an object, got {type(int8).__name__}")
    texts = {k: _need(m, k, str, where) for k in ("precision", "created")}
    return Manifest(
        kind=kind, image_size=size, frame_hw=(h, w), mean=mean, std=std, precision=texts["precision"],
        opset=_need(m, "opset", int, where), graphs=MappingProxyType(graphs),
        limits=Limits(limits[BATCH], limits.get(SHOTS, 0), limits.get(PROTOTYPES, 0)), threshold=threshold,
        normal_scores=NormalScores(images, low, high), files=MappingProxyType(dict(files)),
        teacher=_frozen(_need(m, "teacher", dict, where)), settings=_frozen(_need(m, "settings", dict, where)),
        versions=_frozen(_need(m, "versions", dict, where)), checkpoint=_frozen(_need(m, "checkpoint", dict, where)),
        created=texts["created"], engines=_engines(m, files, where), prototypes=proto_spec,
        int8=_frozen(int8) if int8 is not None else None, tiling=tiling)
