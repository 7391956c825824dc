import json

import pytest
import torch

import packd.checkpoint as checkpoint
from packd.errors import PackdError
from packd.models import load_model
from packd.train import TrainSettings, train_rd

SMALL = dict(teacher="tf_efficientnet_lite0", image_size=64, progress=False)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_checkpoint_roundtrip_gives_identical_outputs(synth_root, tmp_path):
    out = train_rd(synth_root, "grid", tmp_path / "ck", settings=TrainSettings(epochs=1, batch_size=4), **SMALL)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "rd" and cfg["teacher"]["name"] == "tf_efficientnet_lite0"
    assert cfg["input"] == {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert cfg["train"]["epochs_done"] == 1 and cfg["train"]["categories"] == ["grid"]
    a, _ = load_model(out)
    b, _ = load_model(out)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ta, sa = a(x)
        tb, sb = b(x)
    assert all(torch.equal(p, q) for p, q in zip(sa + ta, sb + tb))


def test_training_reduces_loss(synth_root, tmp_path):
    out = train_rd(synth_root, "grid", tmp_path / "ck", settings=TrainSettings(epochs=4, batch_size=4), **SMALL)
    history = json.loads((out / "config.json").read_text())["train"]["history"]
    assert len(history) == 4 and history[-1] < history[0]


def test_resume_continues_exactly(synth_root, tmp_path):
    straight = train_rd(synth_root, "disc", tmp_path / "a", settings=TrainSettings(epochs=2, batch_size=4), **SMALL)
    part = train_rd(synth_root, "disc", tmp_path / "b", settings=TrainSettings(epochs=1, batch_size=4), **SMALL)
    assert json.loads((part / "config.json").read_text())["train"]["epochs_done"] == 1
    resumed = train_rd(synth_root, "disc", tmp_path / "b", settings=TrainSettings(epochs=2, batch_size=4), **SMALL)
    wa, wb = _weights(load_model(straight)[0]), _weights(load_model(resumed)[0])
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)
    ca = json.loads((straight / "config.json").read_text())["train"]["history"]
    cb = json.loads((resumed / "config.json").read_text())["train"]["history"]
    assert ca == pytest.approx(cb, abs=1e-5)


def test_resume_refuses_other_settings(synth_root, tmp_path):
    train_rd(synth_root, "disc", tmp_path / "c", settings=TrainSettings(epochs=1, batch_size=4), **SMALL)
    with pytest.raises(PackdError, match="other settings"):
        train_rd(synth_root, "disc", tmp_path / "c", settings=TrainSettings(epochs=2, batch_size=4, lr=0.1), **SMALL)


def test_failed_save_keeps_previous_checkpoint(synth_root, tmp_path, monkeypatch):
    out = train_rd(synth_root, "grid", tmp_path / "ck", settings=TrainSettings(epochs=1, batch_size=4), **SMALL)
    before = _weights(load_model(out)[0])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        train_rd(synth_root, "grid", out, settings=TrainSettings(epochs=2, batch_size=4), **SMALL)
    after = _weights(load_model(out)[0])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary leftovers


def test_corrupted_checkpoints_are_refused(synth_root, tmp_path):
    out = train_rd(synth_root, "grid", tmp_path / "ck", settings=TrainSettings(epochs=1, batch_size=4), **SMALL)
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(PackdError, match="corrupted weights"):
        load_model(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(PackdError, match="corrupted"):
        load_model(out)
    (out / "config.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(PackdError, match="format 99"):
        load_model(out)
    with pytest.raises(PackdError, match="not found"):
        load_model(tmp_path / "nothing")


def test_mismatched_weights_are_refused(synth_root, tmp_path):
    out = train_rd(synth_root, "grid", tmp_path / "ck", settings=TrainSettings(epochs=1, batch_size=4), **SMALL)
    cfg = json.loads((out / "config.json").read_text())
    cfg["plan"]["decoder_blocks"] = [3, 3, 3]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PackdError, match="do not match"):
        load_model(out)
