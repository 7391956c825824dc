"""TensorRT engines from the bundle's ONNX graphs, on the GPU where they will run. Part of the
torch-free runtime, so a Jetson with only the runtime installed builds its own engines.

A strongly typed network (precision comes from the ONNX), every parser error reported, one
optimisation profile covering batch 1..max-batch (support graph: shots 1..max-shots) and
prototype count 1..max-shots x prototypes per shot, the timing cache kept beside the engines (a
cache TensorRT refuses is replaced by a fresh one), TF32 cleared for every build (the FP32
islands of fp16 and int8 bundles stay FP32 too), built on the GPU `device` names. Engines are
named by TensorRT version and GPU compute capability and record the GPU's name: a plan runs on
that TensorRT version and GPU type. Works with TensorRT 10.3 (JetPack 6) to 11.x.

NOT RUN on a GPU in development (no TensorRT builder installs on the development machines);
the names it uses are checked against a real TensorRT 11 binding where that binding has them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from packd_runtime.atomic import atomic_dir, write_json
from packd_runtime.bundle_format import BATCH, BUNDLE, MANIFEST, PROTOTYPES, SHOTS, verify_files
from packd_runtime.errors import PackdError
from packd_runtime.files import native_path, sha256
from packd_runtime.manifest import Engine, Manifest, read_manifest

WORKSPACE_BYTES = 4 << 30
OPT_BATCH, OPT_SHOTS = 8, 4


INSTALL = ("pip install 'packd-runtime[tensorrt]' for CUDA 12 drivers (JetPack 6: TensorRT comes with JetPack), "
           "'packd-runtime[tensorrt-cu13]' for CUDA 13 drivers")


def modules() -> tuple[Any, Any]:
    """(tensorrt, cuda.bindings.runtime); ImportError says which is missing."""
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    return trt, cudart


def why_no_tensorrt(device: int = 0) -> str | None:
    """None when TensorRT and CUDA GPU `device` are usable here, else the reason, with the error that came back."""
    try:
        _, cudart = modules()
    except ImportError as e:
        return f"TensorRT or cuda-python cannot be imported ({type(e).__name__}: {e}); {INSTALL}"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return f"CUDA reports {err} (no driver, or one too old for this cuda-python; {INSTALL})"
    if device >= count:
        return f"no CUDA GPU {device} is visible ({count} found)"
    return None


def _properties(device: int) -> Any:
    _, cudart = modules()
    err, prop = cudart.cudaGetDeviceProperties(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise PackdError(f"cannot read the properties of CUDA device {device}: {err}")
    return prop


def compute_capability(device: int = 0) -> str:
    """'87' for an Orin, '90' for an H100."""
    prop = _properties(device)
    return f"{prop.major}{prop.minor}"


def device_name(device: int = 0) -> str:
    """The GPU's name, e.g. 'NVIDIA H100 80GB HBM3'."""
    name = _properties(device).name
    return (name.split(b"\0")[0].decode(errors="replace") if isinstance(name, bytes) else str(name)).strip()


def engine_name(graph: str, trt_version: str, cc: str) -> str:
    """A plan runs only on the TensorRT version and GPU type it was built for: say both in its name."""
    return f"{graph}.trt{trt_version}.sm{cc}.engine"


def profile_shapes(manifest: Manifest, graph: str) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape of every input of `graph` from the manifest's limits; a tiled bundle's query batch is
    tuned for one frame's tiles."""
    most = manifest.limits.most
    opts = {BATCH: OPT_BATCH if manifest.tiling is None else manifest.tiling.tiling.count,  # one frame's tiles
            SHOTS: OPT_SHOTS, PROTOTYPES: OPT_SHOTS * (manifest.prototypes.per_shot if manifest.prototypes else 0)}
    shapes = {}
    for spec in manifest.graphs[graph].inputs:  # named axes are dynamic (a per-position axis is fixed)
        dims = [(d, d, d) if isinstance(d, int) else (1, min(most(d), opts[d]), most(d)) for d in spec.shape]
        shapes[spec.name] = tuple(tuple(d[i] for d in dims) for i in range(3))
    return shapes


def build_engine(onnx_path: Path, shapes: dict[str, tuple], out: Path, timing_cache: Path) -> None:
    """Parse, configure and build one serialized engine on the current device; raises PackdError with
    every parser error."""
    trt, _ = modules()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as e:
        raise PackdError(f"TensorRT could not create a builder (is a CUDA GPU visible?): {e}") from None
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(native_path(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PackdError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.builder_optimization_level = 3
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default: FP32 layers would run in TF32
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, False):  # a cache from another TensorRT or GPU: start afresh
        cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, False):
            raise PackdError("TensorRT refused even an empty timing cache")
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise PackdError(f"{onnx_path.name} has an input {name!r} the manifest does not describe")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise PackdError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    out.write_bytes(bytes(plan))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_engines(bundle: Path, manifest: Manifest, device: int = 0) -> list[Engine]:
    """Build an engine for every graph of the bundle on GPU `device`; returns their manifest entries."""
    trt, cudart = modules()
    err, = cudart.cudaSetDevice(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise PackdError(f"cannot select CUDA device {device}: {err}")
    version, cc, gpu = trt.__version__, compute_capability(device), device_name(device)
    cache = bundle / f"timing.trt{version}.sm{cc}.cache"
    entries = []
    for graph, spec in manifest.graphs.items():
        name = engine_name(graph, version, cc)
        shapes = profile_shapes(manifest, graph)
        build_engine(bundle / spec.file, shapes, bundle / name, cache)
        entries.append(Engine(graph=graph, file=name, tensorrt=version, compute_capability=cc, gpu=gpu,
                              profile={k: [list(s) for s in v] for k, v in shapes.items()}))
    return entries


def build_bundle_engines(bundle: str | Path, device: int = 0) -> Manifest:
    """Build engines for an existing bundle on this machine's GPU `device` and record them (and the
    timing cache) in the manifest; the bundle is rewritten atomically."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    if reason := why_no_tensorrt(device):
        raise PackdError(f"cannot build engines here: {reason}")
    with atomic_dir(bundle, BUNDLE) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        entries = build_engines(tmp, manifest, device)
        built = {e.file for e in entries}
        files = {**manifest.files, **{name: sha256(tmp / name)
                                      for name in [*built, *(p.name for p in tmp.glob("timing.*.cache"))]}}
        manifest = manifest.with_engines((*(e for e in manifest.engines if e.file not in built), *entries),
                                         files).checked()
        write_json(tmp / MANIFEST, manifest.to_dict())
    return manifest
