"""torch -> ONNX with the dynamo exporter: dynamic axes only for batch, shots and prototype count,
constants folded, checked with onnx.checker and strict shape inference."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import onnx
import torch
from torch import nn

from packd.errors import PackdError
from packd_export.graphs import GraphSpec
from packd_runtime.manifest import Graph, Limits
from packd_runtime.onnxruntime.backend import OnnxRuntimeBackend

OPSETS = (17, 18, 19)


def _dynamic_shapes(gspec: GraphSpec, limits: Limits) -> tuple:
    """torch.export dims for the graph's inputs, shaped like its forward's arguments (the query graph
    takes its prototypes as *args). The traced bound is at least 8, above the example's sizes (2
    images, 6 prototypes; a bound below them fails to trace); the real bounds go to the manifest and
    the TensorRT profile."""
    labels = {label for name in gspec.inputs for label in gspec.dynamic.get(name, {}).values()}
    dims = {label: torch.export.Dim(label, min=1, max=max(limits.most(label), 8)) for label in labels}
    shapes = [{axis: dims[label] for axis, label in gspec.dynamic.get(name, {}).items()} for name in gspec.inputs]
    params = inspect.signature(gspec.module.forward).parameters.values()
    if len(shapes) > 1 and any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return (shapes[0], tuple(shapes[1:]))
    return tuple(shapes)


class ClampReLU6(nn.Module):
    """ReLU6 as `clamp(x, 0, 6)`: the same values, traced as one aten.clamp instead of aten.hardtanh."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 6.0)


@contextmanager
def relu6_as_clamp(module: nn.Module) -> Iterator[None]:
    """While exporting, every nn.ReLU6 (EfficientNet-lite's activation) is a `ClampReLU6`: the exporter decomposes
    hardtanh through symbolic-shape reference code, about 0.1 s per layer with dynamic axes, which was two thirds of
    a bundle's export time on 2 cores (60 s -> 22 s for the demo's PACKD bundle). Put back afterwards."""
    swapped = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if type(child) is nn.ReLU6]
    for parent, name, _ in swapped:
        setattr(parent, name, ClampReLU6())
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def export_onnx(gspec: GraphSpec, example: tuple[torch.Tensor, ...], limits: Limits,
                opset: int = 18) -> onnx.ModelProto:
    """Export one graph; `limits` bounds each dynamic axis (batch, shots, prototypes)."""
    if opset not in OPSETS:
        raise PackdError(f"opset must be one of {OPSETS} (TensorRT 10.3 parses up to 20), got {opset}")
    with warnings.catch_warnings(), torch.no_grad(), relu6_as_clamp(gspec.module):
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


def _dtype(t: onnx.TypeProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type).name


def _io_entries(values) -> list[dict[str, Any]]:
    return [{"name": v.name, "dtype": _dtype(v.type),
             "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]


def graph_io(model: onnx.ModelProto, file: str = "") -> Graph:
    """A graph's file and its inputs and outputs as the manifest describes them: name, dtype and shape (axis names
    or sizes)."""
    return Graph.from_io(file, _io_entries(model.graph.input), _io_entries(model.graph.output))


def in_memory_backend(graphs: dict[str, onnx.ModelProto]) -> OnnxRuntimeBackend:
    """ONNX Runtime on the CPU over graphs not written yet (int8's calibration and validation), int8 graphs in their
    own arithmetic: what the quantization costs, not what one CPU's int8 kernels add to it."""
    return OnnxRuntimeBackend({g: m.SerializeToString() for g, m in graphs.items()},
                              {g: graph_io(m) for g, m in graphs.items()}, device=None, exact_qdq=True)
