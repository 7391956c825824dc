"""`packd eval --tile`: the PyTorch tiled evaluation computes what a tiled bundle of the same model and options
computes (prototypes, scores, stitched maps), reports metrics on the stitched maps, and draws whole-frame overlays
with the regions of interest outlined."""

import json

import numpy as np
import pytest
from PIL import Image

from packd.data.datasets import list_split
from packd.data.preprocess import load_frames
from packd.data.synth import Counts, synthesize
from packd.errors import PackdError
from packd.evaluation.evaluate import evaluate, predict_split
from packd.evaluation.overlays import ROI_COLOUR
from packd.evaluation.tiled import tiled_for
from packd.evaluation.tiling_options import TileOptions, tile_options
from packd.models.loading import load_scorer
from packd_export.bundle import export_bundle
from packd_runtime import Detector

LINE = 128  # frames twice the tests' 64 px model: 9 tiles of 64 px overlapping by 16


@pytest.fixture(scope="module")
def line_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("line")
    synthesize(root, seed=1, size=LINE, categories=["grid"], counts=Counts(train=5, test_good=2, test_defect=1),
               defect_window=40)
    return root


@pytest.mark.parametrize("kind, memory", [("knn", "shared"), ("packd", "shared"), ("knn", "position"),
                                          ("packd", "position")])  # a bounded patch bank; per-stage prototypes
def test_tiled_evaluation_equals_a_tiled_bundle_of_the_same_options(checkpoints, line_data, tmp_path, kind, memory):
    options = TileOptions(tile=64, overlap=16, memory=memory)
    export_bundle(checkpoints[kind], tmp_path / "b", max_batch=8, engines="never",
                  tiles=TileOptions(tile=64, overlap=16, frame_size=(LINE, LINE), memory=memory))
    scorer, _ = load_scorer(checkpoints[kind])
    supports, test = list_split(line_data, "grid", "train")[:2], list_split(line_data, "grid", "test")
    tiled = tiled_for(scorer, options, test, batch_size=5, device="cpu")  # batches that split frames' tiles
    assert tiled.tiling.count == 9
    protos = tiled.prototypes(supports)
    pred = predict_split(scorer, test, protos, tiled=tiled)
    with Detector.open(tmp_path / "b", backend="onnxruntime") as det:
        bundle_protos = det.prototypes(load_frames([s.path for s in supports]))
        got = det.detect(load_frames([s.path for s in test]))
    if memory == "shared":  # 2 frames x 9 tiles pooled, bounded to 100 (knn's bank), or 8 shots' worth (packd)
        assert len(bundle_protos.arrays[0]) == (scorer.max_prototypes or det.max_prototypes)
    else:  # per position: 2 tiles' worth (packd), or knn's bank bound
        n = min(2 * scorer.model.prototypes_per_shot(64), scorer.max_prototypes or 10**9)
        assert all(a.shape[:2] == (9, n) for a in bundle_protos.arrays)
    for a, b in zip(protos, bundle_protos.arrays):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-4)
    assert pred["maps"].shape == got.maps.shape == (len(test), LINE, LINE)
    np.testing.assert_allclose(pred["maps"], got.maps, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(pred["scores"], got.scores, rtol=1e-3, atol=1e-3)
    assert pred["masks"].shape == pred["maps"].shape and pred["masks"][pred["labels"] == 1].any()


def test_a_tiled_full_shot_evaluation_reports_stitched_metrics_and_outlines_its_roi(checkpoints, line_data,
                                                                                    tmp_path):
    roi = (16, 8, 96, 112)
    options = TileOptions(tile=64, overlap=16, rois=(roi,))
    report = evaluate(checkpoints["rd"], line_data, "grid", json_path=tmp_path / "r.json",
                      overlays=tmp_path / "overlays", progress=False, device="cpu", tile=options)
    cat = report["categories"]["grid"]
    assert report["tiling"]["rois"] == [list(roi)] and cat["tiling"] == {"frame": [LINE, LINE], "tiles": 4,
                                                                        "map": [LINE, LINE]}
    assert all(0 <= cat[k] <= 1 for k in ("image_auroc", "pixel_auroc", "aupro"))
    assert json.loads((tmp_path / "r.json").read_text())["tiling"]["tile"] == 64
    scorer, _ = load_scorer(checkpoints["rd"])
    test = list_split(line_data, "grid", "test")
    pred = predict_split(scorer, test, tiled=tiled_for(scorer, options, test, batch_size=8, device="cpu"))
    inside = np.zeros((LINE, LINE), bool)
    inside[16:112, 8:120] = True
    assert (pred["maps"][:, ~inside] == 0).all() and (pred["maps"][:, inside] > 0).all()  # never flagged outside
    pngs = sorted((tmp_path / "overlays" / "grid").glob("*.png"))
    assert len(pngs) == len(test)
    picture = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert (picture == ROI_COLOUR).all(axis=-1).sum() > 3 * 2 * (96 + 112)  # the outline on all three panels


def test_bad_tiled_evaluations_are_one_line_before_any_scoring(checkpoints, line_data):
    with pytest.raises(PackdError, match="--overlap, --roi and --map-scale need --tile S"):
        tile_options(None, overlap=8)
    with pytest.raises(PackdError, match="--tile 200 must be at least 1 and fit in the 128x128 frame"):
        evaluate(checkpoints["rd"], line_data, "grid", progress=False, tile=TileOptions(tile=200))
    with pytest.raises(PackdError, match="--map-scale 0.3 must give a whole map side"):
        evaluate(checkpoints["rd"], line_data, "grid", progress=False, tile=TileOptions(tile=64, map_scale=0.3))


@pytest.mark.parametrize("kind", ["knn", "packd"])
def test_a_per_position_memory_scores_each_tile_against_its_own_positions_prototypes(checkpoints, line_data, kind):
    import torch

    from packd.data.preprocess import Preprocess
    from packd_runtime.coreset import bound_prototypes

    scorer, _ = load_scorer(checkpoints[kind])
    supports, test = list_split(line_data, "grid", "train")[:2], list_split(line_data, "grid", "test")
    tiled = tiled_for(scorer, TileOptions(tile=64, overlap=16, memory="position"), test, batch_size=4, device="cpu")
    tiling, pre = tiled.tiling, Preprocess(scorer.spec)
    protos = tiled.prototypes(supports)
    s_tiles = tiling.cut(load_frames([s.path for s in supports])).reshape(2, 9, 64, 64, 3)
    bound = scorer.max_prototypes or scorer.prototype_limit(8)
    with torch.no_grad():
        own = [bound_prototypes([p.numpy() for p in scorer.model.prototypes(pre(torch.from_numpy(s_tiles[:, i])))],
                                bound) for i in range(9)]
    assert [tuple(p.shape) for p in protos] == [(9, *a.shape) for a in own[0]]
    for i in range(9):
        for p, a in zip(protos, own[i]):
            np.testing.assert_allclose(p[i].numpy(), a, rtol=1e-5, atol=1e-6)
    pred = predict_split(scorer, test, protos, tiled=tiled)
    frames = load_frames([s.path for s in test])
    q_tiles = tiling.cut(frames).reshape(len(test), 9, 64, 64, 3)
    maps = np.zeros((len(test), 9, 64, 64), np.float32)
    with torch.no_grad():
        for i in range(9):  # the reference: each position on its own, with its own memory
            maps[:, i] = scorer(pre(torch.from_numpy(np.ascontiguousarray(q_tiles[:, i]))),
                                [p[i] for p in protos])[1].numpy()
    expected = tiling.stitch(maps.reshape(-1, 64, 64))
    np.testing.assert_allclose(pred["maps"], expected, rtol=1e-4, atol=1e-5)
    shared = tiled_for(scorer, TileOptions(tile=64, overlap=16), test, batch_size=4, device="cpu")
    assert not np.allclose(predict_split(scorer, test, shared.prototypes(supports), tiled=shared)["maps"], pred["maps"])


def test_a_per_position_memory_needs_a_few_shot_kind(checkpoints, line_data):
    with pytest.raises(PackdError, match="--memory position is a few-shot kind's memory"):
        evaluate(checkpoints["rd"], line_data, "grid", progress=False, tile=TileOptions(tile=64, memory="position"))
    with pytest.raises(PackdError, match="--memory must be one of shared, position"):
        TileOptions(tile=64, memory="pooled")


def test_a_category_of_mixed_image_sizes_is_one_line_unless_a_frame_size_is_given(checkpoints, line_data, tmp_path):
    """Each category's frames are tiled at their own size: a category whose images differ in size is refused in
    one line (before, the first test image's size was taken for all and the others resized to it)."""
    import shutil

    data = tmp_path / "mixed"
    shutil.copytree(line_data, data)
    first = sorted((data / "grid" / "test" / "good").glob("*.png"))[0]
    Image.open(first).resize((96, 96)).save(first)
    with pytest.raises(PackdError, match=r"have 2 sizes \(96x96, 128x128\): a tiling is for one frame size"):
        evaluate(checkpoints["rd"], data, "grid", progress=False, device="cpu", tile=TileOptions(tile=64))
    report = evaluate(checkpoints["rd"], data, "grid", progress=False, device="cpu",
                      tile=TileOptions(tile=64, frame_size=(LINE, LINE)))
    assert report["categories"]["grid"]["tiling"]["frame"] == [LINE, LINE]
