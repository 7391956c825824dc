"""Hostile input, read-only outputs: every command that writes says so in one line before any work, and leaves
what was there. As root (CI), permission bits do not stop writes: the folder is made immutable instead, or
mounted read-only, whichever this machine allows."""

import os
import subprocess
import time
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import TEACHER

from packd.cli import app
from packd.console import run_app
from packd_runtime.detector import Prototypes
from packd_runtime.errors import PackdError


@contextmanager
def read_only(folder):
    """`folder` refuses new files, renames and deletions for the block, whoever runs the tests."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    for on, off in ((["chattr", "+i"], ["chattr", "-i"]),
                    (["mount", "-o", "bind,ro"], ["umount"])):
        args = [str(folder)] * (2 if on[0] == "mount" else 1)
        if subprocess.run([*on, *args], capture_output=True).returncode == 0:
            try:
                yield
            finally:
                subprocess.run([*off, str(folder)], check=True)
            return
    pytest.skip("this machine can make no folder read-only for root (no chattr +i, no read-only bind mount)")


def _packd(capsys, args):
    start = time.monotonic()
    with pytest.raises(SystemExit) as e:
        run_app(app, args, prog_name="packd")
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0, err
    return e.value.code, err, time.monotonic() - start


def _export(capsys, args):
    from packd_export.cli import main as export_main

    start = time.monotonic()
    with pytest.raises(SystemExit) as e:
        export_main(args)
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0, err
    return e.value.code, err, time.monotonic() - start


def test_the_read_only_helper_really_refuses_writes(tmp_path):
    with read_only(tmp_path / "ro"):
        with pytest.raises(OSError):
            (tmp_path / "ro" / "x").write_text("x")


def test_train_into_a_read_only_folder_is_one_line_before_training(capsys, tmp_path, synth_root):
    with read_only(tmp_path / "ro"):
        code, err, seconds = _packd(capsys, ["train", "--data", str(synth_root), "--categories", "grid", "--teacher",
                                             TEACHER, "--image-size", "64", "--out", str(tmp_path / "ro" / "ck")])
    assert code == 2 and "is read-only" in err and "ro" in err, err
    assert seconds < 5 and not (tmp_path / "ro" / "ck").exists()


def test_replacing_a_read_only_checkpoint_is_refused(capsys, tmp_path, synth_root, checkpoints):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(checkpoints["rd"], ck)
    before = sorted(p.name for p in ck.iterdir())
    with read_only(ck):
        code, err, _ = _packd(capsys, ["train", "--data", str(synth_root), "--categories", "grid", "--teacher",
                                       TEACHER, "--image-size", "64", "--out", str(ck), "--epochs", "2"])
    assert code == 2 and f"{ck} is read-only" in err, err
    assert sorted(p.name for p in ck.iterdir()) == before


def test_synth_into_a_read_only_folder_writes_nothing(capsys, tmp_path):
    with read_only(tmp_path / "ro"):
        code, err, _ = _packd(capsys, ["data", "synth", "--out", str(tmp_path / "ro" / "data"), "--size", "64"])
    assert code == 2 and "is read-only" in err, err


def test_eval_json_and_overlays_in_read_only_folders_before_scoring(capsys, tmp_path, synth_root, checkpoints):
    with read_only(tmp_path / "ro"):
        for option in ("--json", "--overlays"):
            target = tmp_path / "ro" / ("r.json" if option == "--json" else "ov")
            code, err, seconds = _packd(capsys, ["eval", "--checkpoint", str(checkpoints["rd"]), "--data",
                                                 str(synth_root), option, str(target)])
            assert code == 2 and "is read-only" in err and seconds < 5, err


def test_export_into_a_read_only_folder_before_loading_the_checkpoint(capsys, tmp_path, checkpoints, monkeypatch):
    import packd_export.bundle as bundle

    monkeypatch.setattr(bundle, "_checked_scorer", lambda *a: pytest.fail("the checkpoint was loaded"))
    with read_only(tmp_path / "ro"):
        code, err, _ = _export(capsys, [str(checkpoints["rd"]), "--out", str(tmp_path / "ro" / "b")])
    assert code == 2 and "is read-only" in err, err


def test_an_int8_report_in_a_read_only_folder_is_refused_before_any_work(capsys, tmp_path, checkpoints):
    with read_only(tmp_path / "ro"):
        code, err, seconds = _export(capsys, [str(checkpoints["rd"]), "--out", str(tmp_path / "b"), "--precision",
                                              "int8", "--report", str(tmp_path / "ro" / "r.json")])
    assert code == 2 and "is read-only" in err and seconds < 5, err
    assert not (tmp_path / "b").exists()


def test_triton_into_a_read_only_folder(capsys, tmp_path, bundles):
    with read_only(tmp_path / "ro"):
        code, err, _ = _export(capsys, ["triton", str(bundles["rd"][1]), "--out", str(tmp_path / "ro" / "repo")])
    assert code == 2 and "is read-only" in err, err


def test_prototypes_save_into_a_read_only_folder(tmp_path):
    protos = Prototypes(arrays=(np.zeros((2, 3), np.float32),), fingerprint="f", shots=1)
    with read_only(tmp_path / "ro"):
        with pytest.raises(PackdError, match="is read-only"):
            protos.save(tmp_path / "ro" / "line.npz")
    assert os.listdir(tmp_path / "ro") == []
