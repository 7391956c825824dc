from dataclasses import replace

import pytest
import torch

from packd.errors import PackdError
from packd.methods.rd.model import ReverseDistillation
from packd.models.losses import kd_loss
from packd.models.score_settings import ScoreSettings, parse_weights
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


@pytest.mark.parametrize("text, message", [("1,x,1", "comma-separated"), ("0,0,0", "not all zero"),
                                           ("1,-1,1", "non-negative"), ("1,inf,1", "finite"), ("1,1", "3 weights")])
def test_stage_weights_setting_is_checked(text, message):
    with pytest.raises(PackdError, match=message):
        ScoreSettings(stage_weights=text)
    assert parse_weights("0.5, 1,2") == (0.5, 1.0, 2.0)
