import numpy as np
import pytest
import torch
import torch.nn.functional as F

from packd.data.preprocess import InputSpec
from packd.errors import PackdError
from packd.methods.packd.episodes import EpisodeSampler
from packd.methods.packd.losses import cds_loss, correspondence_similarity, packd_loss
from packd.methods.packd.model import PACKD, PrototypeExtractor, integrate, prototype_distance
from packd.models.layers import rotate_supports
from packd.models.losses import orthogonality_loss
from packd.models.scoring import Scorer, cosine_distances
from packd.models.student_plan import plan_for

SPEC = InputSpec(64, (0.5,) * 3, (0.5,) * 3)


@pytest.fixture(scope="module")
def model(effnet_teacher):
    torch.manual_seed(0)
    return PACKD(effnet_teacher, plan_for(effnet_teacher, stage_outputs="linear"), n_prototypes=5, rotations=2)


def test_prototypes_are_attention_weighted_means():
    ext = PrototypeExtractor(3, 4)
    const = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1).expand(2, 3, 5, 5)
    p = ext(const)
    assert p.shape == (2, 4, 3)
    assert torch.allclose(p, const[0, :, 0, 0].expand(2, 4, 3), atol=1e-6)  # softmax weights sum to 1
    x = torch.randn(1, 3, 4, 4)
    p = ext(x)[0]
    lo, hi = x.flatten(2).amin(-1), x.flatten(2).amax(-1)
    assert torch.all(p >= lo - 1e-6) and torch.all(p <= hi + 1e-6)  # convex combinations of locations


def test_rotations():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    r = rotate_supports(x, 4)
    assert r.shape == (8, 3, 4, 4)
    assert torch.equal(r[:2], x) and torch.equal(r[2:4], torch.rot90(x, 1, (2, 3)))
    assert torch.equal(rotate_supports(x, 1), x)


def test_integration_picks_most_similar_prototype():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).unsqueeze(0)  # (1,3,2)
    student = torch.tensor([[0.9, 0.1], [0.1, 2.0]]).t().reshape(1, 2, 1, 2)  # two locations
    out = integrate(student, protos)
    assert out.shape == (1, 5, 1, 2)
    assert torch.equal(out[0, :2], student[0])
    assert torch.equal(out[0, 2:4, 0, 0], protos[0, 0]) and torch.equal(out[0, 2:4, 0, 1], protos[0, 1])
    s = F.normalize(student.flatten(2).transpose(1, 2), dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)
    assert torch.allclose(out[0, 4].flatten(), s[0].mean(-1))


def test_query_path_takes_any_prototype_count(model):
    x = torch.randn(2, 3, 64, 64)
    protos = model.prototypes(torch.randn(3, 3, 64, 64))
    assert [tuple(p.shape) for p in protos] == [(3 * 2 * 5, c) for c in model.plan.channels]
    model.eval()
    for n in (1, 7, 40):
        t, s = model(x, [torch.randn(n, c) for c in model.plan.channels])
        assert [a.shape for a in s] == [b.shape for b in t]
    with torch.no_grad():
        _, shared = model(x, protos)
        _, batched = model(x, [p.unsqueeze(0).expand(2, -1, -1) for p in protos])
    assert all(torch.allclose(a, b) for a, b in zip(shared, batched))
    with torch.no_grad():
        _, other = model(x, [p.flip(0) * 2 + 1 for p in protos])
    assert not torch.allclose(shared[0], other[0])  # prototypes really steer the student


def test_orthogonality_loss_values():
    assert orthogonality_loss(torch.eye(4)[None] * 3).item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonality_loss(torch.ones(2, 4, 3)).item() == pytest.approx(1.0)
    v = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert orthogonality_loss(v).item() == pytest.approx(0.5)  # cos 45 deg squared


def _brute_similarity(s, q, w):
    def corr(a, b):
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()

    e, nq, k = s.shape[:3]
    out = torch.zeros(e, nq, k, w.shape[0])
    for ei in range(e):
        for qi in range(nq):
            for n in range(k):
                a = corr(s[ei, qi, n], q[ei, qi]).flatten()
                for x in range(w.shape[0]):
                    out[ei, qi, n, x] = F.cosine_similarity(a, corr(s[ei, qi, n], w[x]).flatten(), dim=0)
    return out


@pytest.mark.parametrize("m, c", [(9, 5), (4, 7)])  # the C x C path (C < M) and the direct path
def test_correspondence_similarity_exact(m, c):
    torch.manual_seed(1)
    s, q, w = torch.randn(2, 2, 3, m, c), torch.randn(2, 2, m, c), torch.randn(4, m, c)  # per-query supports
    assert torch.allclose(correspondence_similarity(s, q, w), _brute_similarity(s, q, w), atol=1e-5)


def test_cds_loss_rewards_matching_positive():
    torch.manual_seed(2)
    s, q = torch.randn(2, 2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    good = cds_loss(s, q, q.flatten(0, 1))  # each student equals its own teacher
    swapped = cds_loss(s, q, q.flip(0).flatten(0, 1))  # students of the other category
    assert good.item() < 0.01 and swapped.item() > 1.0
    with pytest.raises(ValueError, match="two categories"):
        cds_loss(s[:1], q[:1], q[:1].flatten(0, 1))


def episode_maps(model, queries, supports):
    """packd_loss's inputs from images: the teacher maps of queries (E,Q,3,S,S) and supports (E,Q,k,3,S,S)."""
    with torch.no_grad():
        return model.teacher(queries.flatten(0, 1)), model.support_teacher(supports.flatten(0, 2)), supports.shape[:3]


def test_packd_loss_trains_every_part(model):
    torch.manual_seed(3)
    queries, supports = torch.randn(2, 2, 3, 64, 64), torch.randn(2, 2, 2, 3, 64, 64)
    model.train()
    model.zero_grad()
    loss = packd_loss(model, *episode_maps(model, queries, supports), cds_weight=0.5, orth_weight=0.5, tau=0.05)
    loss.backward()
    assert torch.isfinite(loss)
    for part in (model.extractors, model.ocbe, model.stages, model.refine, model.projections):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())


def test_packd_loss_weights_each_term_by_its_own_setting(model, synth_root):
    """Eq. 7: KD + cds_weight * CDS + orth_weight * orthogonality, each weight on its own term, as training
    builds it from the settings (every other test uses 0.5 / 0.5, where a swap is invisible)."""
    from packd.methods.packd.settings import PACKDSettings
    from packd.methods.packd.training import make_training
    from packd.training.settings import RunConfig

    model.eval()  # no dropout or batch statistics: every call below computes the same terms
    settings = PACKDSettings(cds_weight=0.3, orth_weight=0.7, prototypes=5, rotations=2)
    training = make_training(model, settings, run=RunConfig(batch_size=2, image_size=64), data=synth_root,
                             categories=["grid", "disc"], spec=SPEC)
    batch = next(iter(training.batches(0)))  # image indices; the sampler below draws the same and holds the images
    sampler = EpisodeSampler(synth_root, ["grid", "disc"], SPEC, shots=2, queries=1, categories_per_batch=2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(batch, next(sampler.epoch(0))))
    images = np.vectorize(sampler.image, signature="()->(c,h,w)")
    maps = episode_maps(model, *(torch.as_tensor(images(b)) for b in batch))

    def loss(cds, orth):
        with torch.no_grad():
            return packd_loss(model, *maps, cds_weight=cds, orth_weight=orth, tau=0.05).item()

    kd = loss(0.0, 0.0)
    cds, orth = loss(1.0, 0.0) - kd, loss(0.0, 1.0) - kd
    assert cds > 0.01 and orth > 0.01 and abs(cds - orth) > 0.01  # distinguishable terms
    assert loss(0.3, 0.0) == pytest.approx(kd + 0.3 * cds, rel=1e-4)
    assert loss(0.0, 0.7) == pytest.approx(kd + 0.7 * orth, rel=1e-4)
    assert loss(0.3, 0.7) == pytest.approx(kd + 0.3 * cds + 0.7 * orth, rel=1e-4)
    with torch.no_grad():
        built = training.loss(model, batch).item()
    assert built == pytest.approx(kd + 0.3 * cds + 0.7 * orth, rel=1e-4)


def test_episode_sampler(synth_root):
    sampler = EpisodeSampler(synth_root, ["grid", "disc"], SPEC, shots=2, queries=3, categories_per_batch=2, seed=0)
    assert len(sampler) == 16 // 6
    batches = list(sampler.epoch(0))
    q, s = batches[0]
    assert q.shape == (2, 3) and s.shape == (2, 3, 2)  # image indices; each query has its own supports
    n = len(sampler.datasets["grid"])
    assert sampler.count == n + len(sampler.datasets["disc"])
    assert torch.equal(sampler.image(n), sampler.datasets["disc"][0][0])  # indices run category after category
    for e in range(2):
        assert len({int(i) < n for i in np.concatenate([q[e], s[e].ravel()])}) == 1  # one category per episode
        assert not set(s[e].ravel()) & set(q[e])  # supports are never the batch's own queries
    assert len({tuple(s[0, i]) for i in range(3)}) > 1  # drawn per query, not shared by the episode
    again = list(sampler.epoch(0))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    assert not np.array_equal(list(sampler.epoch(1))[0][0], q)
    with pytest.raises(PackdError, match="fewer than shots"):
        EpisodeSampler(synth_root, ["grid"], SPEC, shots=8, queries=4)


def test_scorer_refuses_missing_or_empty_supports(model):
    scorer = Scorer(model, SPEC, few_shot=True)
    with pytest.raises(PackdError, match="empty support set"):
        scorer.prototypes(torch.zeros(0, 3, 64, 64))
    with pytest.raises(PackdError, match="needs prototypes"):
        scorer(torch.zeros(1, 3, 64, 64))


def test_prototype_score_adds_the_nearest_prototype_distance(model):
    x = torch.randn(2, 3, 64, 64)
    protos = model.prototypes(torch.randn(2, 3, 64, 64))
    model.eval()
    with torch.no_grad():
        kd = cosine_distances(*model(x, protos))
        model.prototype_score = 2.0
        both = model.distances(x, protos)
        teacher = model.teacher(x)
    model.prototype_score = 0.0
    for d, k, t, p in zip(both, kd, teacher, protos):
        assert torch.allclose(d, k + 2.0 * prototype_distance(t, p), atol=1e-6)
    f = torch.randn(1, 4, 2, 3)
    p = torch.cat([f[0, :, 1, 2][None] * 3.0, torch.randn(5, 4)])  # one prototype parallel to one location
    dist = prototype_distance(f, p)
    assert dist.shape == (1, 2, 3) and dist[0, 1, 2].abs() < 1e-6 and torch.all(dist >= -1e-6)
    sim = F.normalize(f.flatten(2).transpose(1, 2), dim=-1) @ F.normalize(p, dim=-1).t()
    assert torch.allclose(dist.flatten(), 1 - sim.amax(-1).flatten(), atol=1e-6)


def test_scoring_overrides_change_scoring_not_weights(checkpoints):
    from packd.models.loading import load_scorer

    scorer, config = load_scorer(checkpoints["packd"])
    assert config["settings"]["norm"] == "group" and scorer.model.prototype_score == 1.0
    assert scorer.anomaly_map.border == 4 and scorer.anomaly_map.weights == (0.5, 1.0, 2.0)
    plain, plain_config = load_scorer(checkpoints["packd"], {"prototype_score": 0.0, "border": 0,
                                                             "stage_weights": "1,1,1"})
    assert plain.model.prototype_score == 0.0 and plain.anomaly_map.border == 0 and plain.anomaly_map.weights is None
    assert plain_config["settings"]["border"] == 0  # the config says what this scorer computes
    a, b = scorer.model.state_dict(), plain.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(PackdError, match="not \\['lr'\\]"):
        load_scorer(checkpoints["packd"], {"lr": 1.0})
    with pytest.raises(PackdError, match="rd models take scoring overrides of \\['border', 'stage_weights'\\]"):
        load_scorer(checkpoints["rd"], {"prototype_score": 1.0})
    with pytest.raises(PackdError, match="nothing"):
        load_scorer(checkpoints["knn"], {"border": 2})


def test_paper_preset_is_the_papers_method():
    from packd.training.train import configure

    run, settings = configure("packd", preset="paper")
    assert run.teacher == "wide_resnet50_2" and run.image_size == 256 and run.lr == 5e-4
    assert (settings.prototype_score, settings.norm, settings.stage_weights, settings.border) == (0.0, "batch",
                                                                                                  "1,1,1", 0)
    _, ours = configure("packd")
    assert (ours.prototype_score, ours.norm, ours.border) == (1.0, "group", 8)  # validated on training categories
