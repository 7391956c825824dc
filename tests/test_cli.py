import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import TEACHER
from PIL import Image
from typer.testing import CliRunner

from packd.cli import app, setting_options
from packd.console import run_app
from packd.evaluation.evaluate import METRIC_KEYS
from packd.evaluation.overlays import DEFECT_COLOUR, OK_COLOUR
from packd.methods import METHODS

runner = CliRunner()


def _packd(*args):
    return subprocess.run([sys.executable, "-m", "packd.cli", *args], capture_output=True, text=True, timeout=300)


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_option_has_help_and_shows_it():
    commands = dict(_commands(typer.main.get_command(app)))
    assert set(commands) >= {("train",), ("eval",), ("data", "synth"), ("data", "convert-visa")}
    for path, cmd in commands.items():
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help and len(param.help.strip()) > 10, (path, param.name)
        text = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        for param in cmd.params:
            if param.param_type_name == "option" and param.help and not param.hidden:  # --model: deprecated, hidden
                assert param.help.split()[0] in text, (path, param.name)


def test_train_options_come_from_the_settings_dataclasses():
    options = setting_options()
    for kind, m in METHODS.items():  # every kind's CLI settings are options, with their own default shown
        from packd.training.settings import cli_fields, default_of

        for f in cli_fields(m.settings):
            assert kind in options[f.name][1]
            assert str(default_of(f)) in options[f.name][2]
    assert options["lr"][2] == "0.005; packd: 0.0005"  # the run default and PACKD's default preset
    assert options["orth_weight"][2] == "memkd: 0.1; packd: 0.5"
    assert options["orth_weight"][1].startswith("memkd, packd: ")


def test_synth_train_eval_end_to_end(tmp_path):
    data, ckpt, report, overlays = tmp_path / "d", tmp_path / "ck", tmp_path / "r.json", tmp_path / "ov"
    r = runner.invoke(app, ["data", "synth", "--out", str(data), "--size", "64", "--categories", "disc",
                            "--train", "6", "--test-good", "3", "--test-defect", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--kind", "rd", "--data", str(data), "--categories", "disc",
                            "--teacher", TEACHER, "--image-size", "64", "--epochs", "1",
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
    disc = rep["categories"]["disc"]
    rows = {Path(r["file"]).parent.name + "_" + Path(r["file"]).name: r for r in disc["images"]}
    assert len(rows) == 9 and sum(r["label"] for r in rows.values()) == 6
    assert all(r["label"] == (r["defect"] != "good") and np.isfinite(r["score"]) for r in rows.values())
    threshold = disc["overlay_threshold"]
    assert threshold > 0 and {r["score"] > threshold for r in rows.values()} <= {True, False}
    for png in pngs:  # 64-px panels enlarged to 256, a header with the verdict, a colour bar below
        picture = np.asarray(Image.open(png))
        assert picture.shape[1] == 3 * 256 and picture.shape[0] > 256 + 40
        verdict = DEFECT_COLOUR if rows[png.name]["score"] > threshold else OK_COLOUR
        assert tuple(picture[2, -3]) == verdict
    r = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--categories", "disc",
                            "--json", str(report), "--border", "8", "--stage-weights", "0,0,1"])
    assert r.exit_code == 0, r.output
    only_deep = json.loads(report.read_text())["categories"]["disc"]
    assert only_deep["pixel_auroc"] != rep["categories"]["disc"]["pixel_auroc"]  # another map: another score
    r = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--prototype-score", "1"])
    assert "rd models take scoring overrides" in str(r.exception)


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, synth_root):
    cases = [
        (["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "ck")], "dataset folder not found"),
        (["eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path)], "not a packd checkpoint"),
        (["train", "--kind", "gan", "--data", str(tmp_path), "--out", str(tmp_path / "ck")], "unknown kind 'gan'"),
        (["train", "--model", "rd", "--kind", "memkd", "--data", str(tmp_path), "--out", str(tmp_path / "ck")],
         "--model rd and --kind memkd disagree: give --kind only"),
        (["train", "--data", str(tmp_path), "--out", str(tmp_path / "ck"), "--epochs", "0"], "--epochs must be at"),
        (["train", "--kind", "packd", "--data", str(tmp_path), "--out", str(tmp_path / "ck"), "--rotations", "5"],
         "--rotations must be at most 4"),
        (["train", "--data", str(tmp_path), "--out", str(tmp_path / "ck"), "--image-size", "16"],
         "--image-size must be at least 32"),
        (["train", "--data", str(synth_root), "--out", str(tmp_path / "ck"), "--image-size", "100", "--teacher",
          TEACHER], "--image-size must be a multiple of 32 for tf_efficientnet_lite0"),
        (["train", "--data", str(tmp_path), "--out", str(tmp_path / "ck"), "--slots", "4"],
         "--slots does not apply to --kind rd"),
        (["train", "--data", str(tmp_path), "--out", str(tmp_path / "ck"), "--preset", "fast"], "unknown --preset"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            run_app(app, args, prog_name="packd")
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err, (args, err)
        assert err.strip().count("\n") == 0, err
    r = _packd(*cases[0][0])  # the installed entry point behaves the same
    assert r.returncode == 2 and cases[0][1] in r.stderr and r.stderr.strip().count("\n") == 0


def test_model_is_the_deprecated_name_of_kind(tmp_path, capsys, synth_root):
    """`--model` still trains for one release, with a one-line notice; `kind` is the word everywhere else."""
    with pytest.raises(SystemExit) as e:
        run_app(app, ["train", "--model", "knn", "--data", str(synth_root), "--categories", "grid", "--out",
                      str(tmp_path / "ck"), "--teacher", TEACHER, "--image-size", "64"], prog_name="packd")
    captured = capsys.readouterr()
    assert e.value.code == 0
    assert captured.err.strip() == "--model is deprecated and goes in the next release: use --kind"
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["kind"] == "knn"
