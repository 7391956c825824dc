"""Small real bundles made without torch, for the runtime's own tests: ONNX graphs built with `onnx.helper` that keep
the bundle contract (uint8 NHWC RGB frames in; prototypes; scores and maps out), a manifest written through the
runtime's own `Manifest` type, every file hashed. ONNX Runtime runs them for real.

The toy model: each frame is average-pooled into `POOL` x `POOL`-pixel patches whose RGB means are its features
(C = 3); the support graph returns a frame's patch features as its prototypes (one per patch); the query graph's map
is each patch's squared distance to its nearest prototype and its score the map's max. A per-category toy keeps
fixed prototypes inside its query graph (a mid-grey patch); a per-position toy's query graph picks each tile's
memory by `tile_index`. Anomalies are patches unlike the normal ones, as for the real kinds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from packd_runtime.atomic import write_json
from packd_runtime.bundle_format import MANIFEST, graph_file
from packd_runtime.files import sha256
from packd_runtime.manifest import Graph, Limits, Manifest, NormalScores, PrototypeSpec, Tensor, TilingSpec
from packd_runtime.onnx_scan import graph_inputs_outputs
from packd_runtime.tiling import Tiling

POOL = 4  # pixels per patch side
OPSET = 18
IR_VERSION = 9  # what ONNX Runtime 1.23 (the last for Python 3.10, so JetPack 6) reads


def _features(frames: str, nodes: list, inits: list) -> str:
    """(B, H, W, 3) uint8 -> (B, h*w, 3) float32 patch means; returns the output's name."""
    inits.append(numpy_helper.from_array(np.array([0, -1, 3], np.int64), "feat_shape"))
    nodes += [helper.make_node("Cast", [frames], ["f32"], to=TensorProto.FLOAT),
              helper.make_node("Transpose", ["f32"], ["nchw"], perm=[0, 3, 1, 2]),
              helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
              helper.make_node("Transpose", ["pooled"], ["nhwc"], perm=[0, 2, 3, 1]),
              helper.make_node("Reshape", ["nhwc", "feat_shape"], ["features"])]
    return "features"


def support_graph(side: tuple[int, int]) -> onnx.ModelProto:
    """images uint8 (shots, H, W, 3) -> prototypes_1 float32 (prototypes, 3): every patch of every shot."""
    nodes, inits = [], []
    feats = _features("images", nodes, inits)
    inits.append(numpy_helper.from_array(np.array([-1, 3], np.int64), "rows"))
    nodes.append(helper.make_node("Reshape", [feats, "rows"], ["prototypes_1"]))
    graph = helper.make_graph(nodes, "support", [helper.make_tensor_value_info(
        "images", TensorProto.UINT8, ["shots", *side, 3])], [helper.make_tensor_value_info(
            "prototypes_1", TensorProto.FLOAT, ["prototypes", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def query_graph(side: tuple[int, int], few_shot: bool, positions: int = 0) -> onnx.ModelProto:
    """images uint8 (batch, H, W, 3) [+ prototypes_1 (prototypes, 3) or (positions, prototypes, 3) + tile_index
    int64 (batch,)] -> scores (batch,), maps (batch, S, S) with S = H / POOL (square frames)."""
    s = side[0] // POOL
    nodes, inits = [], []
    feats = _features("images", nodes, inits)  # (B, s*s, 3)
    inputs = [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", *side, 3])]
    if not few_shot:
        inits.append(numpy_helper.from_array(np.full((1, 3), 128.0, np.float32), "prototypes_1"))
    elif positions:
        inputs += [helper.make_tensor_value_info("prototypes_1", TensorProto.FLOAT, [positions, "prototypes", 3]),
                   helper.make_tensor_value_info("tile_index", TensorProto.INT64, ["batch"])]
    else:
        inputs.append(helper.make_tensor_value_info("prototypes_1", TensorProto.FLOAT, ["prototypes", 3]))
    protos = "prototypes_1"
    if positions:
        nodes.append(helper.make_node("Gather", ["prototypes_1", "tile_index"], ["own"], axis=0))  # (B, n, 3)
        protos = "own"
    perm = [0, 2, 1] if positions else [1, 0]
    inits += [numpy_helper.from_array(np.array([-1], np.int64), "last"),
              numpy_helper.from_array(np.array(-2.0, np.float32), "minus2"),
              numpy_helper.from_array(np.array([-1, s, s], np.int64), "map_shape"),
              numpy_helper.from_array(np.array([1, 2], np.int64), "map_axes")]
    nodes += [helper.make_node("Mul", [feats, feats], ["f2"]),
              helper.make_node("ReduceSum", ["f2", "last"], ["fsq"], keepdims=1),  # (B, s*s, 1)
              helper.make_node("Mul", [protos, protos], ["p2"]),
              helper.make_node("ReduceSum", ["p2", "last"], ["psq_col"], keepdims=1),
              helper.make_node("Transpose", ["psq_col"], ["psq"], perm=perm),  # (1, n) or (B, 1, n)
              helper.make_node("Transpose", [protos], ["pt"], perm=perm),  # (3, n) or (B, 3, n)
              helper.make_node("MatMul", [feats, "pt"], ["dot"]),  # (B, s*s, n)
              helper.make_node("Mul", ["dot", "minus2"], ["cross"]),
              helper.make_node("Add", ["fsq", "cross"], ["partial"]),
              helper.make_node("Add", ["partial", "psq"], ["dist"]),
              helper.make_node("ReduceMin", ["dist", "last"], ["nearest"], keepdims=0),  # (B, s*s)
              helper.make_node("Reshape", ["nearest", "map_shape"], ["maps"]),
              helper.make_node("ReduceMax", ["maps", "map_axes"], ["scores"], keepdims=0)]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", s, s])]
    graph = helper.make_graph(nodes, "query", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _graph(folder: Path, name: str, model: onnx.ModelProto) -> Graph:
    onnx.save(model, folder / graph_file(name))
    inputs, outputs = graph_inputs_outputs((folder / graph_file(name)).read_bytes())
    return Graph(graph_file(name), tuple(Tensor(n, d, tuple(s)) for n, d, s in inputs),
                 tuple(Tensor(n, d, tuple(s)) for n, d, s in outputs))


def write_toy_bundle(folder: Path, *, few_shot: bool = True, side: int = 32, frame_hw: tuple[int, int] | None = None,
                     tile: int | None = None, overlap: int = 0, memory: str = "shared", max_batch: int = 4,
                     max_shots: int = 3, max_count: int = 0, threshold: float = 500.0) -> Manifest:
    """A toy bundle in `folder`: graphs taking `side`-px frames (or `tile`-px tiles of `frame_hw` frames), its
    manifest written through `Manifest`; returns it."""
    folder.mkdir(parents=True)
    tiling = None
    if tile is not None:
        geometry = Tiling(frame_hw, tile=tile, overlap=overlap, map_side=tile // POOL)
        tiling = TilingSpec(geometry, memory if few_shot else None)
        side = tile
    positions = tiling.tiling.count if tiling is not None and tiling.per_position else 0
    patches = (side // POOL) ** 2
    graphs = {"query": _graph(folder, "query", query_graph((side, side), few_shot, positions))}
    if few_shot:
        graphs["support"] = _graph(folder, "support", support_graph((side, side)))
    limits = Limits(max_batch, max_shots, max_shots * patches) if few_shot else Limits(max_batch)
    manifest = Manifest(
        kind="toy", image_size=side // POOL, frame_hw=tuple(frame_hw or (side, side)), mean=(0.5,) * 3,
        std=(0.5,) * 3, precision="fp32", opset=OPSET, graphs=graphs, limits=limits, threshold=threshold,
        normal_scores=NormalScores(8, threshold / 2, threshold), files={g.file: sha256(folder / g.file)
                                                                        for g in graphs.values()},
        teacher={"name": "toy"}, settings={}, versions={"packd": "test"}, checkpoint={"name": "toy"},
        created="2026-01-01T00:00:00+00:00",
        prototypes=PrototypeSpec(patches, (3,), max_count) if few_shot else None, tiling=tiling).checked()
    write_json(folder / MANIFEST, manifest.to_dict())
    return manifest


def toy_maps(frames: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """What the toy query graph computes, in numpy: (B, s, s) squared distance of each patch to its nearest
    prototype (n, 3)."""
    b, h, w, _ = frames.shape
    feats = frames.astype(np.float32).reshape(b, h // POOL, POOL, w // POOL, POOL, 3).mean(axis=(2, 4))
    d = ((feats[..., None, :] - prototypes[None, None, None]) ** 2).sum(-1)
    return d.min(-1)


def frames(n: int, hw: tuple[int, int] = (32, 32), seed: int = 0, low: int = 100, high: int = 156) -> np.ndarray:
    """n random uint8 RGB frames; the default mid-grey range is the toys' normal product, 0-256 anything."""
    return np.random.default_rng(seed).integers(low, high, (n, *hw, 3), dtype=np.uint8)
