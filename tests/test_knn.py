"""The training-free nearest-neighbour kind: checkpoint without training, distances, bounded banks,
ONNX parity through the bundle, the runtime, and the ViT (DINOv2-style) feature path."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import FRAME, train_small
from typer.testing import CliRunner

from packd.cli import app
from packd.data.preprocess import InputSpec
from packd.models.loading import load_scorer
from packd.models.scoring import AnomalyMap
from packd_export.bundle import export_bundle
from packd_export.check import check_bundle
from packd_export.graphs import QueryGraph, SupportGraph
from packd_runtime import Detector, Prototypes


def _frames(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *FRAME, 3), dtype=np.uint8)


def test_knn_checkpoint_is_written_at_once_and_evaluates(synth_root, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--kind", "knn", "--data", str(synth_root), "--categories", "grid",
                            "--teacher", "tf_efficientnet_lite0", "--image-size", "64", "--distance", "l2",
                            "--score", "top1", "--out", str(tmp_path / "knn")])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "knn" / "config.json").read_text())
    assert cfg["kind"] == "knn" and cfg["train"]["epochs_done"] == 0 and not (tmp_path / "knn" / "trainer.pt").exists()
    assert cfg["settings"] == {"rotations": 4, "distance": "l2", "score": "top1", "max_bank": 0}
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "knn"), "--data", str(synth_root), "--shots", "1",
                            "--runs", "2", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert list(rep["categories"]) == ["disc"] and rep["kind"] == "knn" and rep["runs"] == 2


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_both_distances_find_the_odd_patch(synth_root, tmp_path, distance):
    scorer, _ = load_scorer(train_small("knn", synth_root, "grid", tmp_path / "k", rotations=1, distance=distance))
    normal = torch.zeros(1, 3, 64, 64)
    normal[:, :, ::8] = 1.0
    bank = scorer.prototypes(normal)
    assert bank[0].shape == (64, 40 + 112)  # 8x8 stage-2 patches of one support
    if distance == "cosine":
        assert torch.allclose(bank[0].norm(dim=1), torch.ones(64), atol=1e-5)
    same, _ = scorer(normal, bank)
    odd = normal.clone()
    odd[:, :, 40:52, 40:52] = -1.0
    scores, maps = scorer(odd, bank)
    peak = np.unravel_index(maps[0].argmax().item(), (64, 64))
    assert same.item() < 0.02 * scores.item() and 36 <= peak[0] <= 56 and 36 <= peak[1] <= 56


def test_top1_image_score_is_the_mean_of_the_top_percent_of_patches():
    d = torch.zeros(2, 20, 20)
    d[0].view(-1)[:4] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # 400 patches: the top 1 % is 4 of them
    scores, maps = AnomalyMap(64, score="top1")([d])
    assert scores[0].item() == pytest.approx(2.5) and scores[1].item() == 0.0 and maps.shape == (2, 64, 64)


def test_knn_bundle_parity_bounded_bank_and_runtime(checkpoints, bundles, tmp_path):
    manifest, path = bundles["knn"]
    assert manifest.kind == "knn" and manifest.prototypes.max_count == 100
    assert manifest.limits.prototypes == 100 and manifest.prototypes.per_shot == 2 * 64
    assert check_bundle(path).kind == "knn"
    scorer = load_scorer(checkpoints["knn"])[0]
    support, query = SupportGraph(scorer).eval(), QueryGraph(scorer).eval()
    sup = ort.InferenceSession(str(path / "support.onnx"), providers=["CPUExecutionProvider"])
    qry = ort.InferenceSession(str(path / "query.onnx"), providers=["CPUExecutionProvider"])
    s = _frames(3, 1)
    (bank,) = sup.run(None, {"images": s})
    with torch.no_grad():
        (tbank,) = support(torch.from_numpy(s))
    assert bank.shape == (3 * 128, 152) and np.abs(bank - tbank.numpy()).max() < 1e-4
    x = _frames(3, 2)
    for n in (7, 100):  # other bank sizes than at export
        scores, maps = qry.run(None, {"images": x, "prototypes_1": bank[:n]})
        with torch.no_grad():
            ts, tm = query(torch.from_numpy(x), torch.from_numpy(bank[:n]))
        tol = 1e-4 * float(tm.max() - tm.min())
        assert np.abs(maps - tm.numpy()).max() <= tol and np.abs(scores - ts.numpy()).max() <= tol
    with Detector.open(path, backend="onnxruntime") as det:  # the runtime bounds the bank like training does
        protos = det.prototypes(s)
        assert protos.arrays[0].shape == (100, 152)
        with torch.no_grad():
            expected = scorer.prototypes(QueryGraph(scorer).preprocess(torch.from_numpy(s)))[0].numpy()
        assert np.abs(protos.arrays[0] - expected).max() < 1e-4
        protos.save(tmp_path / "bank.npz")
        r = det.detect(x, Prototypes.load(tmp_path / "bank.npz"))
        with torch.no_grad():
            ts, _ = query(torch.from_numpy(x), torch.from_numpy(protos.arrays[0]))
        assert np.abs(r.scores - ts.numpy()).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_knn_precisions_keep_distances_fp32(checkpoints, tmp_path, precision):
    manifest = export_bundle(checkpoints["knn"], tmp_path / precision, precision=precision, max_batch=2,
                             max_shots=2, frame_size=FRAME, engines="never")
    assert check_bundle(tmp_path / precision).precision == precision and np.isfinite(manifest.threshold)
    with Detector.open(tmp_path / precision, backend="onnxruntime") as det:
        det.prototypes(_frames(2, 3))
        r = det.detect(_frames(2, 4))
    assert np.isfinite(r.maps).all() and r.maps.dtype == np.float32


@pytest.mark.slow
def test_vit_patch_tokens_export_with_a_random_dinov2(synth_root, tmp_path):
    """DINOv2 ViT-S/14 features (AnomalyDINO's choice). No DINOv2 weights are on these machines: the
    path is checked with a randomly initialised teacher, for shapes, export and parity only."""
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        ck = train_small("knn", synth_root, ["grid", "disc"], tmp_path / "vit", teacher="vit_small_patch14_dinov2",
                         image_size=56, random_teacher=True, rotations=1, score="top1")
    scorer, cfg = load_scorer(ck)
    assert scorer.model.teacher.vit and scorer.model.prototype_channels == (384,)
    assert cfg["teacher"]["source"] == "random"
    manifest = export_bundle(ck, tmp_path / "b", max_batch=2, max_shots=2, frame_size=(60, 60), engines="never")
    assert manifest.prototypes.per_shot == 16 and manifest.limits.prototypes == 32
    rng = np.random.default_rng(0)
    supports, queries = (rng.integers(0, 256, (2, 60, 60, 3), dtype=np.uint8) for _ in range(2))
    with Detector.open(tmp_path / "b", backend="onnxruntime") as det:
        protos = det.prototypes(supports)
        r = det.detect(queries)
    with torch.no_grad():
        ts, tm = QueryGraph(scorer)(torch.from_numpy(queries), torch.from_numpy(protos.arrays[0]))
    assert protos.arrays[0].shape == (32, 384) and float(tm.max() - tm.min()) > 1e-3
    tol = 1e-4 * float(tm.max() - tm.min())
    assert np.abs(r.maps - tm.numpy()).max() <= tol and np.abs(r.scores - ts.numpy()).max() <= tol


@pytest.mark.filterwarnings("ignore:teacher vit_small:UserWarning")
def test_vit_teachers_size_rules(synth_root, tmp_path):
    from packd.errors import PackdError

    with pytest.raises(PackdError, match="multiple of 14"):
        train_small("knn", synth_root, "grid", tmp_path / "v", teacher="vit_small_patch14_dinov2", image_size=64,
                    random_teacher=True)
    with pytest.raises(PackdError, match="distillation needs a CNN teacher"):
        train_small("rd", synth_root, "grid", tmp_path / "r", teacher="vit_small_patch14_dinov2", image_size=56,
                    random_teacher=True, epochs=1)
    assert InputSpec(56, (0.5,) * 3, (0.5,) * 3).image_size == 56
