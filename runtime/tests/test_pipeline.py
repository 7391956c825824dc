"""The one graph pipeline through the Detector, on toy bundles ONNX Runtime runs: the support graph, the bank
bound, batches at the bundle's limit, tiles cut and maps stitched, a per-position memory picked by tile_index, the
threshold, saved prototypes; and the typed manifest each way."""

import json
import pickle

import numpy as np
import pytest
from toy_bundle import POOL, toy_maps, write_toy_bundle
from toy_bundle import frames as _frames

from packd_runtime import Detector, PackdError, Prototypes
from packd_runtime.coreset import bound_prototypes
from packd_runtime.manifest import Manifest, read_manifest
from packd_runtime.pipeline import max_pool
from packd_runtime.tiling import Tiling

FRAME = (48, 64)


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp("toys")
    return {
        "few": write_toy_bundle(root / "few"),
        "bounded": write_toy_bundle(root / "bounded", max_count=20),
        "plain": write_toy_bundle(root / "plain", few_shot=False),
        "small": write_toy_bundle(root / "small", side=16),
        "tiled": write_toy_bundle(root / "tiled", frame_hw=FRAME, tile=32, overlap=16, max_batch=4),
        "position": write_toy_bundle(root / "position", frame_hw=FRAME, tile=32, overlap=16, memory="position"),
    }, root


def test_a_changeover_and_detection_compute_the_graphs_in_batches_at_the_bundles_limit(toys):
    _, root = toys
    supports, frames = _frames(2, seed=1), _frames(7, seed=2, low=0, high=256)
    with Detector.open(root / "few") as det:
        protos = det.prototypes(supports)
        assert protos.arrays[0].shape == (2 * (32 // POOL) ** 2, 3) and protos.shots == 2
        result = det.detect(frames)  # 7 frames, batches of at most 4
        expected = toy_maps(frames, protos.arrays[0])
        np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(result.scores, expected.reshape(7, -1).max(axis=1), rtol=1e-4)
        assert result.threshold is None  # a new product: judged by no threshold until calibrate
        t = det.calibrate(_frames(5, seed=3))
        assert t == pytest.approx(np.mean(s := det.detect(_frames(5, seed=3)).scores) + 3 * np.std(s), rel=1e-5)
        assert det.detect(frames).labels.dtype == bool
        with pytest.raises(PackdError, match="4 support images, but this bundle was built for at most 3"):
            det.prototypes(_frames(4))


def test_the_bank_bound_keeps_the_greedy_coreset(toys):
    _, root = toys
    supports = _frames(3, seed=4, low=0, high=256)
    with Detector.open(root / "bounded") as det, Detector.open(root / "few") as free:
        bounded, whole = det.prototypes(supports), free.prototypes(supports)
    assert bounded.arrays[0].shape == (20, 3)
    np.testing.assert_array_equal(bounded.arrays[0], bound_prototypes([whole.arrays[0]], 20)[0])


def test_a_per_category_bundle_needs_no_prototypes_and_keeps_its_threshold(toys):
    manifests, root = toys
    with Detector.open(root / "plain") as det:
        assert det.threshold == manifests["plain"].threshold
        result = det.detect(_frames(2, seed=5))
        np.testing.assert_allclose(result.maps, toy_maps(_frames(2, seed=5), np.full((1, 3), 128.0)), rtol=1e-4,
                                   atol=1e-2)
        with pytest.raises(PackdError, match="has no support graph"):
            det.prototypes(_frames(1))


def test_tiled_frames_are_cut_pooled_and_stitched_as_by_hand(toys):
    _, root = toys
    tiling = Tiling(FRAME, tile=32, overlap=16, map_side=32 // POOL)
    supports, frames = _frames(2, FRAME, seed=6), _frames(3, FRAME, seed=7, low=0, high=256)
    with Detector.open(root / "tiled") as det:
        assert det.tiling.count == tiling.count == 6
        protos = det.prototypes(supports)  # 2 frames x 6 tiles pooled, bounded to what the query graph takes
        pooled = np.concatenate([toy_feature_rows(t) for t in tiling.cut(supports)])
        np.testing.assert_allclose(protos.arrays[0], bound_prototypes([pooled], det.max_prototypes)[0], atol=1e-3)
        result = det.detect(frames)  # 18 tiles in batches of 4
    tile_maps = toy_maps(tiling.cut(frames), protos.arrays[0])
    expected = tiling.stitch(max_pool(tile_maps, 32 // POOL))
    assert result.maps.shape == (3, *tiling.map_hw)
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(result.scores, expected.reshape(3, -1).max(axis=1), rtol=1e-4)


def toy_feature_rows(tile):
    """A tile's patch features, as the toy support graph returns them."""
    return tile.astype(np.float32).reshape(32 // POOL, POOL, 32 // POOL, POOL, 3).mean(axis=(1, 3)).reshape(-1, 3)


def test_a_per_position_memory_scores_each_tile_against_its_own_position(toys):
    _, root = toys
    tiling = Tiling(FRAME, tile=32, overlap=16, map_side=32 // POOL)
    supports, frames = _frames(2, FRAME, seed=8, low=0, high=256), _frames(2, FRAME, seed=9, low=0, high=256)
    with Detector.open(root / "position") as det:
        protos = det.prototypes(supports)
        result = det.detect(frames)
    s_tiles = tiling.cut(supports).reshape(2, 6, 32, 32, 3)
    q_tiles = tiling.cut(frames).reshape(2, 6, 32, 32, 3)
    assert protos.arrays[0].shape == (6, 2 * (32 // POOL) ** 2, 3)
    maps = np.zeros((2, 6, 8, 8), np.float32)
    for i in range(6):
        own = np.concatenate([toy_feature_rows(t) for t in s_tiles[:, i]])
        np.testing.assert_allclose(protos.arrays[0][i], own, atol=1e-3)
        maps[:, i] = toy_maps(q_tiles[:, i], own)
    np.testing.assert_allclose(result.maps, tiling.stitch(maps.reshape(-1, 8, 8)), rtol=1e-4, atol=1e-2)


def test_saved_prototypes_carry_their_threshold_and_fingerprint(toys, tmp_path):
    _, root = toys
    with Detector.open(root / "few") as det, Detector.open(root / "small") as other:
        det.prototypes(_frames(2, seed=10))
        det.calibrate(_frames(5, seed=11))
        det.current_prototypes.save(tmp_path / "p.npz")
        loaded = Prototypes.load(tmp_path / "p.npz")
        assert loaded.threshold == det.threshold and loaded.fingerprint == det.fingerprint
        with pytest.raises(PackdError, match="made by another model"):
            other.use(loaded)


def test_the_manifest_is_typed_once_and_written_back_exactly(toys):
    manifests, root = toys
    raw = json.loads((root / "position" / "manifest.json").read_text())
    m = read_manifest(root / "position")
    assert m == manifests["position"] and m.to_dict() == raw
    assert (m.few_shot, m.memory, m.positions, m.graph_hw, m.map_hw) == (True, "position", 6, (32, 32), (12, 16))
    assert m.prototype_names == ("prototypes_1",) and m.limits.shots == 3
    with pytest.raises(AttributeError):
        m.threshold = 1.0  # frozen
    assert pickle.loads(pickle.dumps(m)) == m  # a process pool hands one back from an export
    for edit, message in [
        (lambda d: d.update(extra=1), "unknown key"),
        (lambda d: d["normal_scores"].update(median=3), "'normal_scores.median' is not what packd writes"),
        (lambda d: d["input"].update(range=[0, 1]), "'input.range.1' is not what packd writes"),
        (lambda d: d["prototypes"].pop("channels"), "'prototypes.channels' is not what packd writes"),
        (lambda d: d["dynamic"].update(batch=[2, 4]), "dynamic range batch must be"),
    ]:
        forged = json.loads(json.dumps(raw))
        edit(forged)
        with pytest.raises(PackdError, match=message):
            Manifest.from_dict(forged, "forged")
