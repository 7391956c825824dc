"""The frozen teacher's cache: the same losses as computing the maps every step, the teacher run once per (image,
rotation), a cache that does not fit skipped with one line, and none with tile crops."""

import copy

import numpy as np
import pytest
import torch
from conftest import SMALL

from packd.data.preprocess import InputSpec
from packd.methods import METHODS
from packd.training.settings import RunConfig
from packd.training.teacher_features import TeacherFeatures
from packd.training.train import configure

SPEC = InputSpec(64, (0.5,) * 3, (0.5,) * 3)
OPTIONS = {"rd": {"norm": "group"}, "memkd": {"slots": 6, "exemplars": 3},
           "packd": {"prototypes": 5, "rotations": 2}}


@pytest.fixture
def two_threads():
    """The gradients are compared at 1e-4 with the 2 threads training uses: one thread (a pytest-xdist worker's)
    picks other convolution kernels for the cached batch than for the recomputed one, which moves the smallest
    gradients by about 0.1 % of their tensor's largest."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _training(kind, effnet_teacher, data, cache_gb, categories=("grid", "disc")):
    torch.manual_seed(0)
    run, settings = configure(kind, **{**SMALL, "batch_size": 4, **OPTIONS[kind]})
    model, settings = METHODS[kind].build(copy.deepcopy(effnet_teacher), settings)
    calls = []
    model.teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    training = METHODS[kind].training(model, settings, run=run, data=data, categories=list(categories), spec=SPEC,
                                      cache_gb=cache_gb)
    return model, training, calls


@pytest.mark.parametrize("kind", ["rd", "memkd", "packd"])
def test_cached_teacher_maps_give_the_same_losses_and_run_the_teacher_once(kind, effnet_teacher, synth_root,
                                                                            two_threads):
    model, plain, plain_calls = _training(kind, effnet_teacher, synth_root, cache_gb=0)
    cached_model, cached, cached_calls = _training(kind, effnet_teacher, synth_root, cache_gb=1)
    model.train(), cached_model.train()
    for epoch in range(2):
        for item in plain.batches(epoch):
            a, b = plain.loss(model, item), cached.loss(cached_model, item)
            assert b.item() == pytest.approx(a.item(), rel=1e-5, abs=1e-6)
            a.backward(), b.backward()  # the same gradients too: the student learns the same thing
            for p, q in zip(model.parameters(), cached_model.parameters()):
                if p.grad is not None:
                    assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6)
            model.zero_grad(), cached_model.zero_grad()
    rotations = OPTIONS[kind].get("rotations", 1)
    images = 16  # grid and disc: 8 training images each
    memkd_exemplars = 3 if kind == "memkd" else 0  # encoded once when training is built, either way
    probe = 1  # one image, to size the cache
    assert sum(cached_calls) == probe + images * rotations + memkd_exemplars  # each (image, rotation) once
    assert sum(plain_calls) - memkd_exemplars >= 2 * images * rotations  # without: every image every epoch, or more


def test_a_cache_that_does_not_fit_is_skipped_with_one_line(effnet_teacher, synth_root, capsys):
    model, training, calls = _training("rd", effnet_teacher, synth_root, cache_gb=1e-6)
    for item in training.batches(0):
        training.loss(model, item)
    out = capsys.readouterr().out
    assert "teacher cache: 16 images x 1 rotation(s) take 0.00" in out and "above --teacher-cache-gb 1e-06" in out
    assert out.count("teacher cache") == 1 and "training without it" in out
    assert len(calls) == training.steps + 1  # the probe, then the teacher at every step


def test_cache_size_is_counted_from_the_maps(effnet_teacher):
    images = torch.randn(5, 3, 64, 64)
    features = TeacherFeatures(effnet_teacher, lambda i: images[i], 5, rotations=3, cache_gb=1)
    size, dtype = features.cache_bytes()
    assert dtype == torch.float32 and size == 5 * 3 * 4 * (24 * 16 * 16 + 40 * 8 * 8 + 112 * 4 * 4)
    maps = features.maps(np.array([4, 1]), rotations=2)
    assert features.cached
    with torch.no_grad():
        expected = effnet_teacher(torch.cat([images[[4, 1]], torch.rot90(images[[4, 1]], 1, dims=(2, 3))]))
    assert all(torch.allclose(m, e, atol=1e-5) for m, e in zip(maps, expected))
    with pytest.raises(ValueError, match="4 rotations asked of features made for 3"):
        features.maps(np.array([0]), rotations=4)


def test_tile_crops_are_never_cached(effnet_teacher, synth_root):
    run = RunConfig(**{**SMALL, "batch_size": 4})
    _, settings = configure("rd", **SMALL)
    model, settings = METHODS["rd"].build(copy.deepcopy(effnet_teacher), settings)
    calls = []
    model.teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    training = METHODS["rd"].training(model, settings, run=run, data=synth_root, categories=["grid"], spec=SPEC,
                                      tile=48, cache_gb=1)
    for epoch in range(2):
        for item in training.batches(epoch):
            training.loss(model, item)
    assert len(calls) == 2 * training.steps  # new crops each epoch: encoded at every step
