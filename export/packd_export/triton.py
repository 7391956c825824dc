"""A Triton Inference Server model repository from a bundle (`packd-export triton BUNDLE --out REPO`).

Three models:
- `support` and `query`: the bundle's graphs as they are (`tensorrt_plan` where the bundle has an engine
  for the graph, else `onnxruntime_onnx`), for clients that want the raw graphs;
- `packd` (the served product, Triton's Python backend around `packd_runtime.Detector`): each line's
  prototypes and threshold stay in the server after a changeover, so frames travel alone, and frames
  of one line that arrive together are scored in one call.

Every config carries the bundle's fingerprint (parameter `fingerprint`), so a client can refuse a
server that runs another model than the one its prototypes or thresholds were made with.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from packd.errors import PackdError
from packd_runtime.atomic import atomic_dir, check_replaceable, text_marker
from packd_runtime.bundle_format import BATCH, MANIFEST, MAPS, SCORES, bundle_path, fingerprint, verify_files
from packd_runtime.manifest import Engine, Graph, Manifest, Tensor, read_manifest
from packd_runtime.signing import SIGNATURE, verify_signature
from packd_runtime.triton.line_model import ACTION, FINGERPRINT, FRAMES, LABELS, LINE, THRESHOLD, TRUSTED_KEYS

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "bool": "TYPE_BOOL"}
LINE_MODEL = "packd"
MARKER = "packd_repository.txt"  # in every repository this writes: only those are ever replaced
WRITTEN = "written by packd-export triton"
REPOSITORY = text_marker(MARKER, "model repository", WRITTEN)
QUEUE_DELAY_US = 1000  # dynamic batching: how long a frame may wait for frames of other cameras


def _tensors(kind: str, entries: list[tuple[str, str, list[Any]]]) -> str:
    """An input or output block: (name, Triton type, dims; a named dynamic axis becomes -1)."""
    rows = [f'  {{ name: "{name}" data_type: {dtype} dims: [ '
            + ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims) + " ] }"
            for name, dtype, dims in entries]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]"


def _io(ios: tuple[Tensor, ...], batched: bool) -> list[tuple[str, str, list[Any]]]:
    return [(io.name, TRITON_TYPES[io.dtype], list(io.shape[1:] if batched else io.shape)) for io in ios]


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def graph_config(name: str, spec: Graph, manifest: Manifest, platform: str) -> str:
    """config.pbtxt of one graph. Triton batches along a first axis that EVERY input and output shares;
    prototypes (n, C) have none, so graphs with prototypes run with max_batch_size 0 and the batch
    axis written into the dims."""
    batched = all(io.shape and io.shape[0] == BATCH for io in spec.inputs + spec.outputs)
    max_batch = manifest.limits.batch if batched else 0
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch}",
             _tensors("input", _io(spec.inputs, batched)), _tensors("output", _io(spec.outputs, batched))]
    if batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}")
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"
    lines.append(f"instance_group [ {{ kind: {kind} count: 1 }} ]")
    lines.append(_parameters({FINGERPRINT: fingerprint(manifest)}))
    return "\n".join(lines) + "\n"


def line_model_config(manifest: Manifest, backend: str, trusted_keys: list[Path] | None = None) -> str:
    """config.pbtxt of the Python-backend line model: per item a line name, an action (detect,
    changeover, calibrate) and a frame; per item back its score, map, label, the line's threshold and
    the bundle's fingerprint. One instance: the lines' state lives in its process."""
    h, w = manifest.frame_hw
    inputs = [(LINE, "TYPE_STRING", [1]), (ACTION, "TYPE_STRING", [1]), (FRAMES, "TYPE_UINT8", [h, w, 3])]
    outputs = [(SCORES, "TYPE_FP32", [1]), (MAPS, "TYPE_FP32", list(manifest.map_hw)), (LABELS, "TYPE_BOOL", [1]),
               (THRESHOLD, "TYPE_FP32", [1]), (FINGERPRINT, "TYPE_STRING", [1])]
    return "\n".join([
        f'name: "{LINE_MODEL}"', 'backend: "python"', f"max_batch_size: {manifest.limits.batch}",
        _tensors("input", inputs), _tensors("output", outputs),
        f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}",
        "instance_group [ { kind: KIND_CPU count: 1 } ]",
        _parameters({FINGERPRINT: fingerprint(manifest), "runtime_backend": backend,
                     **({TRUSTED_KEYS: ",".join(str(k.resolve()) for k in trusted_keys)} if trusted_keys else {})}),
    ]) + "\n"


LINE_MODEL_PY = '''"""Triton Python-backend entry point: packd_runtime's line model (packd-runtime must be
installed where the Python backend runs)."""

from packd_runtime.triton.line_model import TritonPythonModel  # noqa: F401
'''


def _engines(manifest: Manifest, gpu: str | None) -> dict[str, Engine]:
    """Per graph the engine to serve: those built on `gpu` (a GPU name as the manifest records it); with
    no name, the bundle's engines if they were all built on one GPU."""
    built = {e.gpu for e in manifest.engines}
    if gpu is None and len(built) > 1:
        raise PackdError(f"the bundle has engines for several GPUs ({', '.join(sorted(built))}): name the "
                         "server's with --engine-gpu")
    if gpu is not None and gpu not in built:
        raise PackdError(f"the bundle has no engines built on {gpu!r} (it has: {', '.join(sorted(built)) or 'none'}); "
                         f"run packd-export build on that GPU first")
    return {e.graph: e for e in manifest.engines if gpu is None or e.gpu == gpu}


def _copy_bundle(bundle: Path, manifest: Manifest, dest: Path) -> None:
    """The manifest and the files it lists (so hashed), each through `bundle_path`: nothing else the folder holds,
    never a symbolic link, nothing outside the bundle."""
    signature = [SIGNATURE] if (bundle / SIGNATURE).is_file() else []
    for name in (MANIFEST, *signature, *manifest.files):
        source = bundle_path(bundle, name)
        target = dest.joinpath(*Path(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target, follow_symlinks=False)


def write_repository(bundle: str | Path, out: str | Path, *, backend: str = "auto",
                     engine_gpu: str | None = None, trusted_keys: list[Path] | None = None) -> dict[str, str]:
    """Write the model repository for `bundle` to `out` (atomically). `backend`: what the line model's
    Detector runs on (auto, tensorrt, onnxruntime); `engine_gpu`: whose engines become `tensorrt_plan`
    models. Returns {model name: platform or backend}."""
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    signed = None
    if trusted_keys:  # the server will refuse it otherwise: refuse it now, before writing anything
        signed = verify_signature(bundle, manifest, trusted_keys)
    if out.resolve() == bundle.resolve() or bundle.resolve() in out.resolve().parents:
        raise PackdError(f"--out {out} is inside the bundle {bundle}: choose a folder outside it")
    if backend not in ("auto", "tensorrt", "onnxruntime"):
        raise PackdError(f"--runtime-backend must be auto, tensorrt or onnxruntime, got {backend!r}")
    check_replaceable(out, REPOSITORY)
    engines = _engines(manifest, engine_gpu)
    if signed is not None:  # with trusted keys, only engines the signature vouched for become tensorrt_plan models
        engines = {g: e for g, e in engines.items() if e.file in signed}
    models = {}
    with atomic_dir(out, REPOSITORY) as tmp:
        for graph, spec in manifest.graphs.items():
            version = tmp / graph / "1"
            version.mkdir(parents=True)
            if graph in engines:
                platform = "tensorrt_plan"
                shutil.copyfile(bundle_path(bundle, engines[graph].file), version / "model.plan")
            else:
                platform = "onnxruntime_onnx"
                shutil.copyfile(bundle_path(bundle, spec.file), version / "model.onnx")
            (tmp / graph / "config.pbtxt").write_text(graph_config(graph, spec, manifest, platform))
            models[graph] = platform
        version = tmp / LINE_MODEL / "1"
        _copy_bundle(bundle, manifest, version / "bundle")
        (version / "model.py").write_text(LINE_MODEL_PY)
        (tmp / LINE_MODEL / "config.pbtxt").write_text(line_model_config(manifest, backend, trusted_keys))
        models[LINE_MODEL] = "python"
        (tmp / MARKER).write_text(f"{WRITTEN} from {bundle.name} "
                                  f"(fingerprint {fingerprint(manifest)})\n")
    return models
