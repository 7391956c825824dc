import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from packd.layers import ChannelPlan, plan_for
from packd.losses import kd_loss
from packd.methods.rd import ReverseDistillation
from packd.scoring import AnomalyMap, cosine_distances, gaussian_kernel1d
from packd.settings import from_dict, to_dict
from packd.teachers import create_teacher


@pytest.mark.parametrize("name, block, n_params_max", [
    ("resnet18", "basic", 40e6),
    ("wide_resnet50_2", "bottleneck", 140e6),
])
def test_student_mirrors_teacher(name, block, n_params_max):
    with pytest.warns(UserWarning):
        teacher = create_teacher(name, random_init=True)
    plan = plan_for(name, teacher.channels)
    assert plan.block == block
    model = ReverseDistillation(teacher, plan).eval()
    t, s = model(torch.randn(2, 3, 64, 64))
    assert [x.shape for x in t] == [x.shape for x in s]
    assert sum(p.numel() for p in model.parameters()) < n_params_max


def test_wide_resnet_plan_matches_reference_sizes():
    with pytest.warns(UserWarning):
        teacher = create_teacher("wide_resnet50_2", random_init=True)
    model = ReverseDistillation(teacher, plan_for("wide_resnet50_2", teacher.channels))
    assert teacher.channels == (256, 512, 1024)
    assert model.ocbe.out_channels == 2048
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("teacher"))
    assert 75e6 < trainable < 95e6  # the reference RD trains about 84 M parameters


def test_effnet_student_shapes(effnet_teacher):
    model = ReverseDistillation(effnet_teacher, plan_for("tf_efficientnet_lite0", effnet_teacher.channels))
    t, s = model(torch.randn(2, 3, 64, 64))
    assert [tuple(x.shape) for x in s] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.stages.parameters())


def test_plan_roundtrip():
    plan = ChannelPlan((8, 16, 32), "bottleneck", 3, (3, 4, 6), 2)
    assert from_dict(ChannelPlan, to_dict(plan)) == plan


def test_kd_loss_values():
    a = [torch.randn(3, 4, 5, 5), torch.randn(3, 8, 2, 2)]
    assert kd_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(a, [2 * x for x in a]).item() == pytest.approx(0.0, abs=1e-6)  # cosine ignores scale
    assert kd_loss(a, [-x for x in a]).item() == pytest.approx(4.0, abs=1e-5)  # 2 per stage


def test_anomaly_map_values():
    scorer = AnomalyMap(64)
    t = [torch.randn(2, 4, 16, 16), torch.randn(2, 6, 8, 8), torch.randn(2, 8, 4, 4)]
    scores, maps = scorer(cosine_distances(t, [x.clone() for x in t]))
    assert maps.shape == (2, 64, 64) and maps.dtype == torch.float32
    assert torch.allclose(maps, torch.zeros_like(maps), atol=1e-5)
    s = [x.clone() for x in t]
    s[0][0, :, 5, 5] = -s[0][0, :, 5, 5]  # one opposite feature: distance 2 there
    scores, maps = scorer(cosine_distances(t, s))
    assert scores[0] > 0.05 and scores[1] < 1e-5
    assert torch.equal(scores, maps.flatten(1).amax(1))
    peak = np.unravel_index(maps[0].argmax().item(), (64, 64))
    assert abs(peak[0] - 22) <= 2 and abs(peak[1] - 22) <= 2  # feature (5,5) at stride 4 covers pixel ~22


def test_blur_matches_scipy():
    assert gaussian_kernel1d(4.0).numel() == 33
    scorer = AnomalyMap(48)
    x = torch.rand(1, 1, 48, 48)
    ours = scorer.blur(x)
    ref = gaussian_filter(x[0, 0].numpy().astype(np.float64), sigma=4, mode="mirror")
    assert np.abs(ours[0, 0].numpy() - ref).max() < 1e-5


def test_anomaly_map_rejects_tiny_images():
    with pytest.raises(ValueError, match="blur radius"):
        AnomalyMap(16)
