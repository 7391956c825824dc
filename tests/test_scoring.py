"""The one scoring path (`packd.models.scoring`): stage maps upsampled, weighted, summed and blurred as scipy blurs,
the image score (max inside the border, or AnomalyDINO's top 1 %), and the `Scorer` interface every kind sits
behind (prototypes bounded with the runtime's coreset, the export limits, the one-line errors). Fast: no teacher."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from packd.data.preprocess import InputSpec
from packd.errors import PackdError
from packd.models.score_settings import ScoreSettings
from packd.models.scoring import AnomalyMap, Scorer, cosine_distances, gaussian_kernel1d
from packd_runtime.coreset import bound_prototypes


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


def test_anomaly_map_rejects_tiny_images():
    with pytest.raises(ValueError, match="blur radius"):
        AnomalyMap(16)


def test_the_kernel_is_scipys():
    k = gaussian_kernel1d(4.0)
    impulse = np.zeros(65)
    impulse[32] = 1
    assert k.dtype == torch.float32 and k.numel() == 33 and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(k.numpy(), gaussian_filter(impulse, sigma=4, mode="constant")[16:49], atol=1e-7)
    assert gaussian_kernel1d(2.0).numel() == 17 and gaussian_kernel1d(4.0, truncate=2.0).numel() == 17
    assert gaussian_kernel1d(1.0)[1] / gaussian_kernel1d(1.0)[4] == pytest.approx(np.exp(-4.5), rel=1e-5)


def test_cosine_distances_are_one_minus_cosine_per_pixel_in_fp32():
    t = [torch.tensor([[[[1.0]], [[0.0]]]]), torch.randn(2, 3, 4, 4, dtype=torch.float16)]
    s = [torch.tensor([[[[0.0]], [[2.0]]]]), t[1].clone()]
    d = cosine_distances(t, s)
    assert d[0].shape == (1, 1, 1) and float(d[0]) == pytest.approx(1.0)  # orthogonal
    assert d[1].dtype == torch.float32 and d[1].shape == (2, 4, 4) and d[1].abs().max() < 1e-3
    assert float(cosine_distances([torch.ones(1, 2, 1, 1)], [-torch.ones(1, 2, 1, 1)])[0]) == pytest.approx(2.0)
    assert float(cosine_distances([torch.zeros(1, 2, 1, 1)], [torch.ones(1, 2, 1, 1)])[0]) == pytest.approx(1.0)


def test_the_top1_score_is_the_mean_of_the_top_percent_of_the_first_maps_patches():
    d = torch.zeros(2, 20, 20)  # 400 patches: the top 1 % is 4
    d[0].view(-1)[:5] = torch.tensor([8.0, 6.0, 4.0, 2.0, 1.0])
    d[1].view(-1)[7] = 3.0
    scores, maps = AnomalyMap(64, score="top1")([d, torch.full((2, 4, 4), 100.0)])
    assert scores.tolist() == pytest.approx([5.0, 0.75]) and maps.shape == (2, 64, 64)
    one = torch.zeros(1, 5, 5)
    one[0, 2, 2] = 2.0  # 25 patches: the top one
    assert AnomalyMap(64, score="top1")([one])[0].item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown image score 'mean'"):
        AnomalyMap(64, score="mean")


class Toy(nn.Module):
    """A few-shot kind's interface, tiny: prototypes are the support images' pixels (C = 3), the distance map is each
    pixel's squared distance to its nearest prototype."""

    prototype_channels = (3,)

    def __init__(self, max_prototypes: int = 0, image_score: str = "max"):
        super().__init__()
        self.max_prototypes, self.image_score = max_prototypes, image_score

    def prototypes_per_shot(self, image_size: int) -> int:
        return image_size * image_size

    def prototypes(self, supports):
        return [supports.permute(0, 2, 3, 1).reshape(-1, 3)]

    def distances(self, x, prototypes):
        pixels = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 1, 3)
        d = ((pixels - prototypes[0][None, None]) ** 2).sum(-1).amin(-1)
        return [d.view(x.shape[0], x.shape[2], x.shape[3])]


SPEC = InputSpec(40, (0.5,) * 3, (0.5,) * 3)


def test_a_scorer_takes_prototypes_then_scores_with_them():
    scorer = Scorer(Toy(), SPEC, few_shot=True)
    supports = torch.zeros(2, 3, 40, 40)
    supports[1] += 0.5
    protos = scorer.prototypes(supports)
    assert scorer.prototype_names == ["prototypes_1"] and len(protos) == 1 and protos[0].shape == (3200, 3)
    x = torch.zeros(2, 3, 40, 40)
    x[1, :, 20, 20] = 2.0
    scores, maps = scorer(x, protos)
    assert scores[0] == 0 and maps.shape == (2, 40, 40) and scores[1] > 0
    ref = AnomalyMap(40)(Toy().distances(x, protos))
    assert torch.equal(scores, ref[0]) and torch.equal(maps, ref[1])
    assert scorer.prototype_limit(3) == 3 * 1600
    with pytest.raises(PackdError, match="empty support set"):
        scorer.prototypes(torch.zeros(0, 3, 40, 40))
    with pytest.raises(PackdError, match="^this few-shot model needs prototypes: compute them from the support "
                                         "images first$"):
        scorer(x)
    with pytest.raises(PackdError, match="needs prototypes"):
        scorer(x, [])


def test_a_bounded_bank_is_the_runtimes_coreset_and_caps_the_limit():
    scorer = Scorer(Toy(max_prototypes=50), SPEC, few_shot=True)
    supports = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    protos = scorer.prototypes(supports)
    ref = bound_prototypes([Toy().prototypes(supports)[0].numpy()], 50)[0]
    assert protos[0].shape == (50, 3) and np.array_equal(protos[0].numpy(), ref)
    assert scorer.prototype_limit(1) == 50 and scorer.prototype_limit(8) == 50
    assert Scorer(Toy(max_prototypes=5000), SPEC, few_shot=True).prototype_limit(2) == 3200
    assert Scorer(Toy(max_prototypes=5000), SPEC, few_shot=True).prototype_limit(4) == 5000


def test_a_per_category_scorer_has_no_prototypes_and_a_limit_of_one():
    model = Toy()
    fixed = [torch.zeros(1, 3)]
    model.distances = lambda x, prototypes: Toy.distances(model, x, prototypes or fixed)
    scorer = Scorer(model, SPEC, few_shot=False)
    assert scorer.prototypes(torch.zeros(2, 3, 40, 40)) == [] and scorer.prototype_names == []
    assert scorer.prototype_limit(8) == 1
    scores, maps = scorer(torch.ones(1, 3, 40, 40) * 0.1)
    assert scores.item() == pytest.approx(0.03, rel=1e-4) and maps.shape == (1, 40, 40)


class ThreeStages(Toy):
    """The toy's map as the first of three stage maps, the others zero (the distillation kinds have three)."""

    def distances(self, x, prototypes):
        d = super().distances(x, prototypes)[0]
        return [d, torch.zeros_like(d)[:, ::2, ::2], torch.zeros_like(d)[:, ::4, ::4]]


def test_scoring_settings_reach_the_map():
    x = torch.zeros(1, 3, 40, 40)
    x[0, :, 0, 0] = 1.0
    protos = [torch.zeros(1, 3)]
    plain = Scorer(ThreeStages(), SPEC, few_shot=True, scoring=ScoreSettings(stage_weights="1,1,1", border=0))
    assert plain.anomaly_map.weights is None and plain.anomaly_map.border == 0
    weighted = Scorer(ThreeStages(), SPEC, few_shot=True, scoring=ScoreSettings(stage_weights="2,0,1", border=5))
    assert weighted.anomaly_map.weights == (2.0, 0.0, 1.0) and weighted.anomaly_map.border == 5
    (s1, m1), (s2, m2) = plain(x, protos), weighted(x, protos)
    assert torch.allclose(m2, 2 * m1)  # the weight scales the map
    assert s1 == m1.max() and s2 == m2[0, 5:35, 5:35].max() < m2.max()  # the corner is in the border
    assert Scorer(Toy(image_score="top1"), SPEC, few_shot=True).anomaly_map.score == "top1"
    assert Scorer(Toy(), SPEC, few_shot=True).anomaly_map.weights is None


class Bare(nn.Module):
    """A per-category kind that declares nothing optional (no bank bound, no image score)."""

    def distances(self, x, prototypes):
        return [x.mean(dim=1)]


def test_what_a_kind_does_not_declare_takes_the_defaults():
    scorer = Scorer(Bare(), SPEC, few_shot=False)
    assert scorer.max_prototypes == 0 and scorer.anomaly_map.score == "max" and scorer.anomaly_map.border == 0
    assert scorer.prototype_limit(8) == 1
    x = torch.zeros(1, 3, 40, 40)
    x[0, :, 39, 39] = 1.0  # the far corner: inside the map with no border
    assert scorer(x)[0].item() == pytest.approx(scorer(x)[1].max().item())


def test_the_border_leaves_out_both_far_edges_and_the_blur_kernel_is_no_weight():
    d = torch.zeros(1, 40, 40)
    d[0, 38, 38] = 1.0  # near the bottom-right corner
    scores, maps = AnomalyMap(40, border=5)([d])
    assert scores.item() == pytest.approx(maps[0, 5:35, 5:35].max().item()) and scores.item() < maps.max().item()
    assert AnomalyMap(40).state_dict() == {}  # the Gaussian is rebuilt, never saved into checkpoints
    assert "anomaly_map.kx" not in Scorer(Toy(), SPEC, few_shot=True).state_dict()
