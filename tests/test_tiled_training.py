"""Training on tiles (`packd train --tile S`): RD, MemKD and PACKD see random tile crops of the training frames,
new each epoch and reproducible, so a resumed run equals an uninterrupted one; a tile that does not fit is one
line before any training."""

import json

import numpy as np
import pytest
import torch
from conftest import SMALL

from packd.data.datasets import AnomalyDataset, list_split
from packd.data.preprocess import InputSpec, Preprocess, load_image
from packd.data.synth import Counts, synthesize
from packd.errors import PackdError
from packd.models.loading import load_model
from packd.training.train import configure, train

SPEC = InputSpec(64, (0.5,) * 3, (0.5,) * 3)


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    synthesize(root, seed=2, size=128, categories=["grid", "carpet"], counts=Counts(train=6, test_good=1,
                                                                                    test_defect=1),
               defect_window=40)
    return root


def _train(kind, root, categories, out, tile, **options):
    run, settings = configure(kind, **{**SMALL, **options})
    return train(kind, data=root, categories=categories, out=out, run=run, settings=settings, progress=False,
                 tile=tile)


def test_a_tile_dataset_gives_crops_of_the_frame_new_each_epoch_and_reproducible(frames_root):
    samples = list_split(frames_root, "carpet", "test")
    defect = next(i for i, s in enumerate(samples) if s.label)
    data = AnomalyDataset(samples, SPEC, tile=48, seed=3)
    x, mask, _ = data[defect]
    frame = load_image(samples[defect].path)
    windows = np.lib.stride_tricks.sliding_window_view(frame, (48, 48, 3))[:, :, 0]
    with torch.no_grad():
        match = [(y, xx) for y in range(81) for xx in range(81)
                 if torch.allclose(Preprocess(SPEC)(torch.from_numpy(windows[y, xx].copy())[None])[0], x)]
    assert len(match) == 1  # one window of the frame, resized to the model's input
    assert x.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    assert torch.equal(data[defect][0], x)  # the same within an epoch
    data.set_epoch(1)
    assert not torch.equal(data[defect][0], x)  # new crops the next epoch
    again = AnomalyDataset(samples, SPEC, tile=48, seed=3)
    again.set_epoch(1)
    assert torch.equal(again[defect][0], data[defect][0])  # from (seed, epoch, index) only


def test_rd_trained_on_tiles_resumes_exactly_and_records_its_tile(frames_root, tmp_path):
    straight = _train("rd", frames_root, "grid", tmp_path / "a", 64, epochs=2, batch_size=4)
    _train("rd", frames_root, "grid", tmp_path / "b", 64, epochs=1, batch_size=4)
    resumed = _train("rd", frames_root, "grid", tmp_path / "b", 64, epochs=2, batch_size=4)
    wa, wb = load_model(straight)[0].state_dict(), load_model(resumed)[0].state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)
    assert json.loads((straight / "config.json").read_text())["train"]["tile"] == 64
    with pytest.raises(PackdError, match="other settings"):  # another tile is another run
        _train("rd", frames_root, "grid", tmp_path / "b", 32, epochs=3, batch_size=4)
    whole = _train("rd", frames_root, "grid", tmp_path / "c", 0, epochs=2, batch_size=4)
    wc = load_model(whole)[0].state_dict()
    assert not all(torch.allclose(wa[k].float(), wc[k].float(), atol=1e-6) for k in wa)  # tiles, not frames


@pytest.mark.parametrize("kind, options", [
    ("memkd", dict(slots=6, exemplars=3)),
    ("packd", dict(shots=2, prototypes=4, rotations=2, categories_per_batch=2)),
])
def test_memkd_and_packd_train_on_tiles(frames_root, tmp_path, kind, options):
    out = _train(kind, frames_root, ["grid", "carpet"] if kind == "packd" else "grid", tmp_path / kind, 64,
                 epochs=1, batch_size=4, **options)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["tile"] == 64 and np.isfinite(config["train"]["history"]).all()


def test_a_tile_that_does_not_fit_or_a_training_free_kind_is_one_line_before_training(frames_root, tmp_path):
    with pytest.raises(PackdError, match="--tile 200 does not fit in the 128x128 training image"):
        _train("rd", frames_root, "grid", tmp_path / "a", 200, epochs=1)
    with pytest.raises(PackdError, match="a knn model is training-free"):
        _train("knn", frames_root, "grid", tmp_path / "b", 64)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_tile_trained_checkpoint_used_on_whole_frames_is_warned_about(frames_root, tmp_path):
    """Exported or evaluated without --tile, a model trained on tiles sees whole frames resized: wrong, silently,
    before (issue 31). One warning line on stderr says what to add; with --tile there is none."""
    import subprocess
    import sys
    from pathlib import Path

    ck = _train("rd", frames_root, "grid", tmp_path / "ck", 48, epochs=1, batch_size=4)
    export = Path(sys.executable).with_name("packd-export")
    whole = subprocess.run([export, str(ck), "--out", str(tmp_path / "b"), "--max-batch", "2", "--engines", "never"],
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert whole.stderr.strip() == ("warning: this checkpoint was trained on 48 px tiles (packd train --tile 48) but "
                                    "is used on whole frames resized to its input: add --tile 48 and --frame-size "
                                    "HxW (the camera's frame)")
    out = " ".join(whole.stdout.split())
    assert "6 normal 64x64 frames of 1 training categories read" in out
    assert "default threshold: grid (1 of 1), 6 frames" in out
    tiled = subprocess.run([export, str(ck), "--out", str(tmp_path / "t"), "--max-batch", "2", "--engines", "never",
                            "--tile", "48", "--overlap", "8", "--frame-size", "128x128"],
                           capture_output=True, text=True, timeout=300)
    assert tiled.returncode == 0 and "warning" not in tiled.stderr, tiled.stderr
    assert "default threshold: grid (1 of 1), 6 frames, 9 tiles each" in " ".join(tiled.stdout.split())
    evaluated = subprocess.run([sys.executable, "-m", "packd.cli", "eval", "--checkpoint", str(ck),
                                "--data", str(frames_root), "--categories", "grid"],
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0 and "trained on 48 px tiles" in evaluated.stderr, evaluated.stderr
