import json

from typer.testing import CliRunner

from packd_bench.bench import accuracy, latency_stats
from packd_bench.cli import app


def test_latency_stats_values():
    s = latency_stats([0.001, 0.002, 0.003, 0.004], images=8, wall=0.01)
    assert s["min_ms"] == 1.0 and s["median_ms"] == 2.5 and s["mean_ms"] == 2.5
    assert 3.6 < s["p90_ms"] < 4.0 and s["throughput_img_s"] == 8 * 4 / 0.01


def test_accuracy_against_reference():
    import numpy as np

    ref = (np.array([1.0, 2.0, 3.0]), np.zeros((3, 4, 4)) + np.arange(4))
    out = (np.array([1.1, 2.2, 3.3]), ref[1] + 0.03)
    a = accuracy(ref, out)
    assert abs(a["max_map_err"] - 0.03) < 1e-9 and abs(a["max_map_err_rel"] - 0.01) < 1e-9
    assert a["score_spearman"] == 1.0


def test_bench_on_a_bundle(bundles, checkpoints, tmp_path):
    out = tmp_path / "r"
    result = CliRunner().invoke(app, [str(bundles["packd"][1]), "--checkpoint", str(checkpoints["packd"]),
                                      "--out", str(out), "--batch-sizes", "1,2", "--iters", "2", "--warmup", "1",
                                      "--max-shots", "2"])
    assert result.exit_code == 0, result.output
    r = json.loads(out.with_suffix(".json").read_text())
    assert {"eager-fp32-cpu", "onnxruntime-fp32-cpu"} <= set(r["backends"])
    assert "tensorrt-fp32" in r["skipped"] or "tensorrt-fp32" in r["backends"]
    ort = r["backends"]["onnxruntime-fp32-cpu"]
    assert set(ort["batches"]) == {"1", "2"} and ort["batches"]["2"]["throughput_img_s"] > 0
    assert set(ort["changeover"]) == {"1", "2"}
    assert ort["accuracy_vs_reference"]["max_map_err_rel"] < 1e-3 and r["reference"] == "eager-fp32-cpu"
    assert r["backends"]["eager-fp32-cpu"]["accuracy_vs_reference"]["max_map_err"] == 0.0
    assert set(r["runtime_overhead"]) >= {"1"} and r["machine"]["cpu_count"] >= 1
    assert out.with_suffix(".png").stat().st_size > 1000 and "| backend | batch |" in out.with_suffix(".md").read_text()


def test_bench_refuses_a_checkpoint_the_bundle_was_not_made_from(bundles, checkpoints, tmp_path):
    result = CliRunner().invoke(app, [str(bundles["packd"][1]), "--checkpoint", str(checkpoints["rd"]),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "not the checkpoint" in str(result.exception)
