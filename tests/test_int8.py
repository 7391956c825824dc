"""int8: Q/DQ layout, the FP16 fallbacks of the sensitivity analysis, its report, the CLI."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FRAME

from packd.data.synth import paint_defects
from packd.errors import PackdError
from packd.models.checkpoint import read_config
from packd_export.bundle import export_bundle
from packd_export.cli import main as export_main
from packd_export.int8 import FALLBACK_STEPS, Int8Settings, int8_layers, mixed_int8, quantize
from packd_export.int8_data import bundle_feeds, validation_sets
from packd_export.normal_frames import normal_frames
from packd_export.trt_compat import check_tensorrt_compat
from packd_export.trunk import trunk_nodes


def _inputs(checkpoints, bundles, kind):
    """A tiny model's fp32 graphs, its calibration feeds (prototypes from the fp32 support graph) and
    held-out validation sets, as the exporter makes them."""
    path = bundles[kind][1]
    few_shot = (path / "support.onnx").exists()
    graphs = {g: onnx.load(path / f"{g}.onnx") for g in (("support", "query") if few_shot else ("query",))}
    frames = normal_frames(read_config(checkpoints[kind]), FRAME, 32)
    return graphs, bundle_feeds(path, frames), validation_sets(frames, few_shot, 0)


@pytest.fixture(scope="module")
def packd_graphs(checkpoints, bundles):
    return _inputs(checkpoints, bundles, "packd")


def _run(graphs, frames, supports):
    """Scores and maps with Q/DQ computed as written (export's validation does the same): the quantization's error,
    not one CPU's int8 kernels' (ONNX Runtime's fused u8 x s8 kernels saturate without VNNI)."""
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sup = ort.InferenceSession(graphs["support"].SerializeToString(), opts, providers=["CPUExecutionProvider"])
    qry = ort.InferenceSession(graphs["query"].SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sup.get_outputs()]
    return qry.run(["scores", "maps"], {"images": frames, **dict(zip(names, sup.run(names, {"images": supports})))})


def test_qdq_sits_on_convolution_inputs_only(packd_graphs, tmp_path):
    graphs, feeds, _ = packd_graphs
    fp32 = graphs["query"]
    q = quantize(fp32, feeds["query"], Int8Settings(), tmp_path / "ranges.json")
    producer = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    convs = [n for n in q.graph.node if n.name in set(int8_layers(fp32))]
    assert len(convs) == len(int8_layers(fp32)) > 10
    for n in convs:  # activation and weights dequantized; weights per output channel, activations per tensor
        act, w = producer[n.input[0]], producer[n.input[1]]
        assert act.op_type == w.op_type == "DequantizeLinear"
        out_channels = inits[w.input[0]].shape[1 if n.op_type == "ConvTranspose" else 0]
        assert inits[w.input[1]].shape == (out_channels,) and inits[act.input[1]].shape == ()
        assert inits[w.input[0]].dtype == np.int8 and not inits[w.input[2]].any() and not inits[act.input[2]].any()
    # nothing that is not a convolution reads a dequantized tensor: the features the FP32 islands compare,
    # the map and the scores are never rounded to 8 bits
    trunk = trunk_nodes(fp32)
    for n in q.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "QuantizeLinear", "DequantizeLinear") and n.name not in trunk:
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in n.input), n.name
    assert check_tensorrt_compat(q) == []
    # the cached ranges are reused: the same graph again without calibration data
    again = quantize(fp32, [{"unused": np.zeros(1)}], Int8Settings(), tmp_path / "ranges.json")
    assert again.SerializeToString() == q.SerializeToString()


def test_fixed_fallback_keeps_the_most_sensitive_layers_in_fp16(packd_graphs):
    graphs, feeds, validation = packd_graphs
    mixed, report = mixed_int8(graphs, feeds, validation, Int8Settings(fallback="3"))
    rows = [r for g in ("support", "query") for r in report["graphs"][g]]
    assert sorted(r["node"] for r in report["graphs"]["query"]) == sorted(int8_layers(graphs["query"]))
    ranks = sorted(r["sensitivity_rank"] for r in rows)
    assert ranks == list(range(1, len(rows) + 1))  # every layer was measured alone
    fp16 = [r for r in rows if r["precision"] == "fp16"]
    assert sorted(r["sensitivity_rank"] for r in fp16) == [1, 2, 3] and all("rank" in r["why"] for r in fp16)
    worst = min(rows, key=lambda r: r["sensitivity_rank"])["alone"]
    assert all((1 - r["alone"]["spearman"]) + r["alone"]["map_mean_error"]
               <= (1 - worst["spearman"]) + worst["map_mean_error"] + 1e-12 for r in rows)
    for g, model in mixed.items():  # FP16 weights, no Q/DQ for the fallbacks; Q/DQ for every other layer
        types = {i.name: i.data_type for i in model.graph.initializer}
        producer = {o: n.op_type for n in model.graph.node for o in n.output}
        by_name = {n.name: n for n in model.graph.node}
        for r in report["graphs"][g]:
            node = by_name[r["node"]]
            if r["precision"] == "fp16":
                assert types[node.input[1]] == onnx.TensorProto.FLOAT16
            else:
                assert producer[node.input[1]] == "DequantizeLinear"
        assert check_tensorrt_compat(model) == []
        assert [o.type.tensor_type.elem_type for o in model.graph.output][0] == onnx.TensorProto.FLOAT
    supports, queries = validation.sets[0]
    s32, m32 = _run(graphs, queries, supports)
    s8, m8 = _run(mixed, queries, supports)
    # mean map error / range: 0.012 in Q/DQ arithmetic. Not a dependency moved it to 0.064 (bisected: onnxruntime
    # 1.27-1.32, onnx 1.22-1.23, onnxscript 0.6-0.7, onnx-ir 1.0-1.1, timm, numpy all give 0.0644): ONNX Runtime's
    # fused int8 kernels on a CPU without VNNI (AVX2 EPYC) do, and _run no longer measures them
    assert m8.shape == m32.shape and np.abs(m8 - m32).mean() < 0.05 * np.ptp(m32)
    assert report["result"]["fp16_layers"] == 3 and len(report["steps"]) == 1


def test_auto_fallback_stops_at_the_targets_or_the_cap(checkpoints, bundles, packd_graphs):
    graphs, feeds, validation = packd_graphs
    easy = Int8Settings(min_spearman=-1.0, max_map_error=1.0)
    _, report = mixed_int8(graphs, feeds, validation, easy)
    assert [s["fp16_layers"] for s in report["steps"]] == [0] and report["result"]["meets_targets"]
    assert all(r["alone"] is None for rows in report["graphs"].values() for r in rows)  # no analysis needed
    graphs, feeds, validation = _inputs(checkpoints, bundles, "rd")
    impossible = Int8Settings(max_map_error=-1.0, max_fallback_fraction=0.1)
    _, report = mixed_int8(graphs, feeds, validation, impossible)
    total = sum(len(rows) for rows in report["graphs"].values())
    steps = [s["fp16_layers"] for s in report["steps"]]
    cap = int(0.1 * total)
    assert cap >= 3 and steps == [k for k in FALLBACK_STEPS if k < cap] + [cap]
    assert not report["result"]["meets_targets"]
    assert "not met" in next(r["why"] for rows in report["graphs"].values() for r in rows if r["precision"] == "fp16")
    none = mixed_int8(graphs, feeds, validation, Int8Settings(fallback="none"))[1]
    assert all(r["precision"] == "int8" and r["alone"] is None for rows in none["graphs"].values() for r in rows)


def test_validation_holds_out_normal_images_and_adds_painted_defects():
    frames = {"a": np.random.default_rng(0).integers(0, 256, (48, 40, 40, 3), dtype=np.uint8)}
    v = validation_sets(frames, True, 5)
    supports, queries = v.sets[0]
    assert not v.overlaps_calibration and v.max_prototypes == 5
    assert np.array_equal(supports, frames["a"][32:34]) and np.array_equal(queries[:14], frames["a"][34:])
    assert np.array_equal(queries[14:], paint_defects(frames["a"][34:], seed=0))
    short = validation_sets({"a": frames["a"][:20]}, False, 0)
    assert short.overlaps_calibration and np.array_equal(short.sets[0][1][:16], frames["a"][4:20])


def test_painted_defects_change_each_frame_inside_its_square():
    frames = np.full((6, 48, 64, 3), 120, np.uint8)
    out = paint_defects(frames, seed=3)
    assert out.shape == frames.shape and out.dtype == np.uint8 and (frames == 120).all()
    changed = (out != frames).any(-1)
    assert all(c.sum() >= 8 for c in changed) and not changed[:, :, 48:].any()
    assert np.array_equal(out, paint_defects(frames, seed=3)) and not np.array_equal(out, paint_defects(frames, seed=4))


@pytest.mark.parametrize(("settings", "match"), [
    (dict(calibration="kl"), "--calibration must be one of minmax, percentile"),
    (dict(fallback="some"), "--fp16-fallback must be auto, none or a number"),
    (dict(percentile=20.0), "percentile must be in"),
])
def test_bad_int8_settings_are_clear_errors(settings, match):
    with pytest.raises(PackdError, match=match):
        Int8Settings(**settings)


def test_int8_export_writes_its_report_and_manifest_entry(checkpoints, tmp_path, capsys):
    out, report = tmp_path / "b8", tmp_path / "int8.json"
    args = [str(checkpoints["rd"]), "--out", str(out), "--precision", "int8", "--max-batch", "2",
            "--frame-size", "72x88", "--engines", "never", "--fp16-fallback", "2", "--calibration", "percentile",
            "--report", str(report)]
    with pytest.raises(SystemExit) as e:
        export_main(args)
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "int8: 2 layers kept in FP16" in text and "Spearman" in text
    manifest = json.loads((out / "manifest.json").read_text())
    r = json.loads(report.read_text())
    assert r["producer"] and r["kind"] == "rd" and r["settings"]["calibration"] == "percentile"
    assert manifest["int8"]["calibration"] == "percentile" and manifest["int8"]["validation"] == r["result"]
    fp16 = [row["weights"] for rows in r["graphs"].values() for row in rows if row["precision"] == "fp16"]
    assert sorted(fp16) == sorted(w for ws in manifest["int8"]["fp16_layers"].values() for w in ws) and len(fp16) == 2


def test_report_never_overwrites_a_file_packd_did_not_write(checkpoints, tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    with pytest.raises(PackdError, match="not a report written by packd"):
        export_bundle(checkpoints["rd"], tmp_path / "b", precision="int8", report=mine, engines="never")
    assert mine.read_text() == '{"mine": true}' and not (tmp_path / "b").exists()


def test_report_needs_int8(checkpoints, tmp_path):
    with pytest.raises(PackdError, match="--report, --calibration and --fp16-fallback describe an int8 export"):
        export_bundle(checkpoints["rd"], tmp_path / "b", precision="fp16", report=tmp_path / "r.json", engines="never")
    assert not (tmp_path / "b").exists()


def test_an_onnxruntime_without_the_calibration_cache_is_one_line_before_any_work(monkeypatch):
    """Python 3.10 stops at onnxruntime 1.23, whose quantize_static has no calibration_cache_path (1.27 has)."""
    import onnxruntime.quantization as q

    from packd_export.int8 import check_quantizer

    check_quantizer()  # this environment's is new enough
    monkeypatch.setattr(q, "quantize_static", lambda model_input, model_output, calibration_data_reader: None)
    with pytest.raises(PackdError, match="needs onnxruntime 1.27 or newer"):
        check_quantizer()
