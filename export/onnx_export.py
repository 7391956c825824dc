"""torch -> ONNX with the dynamo exporter: dynamic axes only for batch, shots and prototype count,
constants folded, checked with onnx.checker and strict shape inference."""

from __future__ import annotations

import warnings

import onnx
import torch
from packd_export.graphs import GraphSpec

from packd.errors import PackdError

OPSETS = (17, 18, 19)


def _dynamic_shapes(gspec: GraphSpec, limits: dict[str, int]) -> tuple:
    """torch.export dims for the graph's inputs. Tracing uses 2 as the example size, so a bound is
    at least 2 here; the real bounds go to the manifest and the TensorRT profile."""
    labels = {label for name in gspec.inputs for label in gspec.dynamic.get(name, {}).values()}
    dims = {label: torch.export.Dim(label, min=1, max=max(limits[label], 8)) for label in labels}
    return tuple({axis: dims[label] for axis, label in gspec.dynamic.get(name, {}).items()} for name in gspec.inputs)


def export_onnx(gspec: GraphSpec, example: tuple[torch.Tensor, ...], limits: dict[str, int], opset: int = 18) -> onnx.ModelProto:
    """Export one graph; `limits` bounds each dynamic axis (batch, shots, prototypes)."""
    if opset not in OPSETS:
        raise PackdError(f"opset must be one of {OPSETS} (TensorRT 10.3 parses up to 20), got {opset}")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            gspec.module, example, input_names=gspec.inputs, output_names=gspec.outputs,
            dynamic_shapes=_dynamic_shapes(gspec, limits), opset_version=opset, dynamo=True, optimize=True,
            verbose=False,
        )
    model = program.model_proto
    model.producer_name = "packd"
    check_onnx(model)
    return model


def check_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker (full) and strict shape inference; returns the shape-inferred model."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise PackdError(f"ONNX check failed: {e}") from None
