from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from packd.errors import PackdError
from packd.methods.rd.model import ReverseDistillation
from packd.models.losses import kd_loss
from packd.models.score_settings import ScoreSettings, parse_weights
from packd.models.scoring import AnomalyMap, cosine_distances, gaussian_kernel1d
from packd.models.student_plan import ChannelPlan, plan_for
from packd.models.teachers import create_teacher
from packd.training.settings import from_dict, to_dict


@pytest.mark.parametrize("name, block, n_params_max", [
    ("resnet18", "basic", 40e6),
    ("wide_resnet50_2", "bottleneck", 140e6),
])
def test_student_mirrors_teacher(name, block, n_params_max):
    with pytest.warns(UserWarning):
        teacher = create_teacher(name, random_init=True)
    plan = plan_for(teacher)
    assert plan.block == block
    assert plan.linear == (False,) * 3  # ResNet stages end in a ReLU: the RD reference's student, unchanged
    model = ReverseDistillation(teacher, plan).eval()
    t, s = model(torch.randn(2, 3, 64, 64))
    assert [x.shape for x in t] == [x.shape for x in s]
    assert sum(p.numel() for p in model.parameters()) < n_params_max


def test_wide_resnet_plan_matches_reference_sizes():
    with pytest.warns(UserWarning):
        teacher = create_teacher("wide_resnet50_2", random_init=True)
    model = ReverseDistillation(teacher, plan_for(teacher))
    assert all(isinstance(stage[-1].act, torch.nn.ReLU) for stage in model.stages)
    assert teacher.channels == (256, 512, 1024)
    assert model.ocbe.out_channels == 2048
    trainable = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("teacher"))
    assert 75e6 < trainable < 95e6  # the reference RD trains about 84 M parameters


def test_effnet_student_shapes(effnet_teacher):
    model = ReverseDistillation(effnet_teacher, plan_for(effnet_teacher))
    t, s = model(torch.randn(2, 3, 64, 64))
    assert [tuple(x.shape) for x in s] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.stages.parameters())


def test_plan_roundtrip():
    plan = ChannelPlan((8, 16, 32), "bottleneck", 3, (3, 4, 6), 2, linear=(True, False, True), norm="group")
    assert from_dict(ChannelPlan, to_dict(plan)) == plan
    with pytest.raises(PackdError, match="norm"):
        ChannelPlan((8, 16, 32), norm="layer")


def test_signed_teacher_gets_linear_stage_outputs_when_asked(effnet_teacher):
    """EfficientNet stages end in a linear projection (signed outputs): with stage_outputs="linear" each
    decoder stage's last block is linear so the student can match their negative half (PACKD's student)."""
    assert effnet_teacher.signed_stages() == (True, True, True)
    assert plan_for(effnet_teacher).linear == (False, False, False)  # "relu", RD's and MemKD's validated default
    plan = plan_for(effnet_teacher, stage_outputs="linear")
    assert plan.linear == (True, True, True)
    model = ReverseDistillation(effnet_teacher, plan).eval()
    for stage in model.stages:
        assert isinstance(stage[-1].act, torch.nn.Identity)
        assert all(isinstance(block.act, torch.nn.ReLU) for block in stage[:-1])
    with torch.no_grad():
        _, s = model(torch.randn(2, 3, 64, 64))
    assert all((x < 0).any() for x in s)
    relu = ReverseDistillation(effnet_teacher, replace(plan, linear=(False,) * 3)).eval()
    with torch.no_grad():
        assert all((x >= 0).all() for x in relu(torch.randn(2, 3, 64, 64))[1])


@pytest.mark.parametrize("kind, outputs, norm", [("rd", "relu", "batch"), ("memkd", "relu", "batch"),
                                                  ("packd", "linear", "group")])
def test_each_kind_chooses_its_student(effnet_teacher, kind, outputs, norm):
    """RD and MemKD keep the reference student (ReLU outputs, BatchNorm: linear outputs cost RD 0.14 AUROC);
    PACKD's validated student ends linear with GroupNorm. The choice is a setting, recorded in the plan."""
    from packd.methods import method
    from packd.training.train import configure

    _, settings = configure(kind)
    assert (settings.stage_outputs, settings.norm) == (outputs, norm)
    _, resolved = method(kind).build(effnet_teacher, settings)
    assert resolved.plan.linear == (outputs == "linear",) * 3 and resolved.plan.norm == norm
    _, other = method(kind).build(effnet_teacher, replace(settings, stage_outputs="linear", norm="group"))
    assert other.plan.linear == (True,) * 3 and other.plan.norm == "group"
    with pytest.raises(PackdError, match="--stage-outputs must be one of relu, linear"):
        configure(kind, stage_outputs="tanh")


def test_group_norm_student_scores_each_image_alone(effnet_teacher):
    """norm="group": no BatchNorm, and an image's student map does not depend on its batch companions."""
    torch.manual_seed(0)
    model = ReverseDistillation(effnet_teacher, plan_for(effnet_teacher, norm="group")).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules() if m not in model.teacher.modules())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        alone = model(x[:1])[1]
        together = model(x)[1]
    assert all(torch.allclose(a[0], b[0], atol=1e-4) for a, b in zip(alone, together))  # BatchNorm: off by O(1)


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


def test_forward_blurs_the_summed_map():
    """forward = bilinear upsampling of each stage map, their sum, then the Gaussian (checked against scipy)."""
    torch.manual_seed(0)
    d = [torch.rand(2, 16, 16), torch.rand(2, 8, 8), torch.rand(2, 4, 4)]
    scores, maps = AnomalyMap(64)(d)
    up = sum(torch.nn.functional.interpolate(x[:, None], size=(64, 64), mode="bilinear", align_corners=False)
             for x in d)[:, 0].numpy().astype(np.float64)
    ref = np.stack([gaussian_filter(m, sigma=4, mode="mirror") for m in up])
    assert np.abs(maps.numpy() - ref).max() < 1e-5
    assert np.abs(maps.numpy() - up).max() > 0.05  # the blur really changes the map
    assert np.allclose(scores.numpy(), ref.reshape(2, -1).max(1), atol=1e-5)


def test_blur_matches_scipy():
    assert gaussian_kernel1d(4.0).numel() == 33
    scorer = AnomalyMap(48)
    x = torch.rand(1, 1, 48, 48)
    ours = scorer.blur(x)
    ref = gaussian_filter(x[0, 0].numpy().astype(np.float64), sigma=4, mode="mirror")
    assert np.abs(ours[0, 0].numpy() - ref).max() < 1e-5


def test_stage_weights_and_border():
    scorer = AnomalyMap(64, weights=(0.0, 1.0, 2.0), border=8)
    flat = [torch.zeros(1, 16, 16), torch.zeros(1, 8, 8), torch.zeros(1, 4, 4)]
    d = [x.clone() for x in flat]
    d[0][0, 8, 8] = 5.0  # stage 1, weight 0: no effect anywhere
    scores, maps = scorer(d)
    assert scores.item() == 0 and maps.abs().max() == 0
    d = [x.clone() for x in flat]
    d[1][0, 4, 4] = 1.0
    scores, maps = scorer(d)
    ref_scores, ref_maps = AnomalyMap(64)([flat[0], d[1] * 1.0, flat[2]])
    assert torch.allclose(maps, ref_maps) and torch.allclose(scores, ref_scores)  # weight 1: unchanged
    d = [x.clone() for x in flat]
    d[2][0, 0, 0] = 1.0  # a corner maximum (zero-padded teacher features put them there)
    d[2][0, 2, 2] = 0.4
    scores, maps = scorer(d)
    assert maps[0, :8].max() > maps[0, 8:56, 8:56].max()  # the map keeps the border...
    assert torch.isclose(scores[0], maps[0, 8:56, 8:56].max())  # ...the image score leaves it out
    with pytest.raises(PackdError, match="border"):
        AnomalyMap(64, border=16)
    with pytest.raises(PackdError, match="2 stage weights for 3"):
        AnomalyMap(64, weights=(1.0, 1.0))(flat)


@pytest.mark.parametrize("text, message", [("1,x,1", "comma-separated"), ("0,0,0", "not all zero"),
                                           ("1,-1,1", "non-negative"), ("1,inf,1", "finite"), ("1,1", "3 weights")])
def test_stage_weights_setting_is_checked(text, message):
    with pytest.raises(PackdError, match=message):
        ScoreSettings(stage_weights=text)
    assert parse_weights("0.5, 1,2") == (0.5, 1.0, 2.0)


def test_anomaly_map_rejects_tiny_images():
    with pytest.raises(ValueError, match="blur radius"):
        AnomalyMap(16)
