"""Will TensorRT's ONNX parser take this graph? A check that needs no GPU and no TensorRT.

Every op must be one the parser of TensorRT 10.3 (JetPack 6) supports, opset 17-20, and these
restrictions of its parser hold: no Resize with antialias, no GridSample, TopK with a constant
K < 3840, constant Reduce axes / Squeeze-Unsqueeze axes / OneHot depth, no DOUBLE tensors,
convolution weights that are initializers (or dequantized initializers), and Q/DQ nodes with
zero point 0 (TensorRT's explicit quantization is symmetric).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# ONNX ops supported by TensorRT 10.x's parser that graphs of this kind may contain.
SUPPORTED_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape
Conv ConvTranspose Cos CumSum DepthToSpace DequantizeLinear Div Einsum Elu Equal Erf Exp Expand Flatten
Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
HardSigmoid HardSwish Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax MatMul Max MaxPool Mean Min Mul Neg Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Unsqueeze Where Xor
""".split())
OPSET_RANGE = (17, 20)
TOPK_MAX = 3840
RESIZE_MODES = {"nearest", "linear", "cubic"}
RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
CONSTANT_INPUT = {  # op -> index of the input that must be a constant
    "ReduceL1": 1, "ReduceL2": 1, "ReduceLogSumExp": 1, "ReduceMax": 1, "ReduceMean": 1, "ReduceMin": 1,
    "ReduceProd": 1, "ReduceSum": 1, "ReduceSumSquare": 1, "Squeeze": 1, "Unsqueeze": 1, "TopK": 1, "OneHot": 1,
}
WEIGHTED = {"Conv": 1, "ConvTranspose": 1}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def check_tensorrt_compat(model: onnx.ModelProto) -> list[str]:
    """Problems that would stop TensorRT's parser (empty list: none found)."""
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} outside {OPSET_RANGE[0]}-{OPSET_RANGE[1]}")
    g = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            value = _attr(n, "value")
            constants[n.output[0]] = numpy_helper.to_array(value) if value is not None else None
    producers = {o: n for n in g.node for o in n.output}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
            problems.append(f"tensor {vi.name} is DOUBLE")
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.DOUBLE:
            problems.append(f"initializer {init.name} is DOUBLE")
    for n in g.node:
        where = f"{n.op_type} node {n.name or n.output[0]}"
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {n.domain!r} needs a plugin")
            continue
        if n.op_type not in SUPPORTED_OPS:
            problems.append(f"{where}: op not supported by TensorRT's ONNX parser")
            continue
        idx = CONSTANT_INPUT.get(n.op_type)
        if idx is not None and len(n.input) > idx and n.input[idx] and n.input[idx] not in constants:
            problems.append(f"{where}: input {idx} ({n.input[idx]}) must be a constant")
        if n.op_type == "TopK" and len(n.input) > 1 and n.input[1] in constants:
            k = int(np.asarray(constants[n.input[1]]).reshape(-1)[0])
            if k >= TOPK_MAX:
                problems.append(f"{where}: K = {k} >= {TOPK_MAX}")
        if n.op_type == "Resize":
            if _attr(n, "antialias", 0):
                problems.append(f"{where}: antialias is not supported")
            if _attr(n, "mode", b"nearest").decode() not in RESIZE_MODES:
                problems.append(f"{where}: mode {_attr(n, 'mode')!r} not supported")
            transform = _attr(n, "coordinate_transformation_mode", b"half_pixel").decode()
            if transform not in RESIZE_TRANSFORMS:
                problems.append(f"{where}: coordinate_transformation_mode {transform!r} not supported")
        if n.op_type in WEIGHTED:
            w = n.input[WEIGHTED[n.op_type]]
            src = producers.get(w)
            dequantized = src is not None and src.op_type == "DequantizeLinear" and src.input[0] in constants
            if w not in constants and not dequantized:
                problems.append(f"{where}: weights must be an initializer")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]:
            zp = constants.get(n.input[2])
            if zp is None or np.any(np.asarray(zp) != 0):
                problems.append(f"{where}: zero point must be 0")
        if n.op_type == "Cast" and _attr(n, "to") == onnx.TensorProto.DOUBLE:
            problems.append(f"{where}: cast to DOUBLE")
    return problems
