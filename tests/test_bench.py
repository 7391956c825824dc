import json

import pytest
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
    assert result.output.rstrip().splitlines()[-1] == f"results written to {out}.json, {out}.md, {out}.png"


def test_bench_refuses_a_checkpoint_the_bundle_was_not_made_from(bundles, checkpoints, tmp_path):
    result = CliRunner().invoke(app, [str(bundles["packd"][1]), "--checkpoint", str(checkpoints["rd"]),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "not the checkpoint" in str(result.exception)


def test_accuracy_comparison_flags_only_cells_beyond_their_band():
    """`make bench-accuracy`'s comparison: a k-shot cell moves beyond max(0.02, 2 x its spread), an RD cell
    beyond 0.05; rows not asked for and NaN rows are left out; a mean over other categories is not compared."""
    from packd_bench.accuracy_compare import compare, fewshot_cells, rd_cells

    def table(a, b):
        packd = {"2": {"image_auroc": [b, 0.03], "pixel_auroc": [float("nan"), 0]}}
        return {"summary": {"synthetic": {"rd_meta": {"2": {"image_auroc": [a, 0.0]}}, "packd": packd}}}

    old, new = fewshot_cells(table(0.80, 0.90)), fewshot_cells(table(0.77, 0.85))
    rd_meta, packd = "fewshot synthetic | rd_meta | k=2 | image_auroc", "fewshot synthetic | packd | k=2 | image_auroc"
    assert set(old) == {rd_meta, packd}
    assert compare(old, new) == [(rd_meta, 0.80, 0.77, 0.02)]  # packd fell 0.05, inside its band 2 x 0.03
    assert fewshot_cells(table(0.8, 0.9), rows=["packd"]).keys() == {packd}
    rd_old = {k: (v, 0.0) for k, v in rd_cells({"categories": {"wood": {"image_auroc": 0.90, "pixel_auroc": 0.89}},
                                                "mean": {"image_auroc": 0.9}}).items()}
    rd_new = {k: (v, 0.0) for k, v in rd_cells({"categories": {"wood": {"image_auroc": 0.84, "pixel_auroc": 0.88}},
                                                "mean": {"image_auroc": 0.5}}).items()}
    assert compare(rd_old, rd_new) == [("rd wood image_auroc", 0.90, 0.84, 0.05)]


@pytest.mark.slow
def test_the_gpu_check_runs_its_path_on_the_cpu(tmp_path):
    """benchmarks/speed/gpu_check.py as the test suite can run it (no GPU): every kind's eager row at each batch, the
    training rows without autocast, the CUDA-only parts said to be skipped; its CUDA refusal is one line."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "speed" / "gpu_check.py"
    results = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--quick", "--out", str(tmp_path / "run"),
                           "--results", str(results)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(results.read_text())
    assert {(r["kind"], r["mode"], r["batch"]) for r in report["inference"]} == {
        (k, "eager", b) for k in ("knn", "rd", "memkd", "packd") for b in (1, 8)}
    assert all(r["median_ms"] > 0 and r["images_per_s"] > 0 for r in report["inference"])
    rows = ("fp32, no cache", "fp32, cache", "fp32, cache, channels-last")
    expected = [(k, r) for k in ("packd", "rd", "memkd") for r in rows]
    assert [(r["kind"], r["row"]) for r in report["training"]] == expected
    assert all(r["query_images_per_s"] > 0 and r["steps"] == 3 for r in report["training"])
    assert report["cuda_python"] == {"skipped": "no GPU"}
    if not __import__("torch").cuda.is_available():
        refused = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "x")], capture_output=True,
                                 text=True, timeout=300)
        assert refused.returncode == 2 and "no CUDA GPU here" in refused.stderr
    else:
        pytest.skip("a GPU is here: run the check itself")


def test_the_runtime_scores_a_bundle_with_the_fewshot_protocol(bundles, synth_root):
    """packd_bench.runtime_eval (the bundle rows of the knn table): support sets drawn as `packd eval` draws them,
    metrics from the Detector's scores and maps."""
    from packd_bench.runtime_eval import bundle_fewshot_runs
    from packd_runtime import Detector

    with Detector.open(bundles["packd"][1]) as det:
        runs = bundle_fewshot_runs(det, synth_root, ["grid", "disc"], shots=2, runs=2)
    assert list(runs) == ["grid", "disc"] and all(len(r) == 2 for r in runs.values())
    assert all(0 <= m[k] <= 1 for r in runs.values() for m in r for k in ("image_auroc", "pixel_auroc", "aupro"))


def test_training_throughput_is_measured_after_the_first_step(synth_root):
    """packd_bench.train_timing (behind benchmarks/speed/training_speed.py and the GPU check), two RD steps."""
    from packd_bench.train_timing import Habits, measure_training

    row = measure_training("rd", synth_root, ["grid"], Habits(allocator=False), steps=2, image_size=64)
    assert row["steps"] == 2 and row["query_images_per_s"] > 0 and row["s_per_step"] > 0
    assert row["steps_per_epoch"] >= 1 and row["first_step_s"] > 0
