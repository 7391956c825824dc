"""Export: bundles for every model kind, ONNX Runtime parity, precision, checks, TensorRT names."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import FRAME

from packd.errors import PackdError
from packd.models.checkpoint import read_config
from packd.models.loading import load_scorer
from packd_export.bundle import export_bundle
from packd_export.check import check_bundle
from packd_export.cli import main as export_main
from packd_export.fp16 import to_fp16
from packd_export.graphs import QueryGraph, SupportGraph
from packd_export.int8 import Int8Settings
from packd_export.normal_frames import normal_frames
from packd_export.trt_compat import check_tensorrt_compat
from packd_export.trunk import trunk_nodes
from packd_runtime import Detector
from packd_runtime.tensorrt.build import engine_name, profile_shapes, why_no_tensorrt


def _frames(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *FRAME, 3), dtype=np.uint8)


def _torch_graphs(ckpt):
    scorer = load_scorer(ckpt)[0]
    return QueryGraph(scorer).eval(), SupportGraph(scorer).eval()


@pytest.mark.parametrize("kind", ["rd", "memkd", "packd"])
def test_bundle_layout_and_check(bundles, kind):
    typed, path = bundles[kind]
    manifest = json.loads((path / "manifest.json").read_text())  # the format as written
    assert typed.to_dict() == manifest  # one serialization each way
    files = {"query.onnx"} | ({"support.onnx"} if kind == "packd" else set())
    assert set(manifest["files"]) == files and set(p.name for p in path.iterdir()) == files | {"manifest.json"}
    assert manifest["kind"] == kind and manifest["format"] == 3 and manifest["precision"] == "fp32"
    assert manifest["input"] == {"dtype": "uint8", "layout": "NHWC", "color": "RGB", "range": [0, 255],
                                 "height": FRAME[0], "width": FRAME[1]}
    q = manifest["graphs"]["query"]
    assert q["inputs"][0] == {"name": "images", "dtype": "uint8", "shape": ["batch", *FRAME, 3]}
    assert q["outputs"] == [{"name": "scores", "dtype": "float32", "shape": ["batch"]},
                            {"name": "maps", "dtype": "float32", "shape": ["batch", 64, 64]}]
    assert manifest["dynamic"]["batch"] == [1, 4] and manifest["threshold"] > 0
    normal = manifest["normal_scores"]  # 8 training images of grid (and of disc for packd, 2 of each supports)
    assert normal["images"] == (12 if kind == "packd" else 8) and 0 < normal["min"] <= normal["max"]
    assert manifest["checkpoint"]["name"] == kind and "path" not in manifest["checkpoint"]
    assert set(manifest["versions"]) >= {"packd", "torch", "onnx"} and 17 <= manifest["opset"] <= 19
    if kind == "packd":
        assert manifest["dynamic"]["prototypes"] == [1, 3 * 2 * 4] and manifest["prototypes"]["per_shot"] == 8
        assert [i["shape"] for i in q["inputs"][1:]] == [["prototypes", c] for c in (24, 40, 112)]
    for spec in manifest["graphs"].values():  # dynamic axes only for batch, shots and prototype count
        for io in spec["inputs"]:
            assert all(isinstance(d, int) for d in io["shape"][1:])
    assert check_bundle(path).kind == kind
    for f in manifest["files"]:
        assert check_tensorrt_compat(onnx.load(path / f)) == []


@pytest.mark.parametrize("kind", ["rd", "memkd"])
def test_query_parity_with_pytorch(checkpoints, bundles, kind):
    """RD and MemKD export their own student (ReLU stage outputs, BatchNorm) unchanged, and score as in PyTorch."""
    settings = bundles[kind][0].settings
    assert (settings["stage_outputs"], settings["norm"], settings["plan"]["linear"]) == ("relu", "batch", (False,) * 3)
    query, _ = _torch_graphs(checkpoints[kind])
    sess = ort.InferenceSession(str(bundles[kind][1] / "query.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # other batch sizes than at export
        x = _frames(batch, batch)
        scores, maps = sess.run(None, {"images": x})
        with torch.no_grad():
            ts, tm = query(torch.from_numpy(x))
        tol = 1e-4 * float(tm.max() - tm.min())
        assert scores.shape == (batch,) and maps.shape == (batch, 64, 64) and maps.dtype == np.float32
        assert np.abs(maps - tm.numpy()).max() <= tol and np.abs(scores - ts.numpy()).max() <= tol


def test_packd_parity_support_and_query(checkpoints, bundles):
    """Parity of the whole scoring module: stage weights, a border, the prototype score, a GroupNorm student."""
    query, support = _torch_graphs(checkpoints["packd"])
    path = bundles["packd"][1]
    settings = bundles["packd"][0].settings
    assert (settings["stage_weights"], settings["border"], settings["prototype_score"], settings["norm"]) == (
        "0.5,1,2", 4, 1.0, "group")
    assert settings["stage_outputs"] == "linear" and settings["plan"]["linear"] == (True,) * 3
    sup = ort.InferenceSession(str(path / "support.onnx"), providers=["CPUExecutionProvider"])
    qry = ort.InferenceSession(str(path / "query.onnx"), providers=["CPUExecutionProvider"])
    for shots in (1, 3):  # prototype counts 8 and 24, neither the one used at export
        s = _frames(shots, 10 + shots)
        protos = sup.run(None, {"images": s})
        with torch.no_grad():
            tp = support(torch.from_numpy(s))
        assert [p.shape for p in protos] == [(shots * 8, c) for c in (24, 40, 112)]
        for a, b in zip(protos, tp):
            assert np.abs(a - b.numpy()).max() <= 1e-4 * max(1.0, float(b.abs().max()))
        x = _frames(2, 20)
        scores, maps = qry.run(None, {"images": x, **{f"prototypes_{i + 1}": p for i, p in enumerate(protos)}})
        with torch.no_grad():
            ts, tm = query(torch.from_numpy(x), *tp)
        tol = 1e-4 * float(tm.max() - tm.min())
        assert np.abs(maps - tm.numpy()).max() <= tol and np.abs(scores - ts.numpy()).max() <= tol


def test_fp16_keeps_distances_fp32(bundles):
    path = bundles["packd"][1]
    fp32 = onnx.load(path / "query.onnx")
    half = to_fp16(fp32)
    assert check_tensorrt_compat(half) == []
    types = {i.name: i.data_type for i in half.graph.initializer}
    convs = [n for n in half.graph.node if n.op_type == "Conv"]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [onnx.TensorProto.FLOAT] * 2
    blur = [n for n in half.graph.node if n.op_type == "Conv" and "anomaly_map" in n.input[1]]
    assert len(blur) == 2 and all(types[n.input[1]] == onnx.TensorProto.FLOAT for n in blur)  # blur stays FP32
    convs = [n for n in convs if n not in blur]
    assert convs and all(types[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
    trunk = trunk_nodes(fp32)
    islands = [n for n in fp32.graph.node if n.op_type in ("ArgMax", "ReduceMax", "Resize", "MatMul", "Div")]
    assert islands and not any(n.name in trunk for n in islands)
    sess = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    assert {o.name: o.type for o in sess.get_outputs()} == {"scores": "tensor(float)", "maps": "tensor(float)"}


@pytest.mark.slow
def test_int8_bundle_is_qdq_with_zero_points_and_its_own_threshold(checkpoints, bundles, tmp_path):
    manifest = export_bundle(checkpoints["packd"], tmp_path / "b8", precision="int8", max_batch=2, max_shots=2,
                             frame_size=FRAME, engines="never", int8=Int8Settings(fallback="none"))
    assert manifest.precision == "int8"
    for g in ("support", "query"):
        m = onnx.load(tmp_path / "b8" / f"{g}.onnx")
        ops = [n.op_type for n in m.graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        assert check_tensorrt_compat(m) == []  # includes: every zero point is 0
        producers = {o: n.op_type for n in m.graph.node for o in n.output}
        for n in m.graph.node:  # the map's blur is not quantized
            if n.op_type == "Conv" and "anomaly_map" in n.input[1]:
                assert producers.get(n.input[0]) != "DequantizeLinear"
    qry = ort.InferenceSession(str(tmp_path / "b8" / "query.onnx"), providers=["CPUExecutionProvider"])
    sup = ort.InferenceSession(str(tmp_path / "b8" / "support.onnx"), providers=["CPUExecutionProvider"])
    protos = sup.run(None, {"images": _frames(2, 1)})
    feeds = {"images": _frames(2, 2), **{f"prototypes_{i + 1}": p for i, p in enumerate(protos)}}
    scores, maps = qry.run(None, feeds)
    assert np.isfinite(maps).all() and maps.dtype == np.float32 and scores.shape == (2,)
    # the default threshold comes from the int8 graphs themselves: mean + 3 std of their normal scores
    normal = []
    with Detector.open(tmp_path / "b8", backend="onnxruntime") as det:
        for frames in normal_frames(read_config(checkpoints["packd"]), FRAME, 32).values():
            det.prototypes(frames[:2])
            normal.append(det.detect(frames[2:]).scores)
    normal = np.concatenate(normal)
    assert manifest.threshold == pytest.approx(normal.mean() + 3 * normal.std(), rel=1e-5)
    assert manifest.threshold != bundles["packd"][0].threshold


def _cli(args):
    with pytest.raises(SystemExit) as e:
        export_main(args)
    return e.value.code


@pytest.mark.slow
def test_fp16_bundle_through_cli(checkpoints, tmp_path, capsys):
    args = [str(checkpoints["rd"]), "--out", str(tmp_path / "b16"), "--precision", "fp16", "--max-batch", "2",
            "--border", "6", "--stage-weights", "0,1,1"]
    assert _cli(args) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "b16" / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["engines"] == []
    assert (manifest["settings"]["border"], manifest["settings"]["stage_weights"]) == (6, "0,1,1")
    assert "no TensorRT engine built" in out and "packd-export build" in out
    assert _cli(["check", str(tmp_path / "b16")]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.slow
def test_export_over_existing_bundle_is_atomic(checkpoints, bundles, tmp_path, monkeypatch):
    import packd_export.bundle as bundle_mod

    target = tmp_path / "b"
    export_bundle(checkpoints["rd"], target, max_batch=2, engines="never")
    before = (target / "manifest.json").read_text()
    monkeypatch.setattr(bundle_mod, "check_tensorrt_compat", lambda m: ["Boom node: op not supported"])
    with pytest.raises(PackdError, match="would not parse in TensorRT"):
        export_bundle(checkpoints["rd"], target, max_batch=2, engines="never")
    assert (target / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_corrupted_altered_or_unknown_bundles_are_refused(bundles, tmp_path):
    import shutil

    src = bundles["rd"][1]
    for case in ("altered", "missing", "version", "garbage"):
        b = tmp_path / case
        shutil.copytree(src, b)
        if case == "altered":
            data = bytearray((b / "query.onnx").read_bytes())
            data[len(data) // 2] ^= 0xFF
            (b / "query.onnx").write_bytes(bytes(data))
            match = "altered or corrupted"
        elif case == "missing":
            (b / "query.onnx").unlink()
            match = "bundle file missing"
        elif case == "version":
            m = json.loads((b / "manifest.json").read_text())
            m["format"] = 99
            (b / "manifest.json").write_text(json.dumps(m))
            match = "bundle format 99"
        else:
            (b / "manifest.json").write_text("{")
            match = "corrupted"
        with pytest.raises(PackdError, match=match):
            check_bundle(b)
    assert _cli(["check", str(tmp_path / "version")]) == 2


def test_bad_export_arguments(checkpoints, tmp_path):
    with pytest.raises(PackdError, match="--precision"):
        export_bundle(checkpoints["rd"], tmp_path / "x", precision="fp8")
    with pytest.raises(PackdError, match="opset"):
        export_bundle(checkpoints["rd"], tmp_path / "x", opset=13)
    with pytest.raises(PackdError, match="not a packd checkpoint"):
        export_bundle(tmp_path, tmp_path / "x")
    if why_no_tensorrt():
        with pytest.raises(PackdError, match="engines were required"):
            export_bundle(checkpoints["rd"], tmp_path / "x", engines="require")
    assert _cli([str(checkpoints["rd"]), "--out", str(tmp_path / "x"), "--frame-size", "big"]) == 2
    assert not (tmp_path / "x").exists()


def test_tensorrt_compat_catches_forbidden_patterns():
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Resize", ["x", "", "s"], ["r"], mode="linear", antialias=1),
        helper.make_node("GridSample", ["x", "g"], ["gs"]),
        helper.make_node("ReduceSum", ["x", "axes_dyn"], ["rs"]),
        helper.make_node("TopK", ["x", "k"], ["tv", "ti"]),
        helper.make_node("Conv", ["x", "w_dyn"], ["c"]),
        helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"]),
        helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
        helper.make_node("Identity", ["x"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s"),
             numpy_helper.from_array(np.array([4000], np.int64), "k"),
             numpy_helper.from_array(np.array(0.1, np.float32), "sc"),
             numpy_helper.from_array(np.array(3, np.int8), "zp")]
    extra = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("g", "w_dyn")]
    extra.append(helper.make_tensor_value_info("axes_dyn", TensorProto.INT64, [1]))
    g = helper.make_graph(nodes, "g", [x, *extra], [y], inits)
    problems = " | ".join(check_tensorrt_compat(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])))
    for expected in ("opset 13", "antialias", "GridSample", "input 1 (axes_dyn) must be a constant", "K = 4000",
                     "weights must be an initializer", "zero point must be 0", "cast to DOUBLE"):
        assert expected in problems, expected


def test_engine_names_and_profiles(bundles):
    manifest = bundles["packd"][0]
    assert engine_name("query", "10.3.0.26", "87") == "query.trt10.3.0.26.sm87.engine"
    shapes = profile_shapes(manifest, "query")
    assert shapes["images"] == ((1, *FRAME, 3), (4, *FRAME, 3), (4, *FRAME, 3))
    assert shapes["prototypes_1"] == ((1, 24), (24, 24), (24, 24))
    assert profile_shapes(manifest, "support")["images"] == ((1, *FRAME, 3), (3, *FRAME, 3), (3, *FRAME, 3))


def test_relu6_is_exported_as_clamp_and_put_back(effnet_teacher):
    """The export-time swap that keeps the exporter off hardtanh's slow decomposition: the same values, and the
    teacher has its own ReLU6 modules again afterwards."""
    from torch import nn

    from packd_export.onnx_export import ClampReLU6, relu6_as_clamp

    before = [m for m in effnet_teacher.modules() if type(m) is nn.ReLU6]
    x = torch.randn(2, 3, 64, 64) * 50
    with torch.no_grad():
        expected = effnet_teacher(x)
        with relu6_as_clamp(effnet_teacher):
            assert not any(type(m) is nn.ReLU6 for m in effnet_teacher.modules())
            assert sum(isinstance(m, ClampReLU6) for m in effnet_teacher.modules()) == len(before) > 10
            swapped = effnet_teacher(x)
    assert all(torch.equal(a, b) for a, b in zip(expected, swapped))
    assert [m for m in effnet_teacher.modules() if type(m) is nn.ReLU6] == before
    y = torch.tensor([-1e30, -1.0, 0.0, 3.5, 6.0, 6.5, 1e30, float("inf")])
    assert torch.equal(ClampReLU6()(y), nn.ReLU6()(y))
