import json

import numpy as np
import pytest
import torch
from conftest import TEACHER, train_small
from typer.testing import CliRunner

import packd.evaluation.fewshot as fewshot
from packd.cli import app
from packd.data.preprocess import InputSpec
from packd.data.synth import Counts, synthesize
from packd.errors import PackdError
from packd.evaluation.fewshot import draw_support_sets, evaluate_fewshot, load_supports
from packd.methods.knn.model import NearestNeighbour
from packd.models.loading import load_scorer
from packd.models.scoring import Scorer

SPEC = InputSpec(64, (0.5,) * 3, (0.5,) * 3)


def test_support_draws_are_fixed_and_distinct(synth_root):
    a = draw_support_sets(synth_root, "grid", 3, 4, seed=0)
    b = draw_support_sets(synth_root, "grid", 3, 4, seed=0)
    c = draw_support_sets(synth_root, "grid", 3, 4, seed=1)
    assert a == b and a != c and len(a) == 4
    assert all(len({s.path for s in run}) == 3 and all(s.label == 0 for s in run) for run in a)
    assert len({tuple(s.path for s in run) for run in a}) > 1
    with pytest.raises(PackdError, match="fewer than --shots"):
        draw_support_sets(synth_root, "grid", 99, 1)
    with pytest.raises(PackdError, match="at least 1"):
        draw_support_sets(synth_root, "grid", 0, 1)
    with pytest.raises(PackdError, match="empty support set"):
        load_supports([], SPEC)


def test_knn_baseline_finds_the_odd_patch(effnet_teacher):
    scorer = Scorer(NearestNeighbour(effnet_teacher, rotations=1), SPEC, few_shot=True)
    normal = torch.zeros(1, 3, 64, 64)
    normal[:, :, ::8] = 1.0
    bank = scorer.prototypes(normal)
    assert bank[0].shape == (64, 40 + 112)  # 8x8 stage-2 patches of one support
    same, _ = scorer(normal, bank)  # the support itself: distance zero up to rounding
    odd = normal.clone()
    odd[:, :, 40:52, 40:52] = -1.0
    scores, maps = scorer(odd, bank)
    peak = np.unravel_index(maps[0].argmax().item(), (64, 64))
    assert same.item() < 0.02 * scores.item() and 36 <= peak[0] <= 56 and 36 <= peak[1] <= 56


def test_fewshot_protocol_report_and_repeat(synth_root, tmp_path):
    ck = train_small("packd", synth_root, ["grid"], tmp_path / "pk", epochs=1, batch_size=2, shots=2, prototypes=4,
                     rotations=2, cds_weight=0.0)
    scorer, cfg = load_scorer(ck)
    assert cfg["kind"] == "packd" and cfg["settings"]["prototypes"] == 4 and cfg["settings"]["rotations"] == 2
    rep = evaluate_fewshot(scorer, synth_root, ["disc"], shots=2, runs=3, seed=0, json_path=tmp_path / "r.json",
                           progress=False)
    runs = rep["categories"]["disc"]["runs"]
    assert len(runs) == 3 and len(rep["categories"]["disc"]["support_sets"]) == 3 and rep["shots"] == 2
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        vals = [r[key] for r in runs]
        assert rep["categories"]["disc"]["mean"][key] == pytest.approx(np.mean(vals))
        assert rep["categories"]["disc"]["std"][key] == pytest.approx(np.std(vals))
    assert len({r["pixel_auroc"] for r in runs}) > 1  # different supports, different prototypes
    again = evaluate_fewshot(scorer, synth_root, ["disc"], supports_from=tmp_path / "r.json", progress=False)
    assert again["categories"]["disc"]["runs"] == runs and again["shots"] == 2 and again["runs"] == 3
    assert json.loads((tmp_path / "r.json").read_text())["categories"]["disc"]["support_sets"][0][0].startswith(
        "disc/train/good/")
    with pytest.raises(PackdError, match="not --shots 3"):
        evaluate_fewshot(scorer, synth_root, ["disc"], shots=3, supports_from=tmp_path / "r.json", progress=False)


def test_models_without_support_path_are_scored_once_per_category(synth_root, tmp_path, monkeypatch):
    ck = train_small("rd", synth_root, "disc", tmp_path / "rd", epochs=1, batch_size=4)
    calls = []
    real = fewshot.predict_split
    monkeypatch.setattr(fewshot, "predict_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    rep = evaluate_fewshot(load_scorer(ck)[0], synth_root, ["disc", "grid"], shots=2, runs=3, progress=False)
    assert len(calls) == 2  # one prediction per category, not per run
    r = rep["categories"]["disc"]["runs"]
    assert r[0] == r[1] == r[2] and rep["std"]["image_auroc"] == pytest.approx(0.0, abs=1e-12)


def test_cli_packd_and_memkd(synth_root, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--kind", "packd", "--data", str(synth_root), "--categories", "grid",
                            "--teacher", TEACHER, "--image-size", "64", "--epochs", "1",
                            "--batch-size", "2", "--shots", "2", "--prototypes", "3", "--rotations", "1",
                            "--cds-weight", "0", "--out", str(tmp_path / "pk")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "pk"), "--data", str(synth_root),
                            "--shots", "1", "--runs", "2", "--json", str(tmp_path / "fs.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "fs.json").read_text())
    assert list(rep["categories"]) == ["disc"]  # default targets: categories not meta-trained on
    assert rep["shots"] == 1 and rep["runs"] == 2 and rep["kind"] == "packd"
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "pk"), "--data", str(synth_root),
                            "--supports-from", str(tmp_path / "fs.json"), "--json", str(tmp_path / "again.json")])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["shots"] == 1 and again["categories"]["disc"]["runs"] == rep["categories"]["disc"]["runs"]
    r = runner.invoke(app, ["train", "--kind", "memkd", "--data", str(synth_root), "--categories", "disc",
                            "--teacher", TEACHER, "--image-size", "64", "--epochs", "1",
                            "--batch-size", "4", "--slots", "5", "--exemplars", "3", "--out", str(tmp_path / "mk")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "mk" / "config.json").read_text())["settings"]["slots"] == 5
    r = runner.invoke(app, ["train", "--kind", "packd", "--data", str(synth_root), "--categories", "grid,disc",
                            "--preset", "paper", "--out", str(tmp_path / "x")])
    assert isinstance(r.exception, PackdError) and "wide_resnet50_2" in str(r.exception)  # paper teacher, offline


def test_default_categories_are_the_same_for_both_eval_paths(synth_root, tmp_path):
    """An RD checkpoint evaluated on another dataset: full-shot and --shots use the same categories."""
    ck = train_small("rd", synth_root, "grid", tmp_path / "rd", epochs=1, batch_size=4)
    other = tmp_path / "other"
    synthesize(other, seed=1, size=64, categories=["nut"], counts=Counts(train=3, test_good=2, test_defect=1))
    runner = CliRunner()
    full = runner.invoke(app, ["eval", "--checkpoint", str(ck), "--data", str(other), "--json", str(tmp_path / "a")])
    shot = runner.invoke(app, ["eval", "--checkpoint", str(ck), "--data", str(other), "--shots", "1", "--runs", "1",
                               "--json", str(tmp_path / "b")])
    assert full.exit_code == 0 and shot.exit_code == 0, (full.output, shot.output)
    a, b = (json.loads((tmp_path / n).read_text()) for n in "ab")
    assert list(a["categories"]) == list(b["categories"]) == ["nut"]
    assert a["categories"]["nut"]["image_auroc"] == b["categories"]["nut"]["mean"]["image_auroc"]


def test_prototype_swap_diagnostic(synth_root, effnet_teacher):
    """swap="other" scores a category with the next category's prototypes (same k and run), "zero" with zeros."""
    from packd.data.datasets import AnomalyDataset, list_split
    from packd.evaluation.evaluate import category_metrics, predict

    scorer = Scorer(NearestNeighbour(effnet_teacher, rotations=1), SPEC, few_shot=True)
    cats = ["grid", "disc"]
    reps = {swap: evaluate_fewshot(scorer, synth_root, cats, shots=2, runs=1, swap=swap, progress=False)
            for swap in fewshot.SWAPS}
    assert [r["prototypes"] for r in reps.values()] == list(fewshot.SWAPS)
    test = AnomalyDataset(list_split(synth_root, "grid", "test"), SPEC)
    for swap, donor in (("own", "grid"), ("other", "disc")):
        protos = scorer.prototypes(load_supports(draw_support_sets(synth_root, donor, 2, 1, 0)[0], SPEC))
        ref = category_metrics(predict(scorer, test, protos, device="cpu"))
        assert reps[swap]["categories"]["grid"]["runs"][0]["pixel_auroc"] == pytest.approx(ref["pixel_auroc"])
    bank = scorer.prototypes(load_supports(draw_support_sets(synth_root, "grid", 2, 1, 0)[0], SPEC))
    ref = category_metrics(predict(scorer, test, [torch.zeros_like(bank[0])], device="cpu"))
    assert reps["zero"]["categories"]["grid"]["runs"][0]["pixel_auroc"] == pytest.approx(ref["pixel_auroc"])
    with pytest.raises(PackdError, match="swap must be one of"):
        evaluate_fewshot(scorer, synth_root, cats, shots=2, runs=1, swap="mine", progress=False)
    with pytest.raises(PackdError, match="at least two categories"):
        evaluate_fewshot(scorer, synth_root, ["grid"], shots=2, runs=1, swap="other", progress=False)
