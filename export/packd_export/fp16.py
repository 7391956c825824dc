"""fp16 bundles: a mixed-precision graph for a strongly typed network (TensorRT 11 has no weak typing): the
convolutional trunk (`packd_export.trunk`) in FP16, everything else FP32 (preprocessing, prototype extraction and
integration, distances, the anomaly map, its blur and the image score). A small graph pass of our own (weights to
FP16, a Cast at every island border): onnxconverter-common's converter mistyped graph outputs produced by FP32
islands. It also turns int8's fallback layers to FP16 (`seeds`).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from packd_export.trunk import trunk_nodes, with_node_names


def to_fp16(model: onnx.ModelProto, seeds: Collection[str] | None = None) -> onnx.ModelProto:
    """FP16 trunk (only the convolutions in `seeds` and what follows them, when given), FP32 islands, FP32
    graph inputs and outputs; a Cast at every border."""
    model = with_node_names(onnx.ModelProto.FromString(model.SerializeToString()))
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
