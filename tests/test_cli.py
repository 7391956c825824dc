import json
import subprocess
import sys

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from packd.cli import app
from packd.evaluate import METRIC_KEYS

runner = CliRunner()


def _packd(*args):
    return subprocess.run([sys.executable, "-m", "packd.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_explains_every_option():
    for cmd in (["train"], ["eval"], ["data", "synth"], ["demo"]):
        r = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0
        options = [line for line in r.output.splitlines() if line.strip().startswith("│ --") or line.strip().startswith("│ *")]
        assert options and all(len(line.split("  ")) > 1 for line in options)


def test_synth_train_eval_end_to_end(tmp_path):
    data, ckpt, report, overlays = tmp_path / "d", tmp_path / "ck", tmp_path / "r.json", tmp_path / "ov"
    r = runner.invoke(app, ["data", "synth", "--out", str(data), "--size", "64", "--categories", "disc",
                            "--train", "6", "--test-good", "3", "--test-defect", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--model", "rd", "--data", str(data), "--categories", "disc",
                            "--teacher", "tf_efficientnet_lite0", "--image-size", "64", "--epochs", "1",
                            "--batch-size", "3", "--lr", "0.005", "--seed", "1", "--out", str(ckpt)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--categories", "disc",
                            "--json", str(report), "--overlays", str(overlays)])
    assert r.exit_code == 0, r.output
    rep = json.loads(report.read_text())
    assert set(rep["categories"]) == {"disc"}
    for k in METRIC_KEYS:
        assert 0.0 <= rep["mean"][k] <= 1.0 and rep["mean"][k] == rep["categories"]["disc"][k]
    assert rep["categories"]["disc"]["n_images"] == 9 and rep["categories"]["disc"]["n_anomalous"] == 6
    pngs = sorted((overlays / "disc").glob("*.png"))
    assert len(pngs) == 9
    assert np.asarray(Image.open(pngs[0])).shape == (64, 192, 3)


def test_bad_input_exits_nonzero_with_one_line(tmp_path):
    r = _packd("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "ck"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "dataset folder not found" in r.stderr
    r = _packd("eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path))
    assert r.returncode == 2 and "not a packd checkpoint" in r.stderr
    r = _packd("train", "--model", "gan", "--data", str(tmp_path), "--out", str(tmp_path / "ck"))
    assert r.returncode == 2 and "unknown --model" in r.stderr
    r = _packd("train", "--data", str(tmp_path), "--out", str(tmp_path / "ck"), "--epochs", "0")
    assert r.returncode == 2 and "--epochs must be positive" in r.stderr
