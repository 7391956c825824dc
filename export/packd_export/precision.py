"""Precision lives in the ONNX (TensorRT 11 has no weak typing): fp16 = a mixed-precision graph for
a strongly typed network, int8 = explicit Q/DQ (zero point 0) from post-training quantization.

Only the heavy convolutional trunk changes precision: Conv/ConvTranspose and the elementwise ops
that consume nothing but their outputs (ReLU, clip, residual adds, pooling). Everything else stays
FP32: preprocessing, prototype extraction and integration (cosines, argmax, gather), distances,
the anomaly map, its blur and the image score. fp16 is a small graph pass of our own (weights to
FP16, a Cast at every island border): onnxconverter-common's converter mistyped graph outputs
produced by FP32 islands. It also turns int8's fallback layers to FP16 (`seeds`). int8 itself is
`packd_export.int8`.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TRUNK_SEEDS = frozenset({"Conv", "ConvTranspose"})
TRUNK_FOLLOWERS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
                             "BatchNormalization", "MaxPool", "AveragePool", "Add"})


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
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


def to_fp16(model: onnx.ModelProto, seeds: Collection[str] | None = None) -> onnx.ModelProto:
    """FP16 trunk (only the convolutions in `seeds` and what follows them, when given), FP32 islands, FP32
    graph inputs and outputs; a Cast at every border."""
    model = _named(onnx.ModelProto.FromString(model.SerializeToString()))
    g = model.graph
    trunk = trunk_nodes(model, seeds)
    trunk_outputs = {o for n in g.node if n.name in trunk for o in n.output}
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
               if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    graph_outputs = {o.name for o in g.output}
    new_inits, casts_in, nodes = {}, {}, []
    for n in g.node:
        if n.name in trunk:
            for i, name in enumerate(n.input):
                if not name:
                    continue
                if name in consts:
                    if consts[name].dtype == np.float32:
                        half = f"{name}__fp16"
                        new_inits.setdefault(half, numpy_helper.from_array(consts[name].astype(np.float16), half))
                        n.input[i] = half
                elif name not in trunk_outputs:
                    half = f"{name}__to_fp16"
                    if half not in casts_in:
                        casts_in[half] = helper.make_node("Cast", [name], [half], name=f"{half}_cast",
                                                          to=TensorProto.FLOAT16)
                        nodes.append(casts_in[half])
                    n.input[i] = half
        nodes.append(n)
    # trunk outputs read by FP32 islands or returned by the graph go back to FP32
    readers = {i for n in g.node if n.name not in trunk for i in n.input} | graph_outputs
    renames = {}
    final = []
    for n in nodes:
        if n.name in trunk:
            for j, out in enumerate(n.output):
                if out in readers:
                    half = f"{out}__fp16"
                    n.output[j] = half
                    renames[out] = half
            final.append(n)
            for out, half in list(renames.items()):
                if half in n.output:
                    final.append(helper.make_node("Cast", [half], [out], name=f"{out}_to_fp32", to=TensorProto.FLOAT))
        else:
            final.append(n)
    for n in final:  # trunk nodes read the FP16 name of trunk tensors that were renamed
        if n.name in trunk:
            for i, name in enumerate(n.input):
                if name in renames:
                    n.input[i] = renames[name]
    del g.node[:]
    g.node.extend(final)
    used = {i for n in final for i in n.input}
    kept = [i for i in g.initializer if i.name in used] + [i for i in new_inits.values() if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
