"""Hostile input, CLI surface: every bad option value is one line and exit code 2, checked before any
long work; Ctrl-C says what was kept."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TEACHER

from packd.cli import app
from packd.console import run_app


def _run(capsys, args):
    with pytest.raises(SystemExit) as e:
        run_app(app, args, prog_name="packd")
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("extra, message", [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr", "-1"], "--lr must be greater than 0"),
    (["--kind", "packd", "--rotations", "0"], "--rotations must be at least 1"),
    (["--kind", "packd", "--rotations", "5"], "--rotations must be at most 4"),
    (["--kind", "packd", "--prototypes", "0"], "--prototypes must be at least 1"),
    (["--kind", "packd", "--tau", "0"], "--tau must be greater than 0"),
    (["--kind", "memkd", "--exemplars", "0"], "--exemplars must be at least 1"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--kind", "packd", "--norm", "layer"], "--norm must be one of batch, group"),
    (["--kind", "rd", "--norm", "layer"], "--norm must be one of batch, group"),
    (["--kind", "rd", "--stage-outputs", "tanh"], "--stage-outputs must be one of relu, linear"),
    (["--kind", "knn", "--stage-outputs", "linear"], "--stage-outputs does not apply to --kind knn"),
    (["--stage-weights", "1,x,1"], "--stage-weights must be comma-separated numbers"),
    (["--stage-weights", "1,1"], "--stage-weights needs 3 weights"),
    (["--stage-weights", "0,0,0"], "not all zero"),
    (["--border", "-1"], "--border must be at least 0"),
    (["--image-size", "64", "--border", "16"], "--border must be between 0 and a quarter of the image size"),
    (["--kind", "packd", "--prototype-score", "-1"], "--prototype-score must be at least 0"),
    (["--kind", "knn", "--prototype-score", "1"], "--prototype-score does not apply to --kind knn"),
    (["--epochs", "abc"], "Invalid value for '--epochs'"),
    (["--tile", "0"], "Invalid value for '--tile'"),
    (["--teacher-cache-gb", "nan"], "Invalid value for '--teacher-cache-gb'"),
    (["--teacher-cache-gb", "inf"], "--teacher-cache-gb must be a finite number of GB"),
    (["--teacher-cache-gb", "-1"], "Invalid value for '--teacher-cache-gb'"),
    (["--bogus"], "No such option: --bogus"),
])
def test_bad_training_options_are_one_line_and_exit_2(capsys, tmp_path, extra, message):
    code, out = _run(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "ck"), *extra])
    assert code == 2 and message in out.err and out.err.strip().count("\n") == 0, out.err


@pytest.mark.parametrize("extra, message", [
    (["--train", "-1"], "--train must be at least 1"),
    (["--categories", ","], "names no category"),
    (["--size", "100000"], "--size must be between 32 and 2048"),
    (["--size", "64", "--defect-window", "100"], "--defect-window must be 0 (defects sized to the image) or 32 to"),
])
def test_bad_synth_options(capsys, tmp_path, extra, message):
    code, out = _run(capsys, ["data", "synth", "--out", str(tmp_path / "d"), *extra])
    assert code == 2 and message in out.err and out.err.strip().count("\n") == 0, out.err
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


@pytest.mark.parametrize("extra, message", [
    (["--overlap", "8"], "--overlap, --roi and --map-scale need --tile S"),
    (["--frame-size", "100x100"], "--frame-size describes a tiled evaluation: add --tile S"),
    (["--memory", "position"], "--memory position describes a tiled export or evaluation: add --tile S"),
    (["--tile", "64", "--memory", "pooled"], "--memory must be one of shared, position"),
    (["--tile", "64", "--roi", "1,2"], "--roi must look like Y,X,H,W"),
    (["--tile", "64", "--frame-size", "10x"], "--frame-size must look like 480x640"),
    (["--tile", "64", "--frame-size", "100x100", "--overlap", "64"], "--overlap 64 must be at least 0 and less"),
])
def test_bad_tiled_evaluation_options_are_one_line_before_the_checkpoint_is_read(capsys, tmp_path, extra, message):
    code, out = _run(capsys, ["eval", "--checkpoint", str(tmp_path / "missing"), "--data", str(tmp_path), *extra])
    assert code == 2 and message in out.err and out.err.strip().count("\n") == 0, out.err


def test_synth_help_keeps_its_brackets(capsys):
    code, out = _run(capsys, ["data", "synth", "--help"])
    assert code == 0 and "[photos]" in out.out


def test_outputs_are_validated_before_the_long_work(capsys, tmp_path, synth_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    code, out = _run(capsys, ["train", "--data", str(synth_root), "--out", ".", "--teacher", TEACHER])
    assert code == 2 and "not a checkpoint written by packd" in out.err  # before an epoch, not after
    report = tmp_path / "folder"
    report.mkdir()
    code, out = _run(capsys, ["eval", "--checkpoint", str(tmp_path / "none"), "--data", str(synth_root),
                              "--json", str(report)])
    assert code == 2 and "is a folder" in out.err
    code, out = _run(capsys, ["eval", "--checkpoint", str(tmp_path / "none"), "--data", str(synth_root),
                              "--json", str(tmp_path / "notes.txt")])
    assert code == 2 and "not a report written by packd" in out.err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_ctrl_c_says_the_last_epoch_is_kept_and_how_to_resume(synth_root, tmp_path):
    out = tmp_path / "ck"
    args = [sys.executable, "-m", "packd.cli", "train", "--data", str(synth_root), "--categories", "grid",
            "--teacher", TEACHER, "--image-size", "64", "--epochs", "200", "--batch-size", "4", "--out", str(out)]
    with open(tmp_path / "out.txt", "w") as stdout, open(tmp_path / "err.txt", "w") as stderr:  # never a full pipe
        # as in a terminal: background jobs (CI, nohup) inherit SIGINT ignored, which Python then keeps
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 300
        while not (out / "config.json").is_file() and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    err = (tmp_path / "err.txt").read_text()
    assert proc.returncode == 130, err
    done = json.loads((out / "config.json").read_text())["train"]["epochs_done"]
    assert "interrupted" in err and "is kept" in err and "run the same command again to resume" in err
    assert f"({done} of 200)" in err or f"({done + 1} of 200)" in err


def _export(capsys, args):
    from packd_export.cli import main as export_main

    with pytest.raises(SystemExit) as e:
        export_main(args)
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0, err
    return e.value.code, err


@pytest.mark.parametrize("extra, message", [
    (["--precision", "int8", "--calibration", "entropy"], "--calibration must be one of minmax, percentile"),
    (["--precision", "int8", "--fp16-fallback", "many"], "--fp16-fallback must be auto, none or a number"),
    (["--precision", "fp16", "--report", "r.json"], "describe an int8 export: add --precision int8"),
    (["--precision", "fp16", "--fp16-fallback", "3"], "describe an int8 export: add --precision int8"),
    (["--calibration", "percentile"], "describe an int8 export: add --precision int8"),
    (["--precision", "int8", "--fp16-fallback", "\u00b2"], "--fp16-fallback must be auto, none or a number"),
    (["--frame-size", "20000x20000"], "--frame-size must be 1 to 8192 pixels a side"),
    (["--precision", "int8", "--report", "."], "is a folder: give a file name for the report"),
    (["--tile", "64", "--frame-size", "100x100", "--roi", "1,2,3"], "--roi must look like Y,X,H,W"),
    (["--tile", "64", "--frame-size", "100x100", "--roi", "1,2,3,\u0663"], "--roi must look like Y,X,H,W"),
    (["--tile", "64", "--frame-size", "100x100", "--overlap", "70"], "--overlap 70 must be at least 0 and less"),
    (["--roi", "0,0,10,10"], "--overlap, --roi and --map-scale need --tile S"),
    (["--memory", "position"], "--memory position describes a tiled export or evaluation: add --tile S"),
    (["--tile", "64", "--frame-size", "100x100", "--memory", "pooled"], "--memory must be one of shared, position"),
])
def test_bad_int8_export_options_are_one_line_before_any_work(capsys, tmp_path, extra, message):
    code, err = _export(capsys, [str(tmp_path / "missing-checkpoint"), "--out", str(tmp_path / "b"), *extra])
    assert code == 2 and message in err, err
    assert not (tmp_path / "b").exists()


def test_a_report_inside_the_bundle_is_refused_before_any_work(capsys, tmp_path):
    code, err = _export(capsys, [str(tmp_path / "missing-checkpoint"), "--out", str(tmp_path / "b"), "--precision",
                                 "int8", "--report", str(tmp_path / "b" / "report.json")])
    assert code == 2 and "would be written into the bundle" in err, err


@pytest.mark.parametrize("extra, message", [
    (["--runtime-backend", "cuda"], "--runtime-backend must be auto, tensorrt or onnxruntime"),
    (["--engine-gpu", "A100"], "no engines built on 'A100'"),
])
def test_bad_triton_repository_options_are_one_line(capsys, tmp_path, bundles, extra, message):
    code, err = _export(capsys, ["triton", str(bundles["rd"][1]), "--out", str(tmp_path / "repo"), *extra])
    assert code == 2 and message in err, err
    assert not (tmp_path / "repo").exists()


def test_a_missing_bundle_for_triton_is_one_line(capsys, tmp_path):
    code, err = _export(capsys, ["triton", str(tmp_path / "nothing"), "--out", str(tmp_path / "repo")])
    assert code == 2 and "nothing" in err, err


def test_ctrl_c_in_any_command_says_what_was_kept(capsys):
    """typer turns a KeyboardInterrupt inside a command into a silent exit code 130: packd says what was kept."""
    import typer

    app = typer.Typer()

    @app.command()
    def work() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        run_app(app, [], prog_name="x")
    err = capsys.readouterr().err
    assert e.value.code == 130 and "interrupted: packd writes each output whole or not at all" in err
    assert "run the same command again" in err and err.strip().count("\n") == 0


@pytest.mark.slow
def test_ctrl_c_during_an_export_keeps_the_old_bundle_and_says_so(tmp_path, bundles, checkpoints):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(bundles["rd"][1], bundle)
    before = (bundle / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "packd_export.cli", str(checkpoints["rd"]), "--out", str(bundle)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob(".b.tmp*")):
        time.sleep(0.02)  # until the export writes its new bundle aside: deep in its work, whatever the load
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted: packd writes each output whole" in err, err
    assert (bundle / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporaries left


@pytest.mark.parametrize("args, message", [(["--max-batch", "100000"], "--max-batch must be 1 to 4096"),
                                           (["--max-shots", "5000"], "--max-shots 1 to 1024")])
def test_limits_beyond_what_a_manifest_may_name_are_refused_before_the_checkpoint_is_read(tmp_path, capsys, args,
                                                                                         message):
    from packd_export.cli import main as export_main

    with pytest.raises(SystemExit) as e:
        export_main([str(tmp_path / "no-checkpoint"), "--out", str(tmp_path / "b"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "b").exists()
