"""The convolutional trunk of a graph: the only part whose precision changes (fp16, int8). Conv/ConvTranspose and
the elementwise ops that consume nothing but their outputs (ReLU, clip, residual adds, pooling); everything else
stays FP32. Shared by `packd_export.fp16` and `packd_export.int8`."""

from __future__ import annotations

from collections.abc import Collection

import onnx

TRUNK_SEEDS = frozenset({"Conv", "ConvTranspose"})
TRUNK_FOLLOWERS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                             "BatchNormalization", "MaxPool", "AveragePool", "Add"})


def with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Name every unnamed node `<op>_<index>` (in place), so layers can be listed and chosen by name."""
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    return model


def _is_map_filter(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> bool:
    """A single-channel convolution (weights (1,1,kh,kw)) filters a score map, e.g. the anomaly
    map's Gaussian blur: it belongs to the FP32 scoring island, not to the trunk."""
    w = shapes.get(node.input[1]) if len(node.input) > 1 else None
    return w is not None and len(w) == 4 and w[0] == 1 and w[1] == 1


def trunk_nodes(model: onnx.ModelProto, seeds: Collection[str] | None = None) -> set[str]:
    """Names of the convolutional trunk's nodes: feature convolutions (only those named in `seeds` when
    given) and what consumes nothing but their outputs."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    trunk_outputs: set[str] = set()
    names = set()
    for n in model.graph.node:  # ONNX nodes are topologically sorted
        activations = [i for i in n.input if i and i not in constants]
        seed = n.op_type in TRUNK_SEEDS and not _is_map_filter(n, shapes) and (seeds is None or n.name in seeds)
        if seed or (n.op_type in TRUNK_FOLLOWERS and activations and all(i in trunk_outputs for i in activations)):
            names.add(n.name)
            trunk_outputs.update(n.output)
    return names
