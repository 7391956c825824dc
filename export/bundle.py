"""Write, check and complete bundles: a directory with manifest.json, support.onnx (PACKD),
query.onnx and, on a machine with TensorRT and a GPU, engines built for it.

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
from packd_export.graphs import GraphSpec, SupportGraph, graph_specs, prototype_names
from packd_export.onnx_export import check_onnx, export_onnx
from packd_export.precision import to_fp16, to_int8
from packd_export.trt_compat import check_tensorrt_compat
from packd_runtime.atomic import atomic_dir, write_json
from packd_runtime.manifest import (
    BUNDLE_FORMAT,
    MANIFEST,
    read_manifest,
    sha256,
    threshold_from_normal_scores,
    verify_files,
)
from PIL import Image

import packd
from packd.data import list_split
from packd.errors import PackdError
from packd.models import Scorer, load_model
from packd.models.packd import PACKD
from packd.preprocess import InputSpec

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_IMAGES = 32
THRESHOLD_SHOTS = 2


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
            raise PackdError(f"calibration images: {e} (pass --calibration-data DIR with the training dataset)") from None
        frames[cat] = np.stack([np.asarray(Image.open(s.path).convert("RGB").resize(frame_hw[::-1], Image.BILINEAR))
                                for s in samples])
    return frames


def _example(gspec: GraphSpec, frame_hw: tuple[int, int], channels: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    images = torch.randint(0, 256, (2, *frame_hw, 3), dtype=torch.uint8)
    if gspec.name == "query" and len(gspec.inputs) > 1:
        return (images, *(torch.randn(6, c) for c in channels))
    return (images,)


@torch.no_grad()
def _calibration(scorer: Scorer, frames: dict[str, np.ndarray], spec: InputSpec, query: GraphSpec
                 ) -> tuple[dict[str, list[dict[str, np.ndarray]]], np.ndarray]:
    """Per graph the feeds for int8 calibration, and the FP32 scores of the normal images (threshold).

    PACKD: the first THRESHOLD_SHOTS images of each category are its supports, the rest queries."""
    feeds: dict[str, list] = {"support": [], "query": []}
    scores = []
    for images in frames.values():
        if isinstance(scorer.model, PACKD):
            supports, queries = images[:THRESHOLD_SHOTS], images[THRESHOLD_SHOTS:]
            protos = SupportGraph(scorer, spec)(torch.from_numpy(supports))
            feeds["support"].append({"images": supports})
            extra = dict(zip(prototype_names(), (p.numpy() for p in protos)))
        else:
            queries, protos, extra = images, (), {}
        for i in range(0, len(queries), 8):
            batch = queries[i:i + 8]
            feeds["query"].append({"images": batch, **extra})
            scores.append(query.module(torch.from_numpy(batch), *protos)[0].numpy())
    return feeds, np.concatenate(scores)


def export_bundle(checkpoint: str | Path, out: str | Path, precision: str = "fp32", max_batch: int = 32,
                  max_shots: int = 8, frame_size: tuple[int, int] | None = None, opset: int = 18,
                  calibration_data: str | Path | None = None, engines: str = "auto") -> dict[str, Any]:
    """Export a checkpoint to a bundle. engines: 'auto' (build when TensorRT and a GPU are here),
    'never', or 'require' (fail without them). Returns the manifest."""
    from packd_runtime.tensorrt_build import build_bundle_engines, why_no_tensorrt

    if precision not in PRECISIONS:
        raise PackdError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_batch < 1 or max_shots < 1:
        raise PackdError("--max-batch and --max-shots must be at least 1")
    if engines == "require" and (reason := why_no_tensorrt()):
        raise PackdError(f"engines were required but cannot be built here: {reason}")
    model, config = load_model(checkpoint)
    spec = InputSpec.from_dict(config["input"])
    frame_hw = tuple(frame_size or (spec.image_size, spec.image_size))
    scorer = Scorer(model, spec.image_size).eval()
    specs = graph_specs(scorer, spec)
    per_image = model.rotations * model.n_prototypes if isinstance(model, PACKD) else 0
    limits = {"batch": max_batch, "shots": max_shots, "prototypes": max(max_shots * per_image, 1)}
    frames = calibration_frames(config, frame_hw, CALIBRATION_IMAGES, calibration_data and Path(calibration_data))
    feeds, normal_scores = _calibration(scorer, frames, spec, next(g for g in specs if g.name == "query"))
    graphs: dict[str, Any] = {}
    with atomic_dir(out) as tmp:
        for g in specs:
            proto = export_onnx(g, _example(g, frame_hw, model.plan.channels), limits, opset)
            if precision == "fp16":
                proto = to_fp16(proto)
            elif precision == "int8":
                proto = to_int8(proto, feeds[g.name])
            proto = check_onnx(proto)
            problems = check_tensorrt_compat(proto)
            if problems:
                raise PackdError(f"{g.name} graph would not parse in TensorRT: " + "; ".join(problems[:5]))
            onnx.save(proto, tmp / f"{g.name}.onnx")
            graphs[g.name] = {"file": f"{g.name}.onnx", "inputs": _io(proto.graph.input), "outputs": _io(proto.graph.output)}
        manifest = {
            "format": BUNDLE_FORMAT,
            "kind": config["kind"],
            "teacher": config["teacher"],
            "image_size": spec.image_size,
            "input": {"dtype": "uint8", "layout": "NHWC", "color": "RGB", "range": [0, 255],
                      "height": frame_hw[0], "width": frame_hw[1]},
            "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
            "precision": precision,
            "opset": opset,
            "graphs": graphs,
            "dynamic": {k: [1, v] for k, v in limits.items() if k == "batch" or per_image},
            "threshold": threshold_from_normal_scores(normal_scores),
            "versions": {"packd": packd.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "checkpoint": {"path": str(checkpoint), "model_sha256": sha256(Path(checkpoint) / "model.safetensors")},
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "engines": [],
        }
        if per_image:
            manifest["prototypes"] = {"per_image": per_image, "rotations": model.rotations,
                                      "n_prototypes": model.n_prototypes, "channels": list(model.plan.channels)}
        manifest["files"] = {f"{g}.onnx": sha256(tmp / f"{g}.onnx") for g in graphs}
        write_json(tmp / MANIFEST, manifest)
    if engines != "never" and why_no_tensorrt() is None:
        manifest = build_bundle_engines(out)
    return manifest


def check_bundle(bundle: str | Path) -> dict[str, Any]:
    """Manifest version, file hashes, ONNX validity and TensorRT parser compatibility; returns the manifest."""
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    for graph, spec in manifest["graphs"].items():
        model = onnx.load(Path(bundle) / spec["file"])
        check_onnx(model)
        problems = check_tensorrt_compat(model)
        if problems:
            raise PackdError(f"{graph} graph would not parse in TensorRT: " + "; ".join(problems[:5]))
        if [i["name"] for i in _io(model.graph.input)] != [i["name"] for i in spec["inputs"]]:
            raise PackdError(f"{spec['file']} inputs do not match the manifest")
    return manifest
