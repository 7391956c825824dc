"""Hostile input, checkpoint surface: outputs that are not ours, concurrent runs, crash windows,
diverged training, flipped bytes, wrongly typed configs, full disks."""

import errno
import json
import os
import shutil

import pytest
import torch
from conftest import train_small

import packd.methods.rd.training as rd_training
import packd.models.checkpoint as checkpoint
from packd.errors import PackdError
from packd.models.checkpoint import save_checkpoint
from packd.models.loading import load_model
from packd_export.bundle import export_bundle


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_out_never_deletes_what_packd_did_not_write(synth_root, tmp_path, checkpoints):
    data = tmp_path / "victim"
    shutil.copytree(synth_root, data)
    before = _files(data)
    for out in (data, tmp_path):  # --out equal to --data, or containing it
        with pytest.raises(PackdError, match="would hold the dataset"):
            train_small("rd", data, "grid", out, epochs=1, batch_size=4)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(PackdError, match="not a checkpoint written by packd"):
        train_small("rd", data, "grid", notes, epochs=1, batch_size=4)
    with pytest.raises(PackdError, match="not a bundle written by packd"):
        export_bundle(checkpoints["rd"], notes, max_batch=2)
    with pytest.raises(PackdError, match="not a bundle written by packd"):  # a checkpoint is not a bundle
        export_bundle(checkpoints["rd"], checkpoints["rd"], max_batch=2)
    assert _files(data) == before and (notes / "notes.txt").read_text() == "mine"
    assert (checkpoints["rd"] / "model.safetensors").is_file()


def test_a_kill_between_the_two_renames_loses_nothing(synth_root, tmp_path):
    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
    first = json.loads((out / "config.json").read_text())["train"]["history"]
    os.replace(out, tmp_path / ".ck.old")  # killed after "old aside", before "new in"
    (tmp_path / ".ck.tmpabcd1234").mkdir()  # and a killed write's temporary
    (tmp_path / ".ck.tmpabcd1234" / "model.safetensors").write_bytes(b"\0" * 1000)
    assert load_model(out)[1]["train"]["epochs_done"] == 1  # a reader puts it back
    os.replace(out, tmp_path / ".ck.old")
    resumed = train_small("rd", synth_root, "grid", out, epochs=2, batch_size=4)
    history = json.loads((resumed / "config.json").read_text())["train"]["history"]
    assert len(history) == 2 and history[0] == first[0]  # resumed from epoch 1, not restarted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # .old and .tmp* gone


def test_a_diverged_training_stops_and_cannot_be_exported(synth_root, tmp_path, monkeypatch, effnet_teacher):
    good = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
    monkeypatch.setattr(rd_training, "kd_loss", lambda teacher, student: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(PackdError, match=r"training diverged in epoch 2: the loss is nan \(the checkpoint of epoch 1"):
        train_small("rd", synth_root, "grid", good, epochs=3, batch_size=4)
    assert json.loads((good / "config.json").read_text())["train"]["epochs_done"] == 1
    model, config = load_model(good)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("stages")).fill_(float("nan"))
    save_checkpoint(tmp_path / "nan", model, {k: v for k, v in config.items() if k not in ("format", "model_sha256")})
    with pytest.raises(PackdError, match="non-finite weights"):
        export_bundle(tmp_path / "nan", tmp_path / "b", max_batch=2)
    assert not (tmp_path / "b").exists()


def test_flipped_bytes_and_mistyped_configs_are_refused(synth_root, tmp_path):
    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
    weights = bytearray((out / "model.safetensors").read_bytes())
    weights[-10] ^= 0x01  # one bit of one weight: the file still parses
    (out / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(PackdError, match="altered since the checkpoint was written"):
        load_model(out)
    weights[-10] ^= 0x01
    (out / "model.safetensors").write_bytes(bytes(weights))
    cfg = json.loads((out / "config.json").read_text())
    for path, value, match in [(("input", "image_size"), "64", "input.image_size must be int"),
                               (("input", "mean"), [0.5], "input.mean must be a list of 3"),
                               (("settings", "plan", "channels"), [24, 40], "channels must be a list of 3")]:
        bad = json.loads(json.dumps(cfg))
        bad[path[0]][path[1]] = value if len(path) == 2 else {**bad[path[0]][path[1]], path[2]: value}
        (out / "config.json").write_text(json.dumps(bad))
        with pytest.raises(PackdError, match=match):
            load_model(out)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("safetensors: No space left on device (os error 28)")])
def test_a_full_disk_is_one_line_and_keeps_the_old_checkpoint(synth_root, tmp_path, monkeypatch, error):
    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
    before = (out / "model.safetensors").read_bytes()

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(PackdError, match="disk full while writing"):
        train_small("rd", synth_root, "grid", out, epochs=2, batch_size=4)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_full_disk_under_the_trainer_state_is_one_line(synth_root, tmp_path, monkeypatch):
    """The trainer state on a really full device (/dev/full: every write fails with ENOSPC): torch.save's own
    writer said only 'enforce fail at inline_container.cc' (a 64-line traceback); it is one line now."""
    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
    before = (out / "trainer.pt").read_bytes()
    monkeypatch.setattr(checkpoint, "TRAINER_FILE", "/dev/full")  # tmp / "/dev/full" is /dev/full
    with pytest.raises(PackdError, match="disk full while writing .*ck"):
        train_small("rd", synth_root, "grid", out, epochs=2, batch_size=4)
    assert (out / "trainer.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.slow
def test_a_full_disk_during_export_or_a_report_keeps_the_old_files(checkpoints, tmp_path, monkeypatch):
    import io

    import packd_export.bundle as bundle_mod
    import packd_runtime.atomic as atomic
    from packd.evaluation.reports import write_report

    export_bundle(checkpoints["rd"], tmp_path / "b", max_batch=2, engines="never")
    before = (tmp_path / "b" / "manifest.json").read_text()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(bundle_mod.onnx, "save", full)
        with pytest.raises(PackdError, match="disk full while writing"):
            export_bundle(checkpoints["rd"], tmp_path / "b", max_batch=2, engines="never")
    assert (tmp_path / "b" / "manifest.json").read_text() == before
    write_report(tmp_path / "r.json", {"a": 1})

    class FullFile(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_fdopen = atomic.os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: (real_fdopen(fd, mode).close(), FullFile())[1])
    with pytest.raises(PackdError, match="disk full while writing"):
        write_report(tmp_path / "r.json", {"a": 2})
    assert json.loads((tmp_path / "r.json").read_text())["a"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "r.json"]


@pytest.mark.parametrize("teacher", ["hf-hub:timm/resnet18.a1_in1k", "timm/resnet18", "no_such_model"])
def test_a_checkpoint_config_never_sends_loading_to_a_model_hub(synth_root, tmp_path, teacher, monkeypatch):
    import huggingface_hub

    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
    cfg = json.loads((out / "config.json").read_text())
    cfg["teacher"]["name"] = teacher
    (out / "config.json").write_text(json.dumps(cfg))

    def no_network(*args, **kwargs):
        raise AssertionError("loading a checkpoint reached for a model hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(PackdError, match="not one of timm's built-in architectures"):
        load_model(out)


def test_a_knn_checkpoint_with_two_training_images_is_one_line_before_export_work(tmp_path, monkeypatch):
    """Few-shot kinds take 2 normal images per category as supports for the default threshold: a category of 2
    leaves nothing to score. Said before the ONNX export, not as a numpy error after it."""
    import packd_export.bundle as bundle
    from packd.data.synth import Counts, synthesize

    synthesize(tmp_path / "data", size=64, categories=["grid"], counts=Counts(train=2, test_good=1, test_defect=1))
    ck = train_small("knn", tmp_path / "data", "grid", tmp_path / "knn", rotations=1, max_bank=50)
    monkeypatch.setattr(bundle, "export_onnx", lambda *a, **k: pytest.fail("the graphs were exported"))
    with pytest.raises(PackdError, match=r"at least 5 normal images to score beside the 2 each category's supports "
                                         r"take, and the training categories have too few \(grid: 2\)"):
        export_bundle(ck, tmp_path / "b")
    assert not (tmp_path / "b").exists()
