import json

import pytest
import torch
from conftest import train_small

import packd.models.checkpoint as checkpoint
from packd.data.preprocess import InputSpec
from packd.errors import PackdError
from packd.methods import METHODS
from packd.methods.rd.settings import RDSettings
from packd.models.checkpoint import save_checkpoint
from packd.models.loading import load_model, model_config


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_checkpoint_restores_the_model_that_was_saved(effnet_teacher, tmp_path):
    torch.manual_seed(0)
    model, settings = METHODS["rd"].build(effnet_teacher, RDSettings())
    with torch.no_grad():  # weights no fresh model has: a load that ignored the file would differ
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    config = {**model_config("rd", effnet_teacher, InputSpec(64, (0.5,) * 3, (0.5,) * 3), settings),
              "run": {}, "train": {"data": "", "categories": []}}
    save_checkpoint(tmp_path / "ck", model, config)
    loaded, cfg = load_model(tmp_path / "ck")
    assert cfg["settings"]["plan"]["channels"] == [24, 40, 112]
    saved = model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ta, sa = model(x)
        tb, sb = loaded(x)
    assert all(torch.equal(p, q) for p, q in zip(sa + ta, sb + tb))


def test_training_writes_its_config_and_reduces_loss(synth_root, tmp_path):
    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=4, batch_size=4)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "rd" and cfg["teacher"]["name"] == "tf_efficientnet_lite0" and cfg["format"] == 4
    assert cfg["input"] == {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert cfg["run"]["epochs"] == 4 and cfg["run"]["batch_size"] == 4 and cfg["run"]["lr"] == 0.005
    assert cfg["train"]["epochs_done"] == 4 and cfg["train"]["categories"] == ["grid"]
    history = cfg["train"]["history"]
    assert len(history) == 4 and history[-1] < history[0]


def test_resume_continues_exactly(synth_root, tmp_path):
    straight = train_small("rd", synth_root, "disc", tmp_path / "a", epochs=2, batch_size=4)
    part = train_small("rd", synth_root, "disc", tmp_path / "b", epochs=1, batch_size=4)
    assert json.loads((part / "config.json").read_text())["train"]["epochs_done"] == 1
    resumed = train_small("rd", synth_root, "disc", tmp_path / "b", epochs=2, batch_size=4)
    wa, wb = _weights(load_model(straight)[0]), _weights(load_model(resumed)[0])
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)
    ca = json.loads((straight / "config.json").read_text())["train"]["history"]
    cb = json.loads((resumed / "config.json").read_text())["train"]["history"]
    assert ca == pytest.approx(cb, abs=1e-5)


def test_resume_refuses_other_settings(synth_root, tmp_path):
    train_small("rd", synth_root, "disc", tmp_path / "c", epochs=1, batch_size=4)
    with pytest.raises(PackdError, match="other settings"):
        train_small("rd", synth_root, "disc", tmp_path / "c", epochs=2, batch_size=4, lr=0.1)


def test_failed_save_keeps_previous_checkpoint(synth_root, tmp_path, monkeypatch):
    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
    before = _weights(load_model(out)[0])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        train_small("rd", synth_root, "grid", out, epochs=2, batch_size=4)
    after = _weights(load_model(out)[0])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary leftovers


def test_corrupted_checkpoints_are_refused(synth_root, tmp_path):
    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
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


def test_mismatched_or_mistyped_configs_are_refused(synth_root, tmp_path):
    out = train_small("rd", synth_root, "grid", tmp_path / "ck", epochs=1, batch_size=4)
    cfg = json.loads((out / "config.json").read_text())
    for mutate, match in [
        (lambda c: c["settings"]["plan"].update(decoder_blocks=[3, 3, 3]), "do not match"),
        (lambda c: c["settings"]["plan"].update(decoder_blocks="many"), "decoder_blocks must be a list"),
        (lambda c: c["settings"].update(extra=1), "unknown \\['extra'\\]"),
        (lambda c: c.update(kind="gan"), "unknown kind .gan."),
    ]:
        bad = json.loads(json.dumps(cfg))
        mutate(bad)
        (out / "config.json").write_text(json.dumps(bad))
        with pytest.raises(PackdError, match=match):
            load_model(out)
