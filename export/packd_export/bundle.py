"""Write and check bundles: a directory with manifest.json, support.onnx (few-shot kinds), query.onnx
and, on a machine with TensorRT and a GPU, engines built for it.

Written atomically: everything goes to a temporary directory that is renamed into place, so
exporting over an existing bundle never leaves half of one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

import packd
from packd.data import list_split
from packd.errors import PackdError
from packd.loading import load_scorer
from packd.preprocess import Preprocess, load_frames
from packd.scoring import Scorer
from packd.synth import paint_defects
from packd_export.graphs import GraphSpec, graph_specs
from packd_export.int8 import Int8Settings, Validation, mixed_int8
from packd_export.onnx_export import check_onnx, export_onnx
from packd_export.precision import to_fp16
from packd_export.trt_compat import check_tensorrt_compat
from packd_runtime.atomic import atomic_dir, check_replaceable, check_report_path, write_json, write_report
from packd_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from packd_runtime.coreset import bound_prototypes
from packd_runtime.manifest import (
    BUNDLE_FORMAT,
    MANIFEST,
    read_manifest,
    sha256,
    threshold_from_normal_scores,
    verify_files,
)

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_IMAGES = 32  # normal training images per training category: int8 calibration and the default threshold
VALIDATION_IMAGES = 16  # the next ones per category: int8's sensitivity analysis and checks (never calibrated on)
THRESHOLD_SHOTS = 2  # few-shot kinds: supports per category when scoring the normal images


def _dtype(t: onnx.TypeProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type).name


def _io(values) -> list[dict[str, Any]]:
    return [{"name": v.name, "dtype": _dtype(v.type),
             "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]


def calibration_frames(config: dict[str, Any], frame_hw: tuple[int, int], per_category: int,
                       data: Path | None = None) -> dict[str, np.ndarray]:
    """Normal training images of the checkpoint's categories as uint8 camera frames (N,H,W,3)."""
    root = Path(data or config["train"]["data"])
    frames = {}
    for cat in config["train"]["categories"]:
        try:
            samples = list_split(root, cat, "train")[:per_category]
        except PackdError as e:
            raise PackdError(f"calibration images: {e} (pass --calibration-data DIR with the training "
                             "dataset)") from None
        frames[cat] = load_frames([s.path for s in samples], frame_hw)
    return frames


def _example(scorer: Scorer, gspec: GraphSpec, frame_hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Example inputs to trace with: 2 frames (+ 6 random prototypes per tensor for a few-shot query graph)."""
    images = torch.randint(0, 256, (2, *frame_hw, 3), dtype=torch.uint8)
    if gspec.name == "support" or not scorer.few_shot:
        return (images,)
    return (images, *(torch.randn(6, c) for c in scorer.model.prototype_channels))


def _feeds(frames: dict[str, np.ndarray], few_shot: bool, prototypes) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph the feeds of normal images: few-shot kinds take THRESHOLD_SHOTS supports per category
    (through `prototypes(supports) -> {name: array}`) and score the rest; other kinds score them all."""
    feeds: dict[str, list] = {"support": [], "query": []}
    for images in frames.values():
        queries, extra = images, {}
        if few_shot:
            supports, queries = images[:THRESHOLD_SHOTS], images[THRESHOLD_SHOTS:]
            feeds["support"].append({"images": supports})
            extra = prototypes(supports)
        feeds["query"] += [{"images": queries[i:i + 8], **extra} for i in range(0, len(queries), 8)]
    return feeds


def _validation(frames: dict[str, np.ndarray], few_shot: bool, max_prototypes: int) -> Validation:
    """Held-out images per category for int8: the normal images after the calibration images (the last
    calibration images where a category has too few) and copies of them with a painted defect each, so
    that score ranks measure what decisions rest on: defective above normal."""
    overlaps = any(len(f) < CALIBRATION_IMAGES + THRESHOLD_SHOTS + 2 for f in frames.values())
    sets = []
    for images in frames.values():
        held = images[CALIBRATION_IMAGES:] if not overlaps else images[-min(len(images), VALIDATION_IMAGES):]
        supports, queries = (held[:THRESHOLD_SHOTS], held[THRESHOLD_SHOTS:]) if few_shot else (None, held)
        sets.append((supports, np.concatenate([queries, paint_defects(queries, seed=len(sets))])))
    return Validation(sets, max_prototypes, overlaps)


@torch.no_grad()
def _torch_prototypes(scorer: Scorer, names: list[str]):
    """The FP32 PyTorch support path (bank bound included) as a feed maker, for int8 calibration."""
    preprocess = Preprocess(scorer.spec)
    return lambda supports: {n: p.numpy() for n, p in
                             zip(names, scorer.prototypes(preprocess(torch.from_numpy(supports))))}


def _graph_feeds(backend: OnnxRuntimeBackend, graphs: dict[str, Any], frames: dict[str, np.ndarray],
                 max_prototypes: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """`_feeds` with prototypes from the bundle's own support graph (bank bound included)."""
    names = [o["name"] for o in graphs.get("support", {}).get("outputs", [])]

    def prototypes(supports: np.ndarray) -> dict[str, np.ndarray]:
        out = backend.run("support", {"images": supports})
        arrays = [out[n] for n in names]
        return dict(zip(names, bound_prototypes(arrays, max_prototypes) if max_prototypes else arrays))

    return _feeds(frames, "support" in graphs, prototypes)


def bundle_feeds(bundle: str | Path, frames: dict[str, np.ndarray]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph the feeds of normal frames for a written bundle, prototypes from its own support graph:
    calibration data for tools that quantize a bundle's graphs (benchmarks, tests)."""
    manifest = read_manifest(bundle)
    backend = OnnxRuntimeBackend(Path(bundle), manifest)
    try:
        return _graph_feeds(backend, manifest["graphs"], frames, manifest.get("prototypes", {}).get("max_count", 0))
    finally:
        backend.close()


def bundle_threshold(bundle: Path, graphs: dict[str, Any], frames: dict[str, np.ndarray],
                     max_prototypes: int = 0) -> float:
    """The default threshold of a bundle from its OWN graphs (so fp16 / int8 bundles get theirs): mean +
    3 std of the scores of normal training images, few-shot kinds with prototypes from 2 of them."""
    backend = OnnxRuntimeBackend(bundle, {"graphs": graphs})
    try:
        feeds = _graph_feeds(backend, graphs, frames, max_prototypes)
        scores = np.concatenate([backend.run("query", f)["scores"] for f in feeds["query"]])
    finally:
        backend.close()
    return threshold_from_normal_scores(scores)


def export_bundle(checkpoint: str | Path, out: str | Path, *, precision: str = "fp32", max_batch: int = 32,
                  max_shots: int = 8, frame_size: tuple[int, int] | None = None, opset: int = 18,
                  calibration_data: str | Path | None = None, engines: str = "auto",
                  scoring: dict[str, Any] | None = None, int8: Int8Settings | None = None,
                  report: str | Path | None = None, progress=lambda _: None) -> dict[str, Any]:
    """Export a checkpoint to a bundle. engines: 'auto' (build when TensorRT and a GPU are here),
    'never', or 'require' (fail without them); `scoring` overrides the checkpoint's scoring settings
    (the manifest records the ones the graphs compute); `int8` says how int8 is calibrated and mixed, and
    `report` where its per-layer report goes. Returns the manifest."""
    from packd_runtime.tensorrt_build import build_bundle_engines, why_no_tensorrt

    if precision not in PRECISIONS:
        raise PackdError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_batch < 1 or max_shots < 1:
        raise PackdError("--max-batch and --max-shots must be at least 1")
    if report is not None:
        if precision != "int8":
            raise PackdError("--report describes an int8 export: add --precision int8")
        check_report_path(report)
    int8 = int8 or Int8Settings()
    if engines == "require" and (reason := why_no_tensorrt()):
        raise PackdError(f"engines were required but cannot be built here: {reason}")
    scorer, config = load_scorer(checkpoint, scoring)
    broken = [k for k, v in scorer.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise PackdError(f"{checkpoint} has non-finite weights ({', '.join(broken[:3])}): its training diverged; "
                         "retrain it (e.g. with a lower --lr)")
    check_replaceable(out, MANIFEST, "bundle")
    spec = scorer.spec
    frame_hw = tuple(frame_size or (spec.image_size, spec.image_size))
    specs = graph_specs(scorer)
    per_shot = scorer.model.prototypes_per_shot(spec.image_size) if scorer.few_shot else 0
    most = max_shots * per_shot if not scorer.max_prototypes else min(max_shots * per_shot, scorer.max_prototypes)
    limits = {"batch": max_batch, "shots": max_shots, "prototypes": max(most, 1)}
    per_category = CALIBRATION_IMAGES + (VALIDATION_IMAGES if precision == "int8" else 0)
    loaded = calibration_frames(config, frame_hw, per_category, calibration_data and Path(calibration_data))
    frames = {c: f[:CALIBRATION_IMAGES] for c, f in loaded.items()}
    protos = {g.name: export_onnx(g, _example(scorer, g, frame_hw), limits, opset) for g in specs}
    int8_report = None
    if precision == "fp16":
        protos = {g: to_fp16(p) for g, p in protos.items()}
    elif precision == "int8":
        calibration = _feeds(frames, scorer.few_shot, _torch_prototypes(scorer, scorer.prototype_names))
        protos, int8_report = mixed_int8(protos, calibration, _validation(loaded, scorer.few_shot,
                                                                           scorer.max_prototypes), int8, progress)
    graphs: dict[str, Any] = {}
    with atomic_dir(out, MANIFEST, "bundle") as tmp:
        for name, proto in protos.items():
            proto = check_onnx(proto)
            problems = check_tensorrt_compat(proto)
            if problems:
                raise PackdError(f"{name} graph would not parse in TensorRT: " + "; ".join(problems[:5]))
            onnx.save(proto, tmp / f"{name}.onnx")
            graphs[name] = {"file": f"{name}.onnx", "inputs": _io(proto.graph.input),
                            "outputs": _io(proto.graph.output)}
        manifest = {
            "format": BUNDLE_FORMAT,
            "kind": config["kind"],
            "teacher": config["teacher"],
            "image_size": spec.image_size,
            "input": {"dtype": "uint8", "layout": "NHWC", "color": "RGB", "range": [0, 255],
                      "height": frame_hw[0], "width": frame_hw[1]},
            "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
            "settings": config["settings"],
            "precision": precision,
            "opset": opset,
            "graphs": graphs,
            "dynamic": {k: [1, v] for k, v in limits.items() if k == "batch" or scorer.few_shot},
            "threshold": bundle_threshold(tmp, graphs, frames, scorer.max_prototypes),
            "versions": {"packd": packd.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "checkpoint": {"name": Path(checkpoint).resolve().name,
                           "model_sha256": sha256(Path(checkpoint) / "model.safetensors"),
                           "categories": config["train"]["categories"]},
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "engines": [],
        }
        if scorer.few_shot:
            manifest["prototypes"] = {"per_shot": per_shot, "channels": list(scorer.model.prototype_channels),
                                      "max_count": scorer.max_prototypes}
        if int8_report:
            manifest["int8"] = {"calibration": int8_report["settings"]["calibration"],
                                "fp16_layers": {g: [r["weights"] for r in rows if r["precision"] == "fp16"]
                                                for g, rows in int8_report["graphs"].items()},
                                "validation": int8_report["result"]}
        manifest["files"] = {f"{g}.onnx": sha256(tmp / f"{g}.onnx") for g in graphs}
        write_json(tmp / MANIFEST, manifest)
    if int8_report and report is not None:
        write_report(report, {"bundle": str(out), "kind": config["kind"], **int8_report})
    if engines != "never" and why_no_tensorrt() is None:
        manifest = build_bundle_engines(out)
    return manifest


def _real_io(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return _io(model.graph.input), _io(model.graph.output)


def check_bundle(bundle: str | Path) -> dict[str, Any]:
    """What the runtime checks on open (schema, confined paths, hashes, external data) and more: every
    graph's real I/O names, dtypes and shapes equal the manifest's, its weights are finite, it passes
    the ONNX checker and TensorRT's parser rules. Returns the manifest."""
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    for graph, spec in manifest["graphs"].items():
        model = onnx.load(Path(bundle) / spec["file"])
        if _real_io(model) != (spec["inputs"], spec["outputs"]):
            raise PackdError(f"{spec['file']}'s inputs/outputs {_real_io(model)} differ from the manifest's")
        bad = [i.name for i in model.graph.initializer
               if onnx.helper.tensor_dtype_to_np_dtype(i.data_type).kind == "f"
               and not np.isfinite(onnx.numpy_helper.to_array(i)).all()]
        if bad:
            raise PackdError(f"{spec['file']} has non-finite weights ({', '.join(bad[:3])}): the model is broken")
        check_onnx(model)
        problems = check_tensorrt_compat(model)
        if problems:
            raise PackdError(f"{graph} graph would not parse in TensorRT: " + "; ".join(problems[:5]))
    return manifest
