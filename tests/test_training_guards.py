"""What training must never change, and what the teacher cache must not change: the frozen teacher's parameters and
buffers come out of training bit for bit as they went in (BatchNorm statistics included), and a student trained
with the cache has the weights of one trained without it (issue 33: a cache that moved RD's seeds looked like a
regression)."""

import pytest
import torch
from conftest import SMALL
from safetensors.torch import load_file

from packd.methods import METHODS
from packd.models.teachers import create_teacher
from packd.training.train import configure, train

OPTIONS = {"rd": {}, "memkd": {"slots": 6, "exemplars": 3}, "packd": {"shots": 2, "prototypes": 4, "rotations": 2}}
CATEGORIES = {"rd": "grid", "memkd": "grid", "packd": ["grid", "disc"]}


@pytest.fixture
def two_threads():
    """Training's 2 threads (a pytest-xdist worker runs 1): the same convolution kernels for both runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _weights(kind, synth_root, out, cache_gb):
    run, settings = configure(kind, **{**SMALL, "epochs": 2, "batch_size": 4, **OPTIONS[kind]})
    ckpt = train(kind, data=synth_root, categories=CATEGORIES[kind], out=out, run=run, settings=settings,
                 progress=False, teacher_cache_gb=cache_gb)
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rd", "memkd", "packd"])
def test_the_teacher_is_untouched_and_the_cache_changes_no_weight(kind, synth_root, tmp_path, two_threads):
    cached = _weights(kind, synth_root, tmp_path / "cached", cache_gb=1)
    plain = _weights(kind, synth_root, tmp_path / "plain", cache_gb=0)

    _, settings = configure(kind, **{**SMALL, **OPTIONS[kind]})
    fresh, _ = METHODS[kind].build(create_teacher(SMALL["teacher"]), settings)
    teacher = {k: v for k, v in fresh.state_dict().items() if k.startswith("teacher.")}
    assert teacher and any("running_var" in k for k in teacher)  # BatchNorm statistics are among them
    for weights in (cached, plain):
        assert {k for k in weights if k.startswith("teacher.")} == set(teacher)
        changed = [k for k, v in teacher.items() if not torch.equal(weights[k], v)]
        assert changed == [], f"training changed the frozen teacher: {changed[:5]}"

    student = [k for k in plain if not k.startswith("teacher.")]
    assert student and set(cached) == set(plain)
    moved = []
    for k in student:
        a, b = plain[k].double(), cached[k].double()
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * max(a.abs().max().item(), 1e-6)):
            moved.append((k, (a - b).abs().max().item()))
    assert moved == [], f"the cache changed the student's weights: {moved[:5]}"
    assert any(not torch.equal(plain[k], fresh.state_dict()[k]) for k in student if k in fresh.state_dict())
