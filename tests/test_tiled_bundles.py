"""Tiled bundles (line-resolution frames): export with --tile, the runtime cuts and stitches, results equal the
same graphs run on the tiles by hand and stitched with the tiling's own geometry."""

import json
from dataclasses import replace

import numpy as np
import pytest

from packd.evaluation.tiling_options import tile_options
from packd_export.bundle import export_bundle
from packd_export.check import check_bundle
from packd_runtime import Detector
from packd_runtime.errors import PackdError
from packd_runtime.tiling import Tiling

FRAME_HW = (160, 200)


def _export(checkpoint, out, *, tile=None, frame_size=None, overlap=0, rois=(), map_scale=None, memory="shared",
            **options):
    """export_bundle with the command line's tiling options (checked where they enter, as the CLI does)."""
    tiles = tile_options(tile, overlap, rois, map_scale, frame_size, memory)
    return export_bundle(checkpoint, out, frame_size=frame_size, tiles=tiles, **options)


@pytest.fixture(scope="module")
def tiled(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiled")
    return {
        "rd": _export(checkpoints["rd"], root / "rd", frame_size=FRAME_HW, tile=64, overlap=16, max_batch=8),
        "rd_coarse": _export(checkpoints["rd"], root / "rd_coarse", frame_size=FRAME_HW, tile=64, overlap=16,
                                   max_batch=8, map_scale=0.5),
        "knn": _export(checkpoints["knn"], root / "knn", frame_size=FRAME_HW, tile=64, overlap=0, max_batch=8,
                             max_shots=4, rois=((10, 20, 90, 100),)),
        **{kind: _export(checkpoints[kind], root / kind, frame_size=FRAME_HW, tile=64, overlap=16, max_batch=8,
                               max_shots=2) for kind in ("memkd", "packd")},
        **{f"knn_position{p}": _export(checkpoints["knn"], root / f"knn_position{p}", frame_size=FRAME_HW,
                                             tile=64, overlap=16, max_batch=8, max_shots=4, memory="position",
                                             precision=p or "fp32") for p in ("", "fp16")},
        "knn_tiles": _export(checkpoints["knn"], root / "knn_tiles", frame_size=(64, 64), max_batch=8,
                                   max_shots=4),
    }, root


def _by_hand(det):
    """The tiled bundle's own graphs on whole 64-px inputs, through no tiling: the reference to cut and stitch by
    hand (the graphs of a tiled bundle take tiles)."""
    return replace(det.pipeline, tiling=None)


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *FRAME_HW, 3), dtype=np.uint8)


def test_a_tiled_bundle_records_its_tiling_and_takes_camera_frames(tiled):
    manifests, root = tiled
    m = check_bundle(root / "rd")
    assert m.tiling.to_dict() == {"tile": 64, "overlap": 16, "rois": [], "map_side": 64}
    assert m.frame_hw == FRAME_HW and m.graph_hw == (64, 64)
    assert m.graphs["query"].inputs[0].shape == ("batch", 64, 64, 3)
    assert json.loads((root / "knn" / "manifest.json").read_text())["tiling"]["rois"] == [[10, 20, 90, 100]]


def test_tiled_detection_equals_the_graph_on_hand_cut_tiles_stitched(tiled):
    _, root = tiled
    frames = _frames(2)
    tiling = Tiling(FRAME_HW, tile=64, overlap=16, map_side=64)
    with Detector.open(root / "rd") as det:
        got = det.detect(frames)
        by_hand = tiling.stitch(_by_hand(det).score(tiling.cut(frames))[1])  # 2 x 12 tiles, batches of 8
    assert got.maps.shape == (2, *FRAME_HW) and tiling.count == 12
    np.testing.assert_allclose(got.maps, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.scores, by_hand.reshape(2, -1).max(axis=1), rtol=1e-6)
    assert got.labels.shape == (2,)  # a per-category kind keeps its threshold, computed on tiled frames


@pytest.mark.parametrize("kind", ["memkd", "packd"])
def test_every_kind_runs_tiled_equal_to_its_graphs_on_hand_cut_tiles(tiled, kind):
    """MemKD (a per-category kind) and PACKD (one prototype tensor per stage: a tiled changeover pools 2 frames x
    12 tiles of them, more than the query graph takes, and keeps the same coreset rows in every stage)."""
    from packd_runtime.bundle_format import IMAGES, SUPPORT
    from packd_runtime.coreset import bound_prototypes

    _, root = tiled
    tiling = Tiling(FRAME_HW, tile=64, overlap=16, map_side=64)
    supports, frames = _frames(2, seed=7), _frames(2, seed=8)
    with Detector.open(root / kind) as det:
        arrays = None
        if det.few_shot:
            arrays = det.prototypes(supports).arrays
            assert len(arrays) == 3 and all(len(a) == det.max_prototypes for a in arrays)  # 24 tiles' worth pooled
            tiles = tiling.cut(supports)  # the support graph takes them 2 at a time (max_shots)
            by_pair = [det.backend.run(SUPPORT, {IMAGES: tiles[i:i + 2]}) for i in range(0, len(tiles), 2)]
            pooled = [np.concatenate([p[n] for p in by_pair]) for n in det.prototype_names]
            assert [a.shape[1] for a in arrays] == [a.shape[1] for a in pooled]
            for a, b in zip(arrays, bound_prototypes(pooled, det.max_prototypes)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        got = det.detect(frames)
        by_hand = tiling.stitch(_by_hand(det).score(tiling.cut(frames), arrays)[1])
    assert got.maps.shape == (2, *FRAME_HW) and np.isfinite(got.maps).all()
    np.testing.assert_allclose(got.maps, by_hand, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.scores, by_hand.reshape(2, -1).max(axis=1), rtol=1e-5)


def test_a_tiled_bundle_refuses_frames_of_another_size_and_device_arrays(tiled):
    _, root = tiled

    class Device:
        __cuda_array_interface__ = {"shape": (1, *FRAME_HW, 3), "typestr": "|u1", "data": (0, False), "version": 2}

    with Detector.open(root / "rd") as det:
        with pytest.raises(PackdError, match="must be 160x200 frames"):
            det.detect(np.zeros((1, 64, 64, 3), np.uint8))
        with pytest.raises(PackdError, match="tiles its frames on the host: pass numpy arrays"):
            det.detect(Device())


def test_a_tiled_few_shot_bundle_changes_over_on_every_tile_and_ignores_outside_its_roi(tiled):
    _, root = tiled
    with Detector.open(root / "knn") as det:
        protos = det.prototypes(_frames(3, seed=1))  # 3 frames x 4 tiles: more tiles than max_shots (4)
        assert protos.shots == 3 and protos.arrays[0].shape[0] <= det.max_prototypes
        result = det.detect(_frames(2, seed=2))
        outside = np.ones(FRAME_HW, bool)
        outside[10:100, 20:120] = False
        assert (result.maps[:, outside] == 0).all() and (result.maps[:, ~outside] > 0).all()
        assert result.threshold is None  # a new product: no threshold until calibrate
        t = det.calibrate(_frames(5, seed=3))
        assert np.isfinite(t) and det.detect(_frames(1, seed=4)).labels.shape == (1,)


@pytest.mark.parametrize("options, message", [
    (dict(overlap=8), "--overlap, --roi and --map-scale need --tile S"),
    (dict(map_scale=0.5), "--overlap, --roi and --map-scale need --tile S"),
    (dict(tile=64), "--tile needs --frame-size HxW"),
    (dict(tile=256, frame_size=FRAME_HW), "--tile 256 must be at least 1 and fit in the 160x200 frame"),
    (dict(tile=64, overlap=64, frame_size=FRAME_HW), "--overlap 64 must be at least 0 and less than the tile"),
    (dict(tile=64, frame_size=FRAME_HW, rois=((150, 0, 20, 20),)), "--roi 150,0,20,20 must lie inside"),
])
def test_bad_tiled_exports_are_one_line_before_any_work(tmp_path, options, message):
    with pytest.raises(PackdError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _export(tmp_path / "no-checkpoint", tmp_path / "b", **options)
    assert not (tmp_path / "b").exists()


def test_the_triton_line_model_serves_a_tiled_bundle_whole_frames(tiled, tmp_path):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from packd_export.triton import LINE_MODEL, write_repository
    from packd_runtime.triton.line_model import TritonPythonModel

    _, root = tiled
    write_repository(root / "rd", tmp_path / "repo", backend="onnxruntime")
    line = tmp_path / "repo" / LINE_MODEL
    config = text_format.Parse((line / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    frames = next(i for i in config.input if i.name == "frames")
    assert list(frames.dims)[-3:] == [*FRAME_HW, 3]  # the camera's frame, not the tile
    model = TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
                      "model_repository": str(line), "model_version": "1"})
    assert model.server.detector.tiling is not None and model.server.detector.tiling.count == 12
    result = model.server.run("line-1", "detect", _frames(2))
    assert result.maps.shape == (2, *FRAME_HW) and result.scores.shape == (2,)
    maps_out = next(o for o in config.output if o.name == "maps")
    assert list(maps_out.dims)[-2:] == list(FRAME_HW)


def test_tensorrt_profiles_of_a_tiled_bundle_are_tuned_for_one_frames_tiles(tiled):
    from packd_runtime.tensorrt.build import OPT_BATCH, profile_shapes

    manifests, _ = tiled
    lo, opt, hi = profile_shapes(manifests["knn"], "query")["images"]
    assert (lo, opt, hi) == ((1, 64, 64, 3), (4, 64, 64, 3), (8, 64, 64, 3)) and OPT_BATCH != 4  # 4 tiles
    assert profile_shapes(manifests["knn_tiles"], "query")["images"][1][0] == OPT_BATCH


def test_a_coarser_map_max_pools_the_tile_maps_before_stitching(tiled):
    from packd_runtime.pipeline import max_pool

    manifests, root = tiled
    assert manifests["rd_coarse"].tiling.tiling.map_side == 32
    frames = _frames(2, seed=5)
    tiling = Tiling(FRAME_HW, tile=64, overlap=16, map_side=32)
    with Detector.open(root / "rd_coarse") as det, Detector.open(root / "rd") as full:
        got = det.detect(frames)
        tile_maps = _by_hand(det).score(tiling.cut(frames))[1]
        full_scores = full.detect(frames).scores
    assert got.maps.shape == (2, 80, 100)
    np.testing.assert_allclose(got.maps, tiling.stitch(max_pool(tile_maps, 32)), rtol=1e-5, atol=1e-6)
    assert (max_pool(tile_maps, 32).max(axis=(1, 2)) == tile_maps.max(axis=(1, 2))).all()  # no peak lost
    np.testing.assert_allclose(got.scores, full_scores, rtol=0.05)  # the blend differs a little, not the peak


def test_a_map_scale_that_gives_no_whole_map_side_is_one_line(checkpoints, tmp_path):
    with pytest.raises(PackdError, match=r"--map-scale 0.3 must give a whole map side per 64-px tile .* one of "):
        _export(checkpoints["rd"], tmp_path / "b", frame_size=FRAME_HW, tile=64, map_scale=0.3)
    assert not (tmp_path / "b").exists()


def test_a_tiled_int8_bundle_is_calibrated_on_tiles_and_keeps_the_fp32_maps(checkpoints, tiled, tmp_path):
    from packd_export.int8_data import sample_tiles

    _, root = tiled
    tiling = Tiling(FRAME_HW, tile=64, overlap=16)
    frames = _frames(3, seed=6)
    picked = sample_tiles(tiling, frames, 5)  # spread over every (frame, position): first and last included
    assert picked.shape == (5, 64, 64, 3)
    np.testing.assert_array_equal(picked[0], frames[0, :64, :64])
    np.testing.assert_array_equal(picked[-1], frames[2, 96:, 136:])
    manifest = _export(checkpoints["rd"], tmp_path / "int8", frame_size=FRAME_HW, tile=64, overlap=16,
                             max_batch=8, precision="int8")
    assert manifest.precision == "int8" and manifest.tiling.tiling.tile == 64
    with Detector.open(tmp_path / "int8") as det, Detector.open(root / "rd") as fp32:
        a, b = det.detect(frames).maps, fp32.detect(frames).maps
    assert a.shape == b.shape == (3, *FRAME_HW)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update(tile=500), "its tiling is unusable: --tile 500 must be at least 1 and fit"),
    (lambda t: t.update(overlap=64), "its tiling is unusable: --overlap 64 must be at least 0 and less"),
    (lambda t: t.update(rois=[[0, 0, 10]]), "every region of interest must be four whole numbers"),
    (lambda t: t.update(rois="everywhere"), "'rois' has the wrong type"),
    (lambda t: t.update(map_side=48), "the map side 48 must divide the model's input size 64"),
    (lambda t: t.pop("tile"), "missing 'tile'"),
    (lambda t: t.update(tile=32), "the query graph's first input must be"),  # the graphs take 64-px tiles
])
def test_a_forged_tiling_in_a_manifest_is_one_line(tiled, tmp_path, edit, message):
    import shutil

    from packd_runtime.manifest import read_manifest

    _, root = tiled
    shutil.copytree(root / "rd", tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    edit(manifest["tiling"])
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackdError, match=message) as e:
        read_manifest(tmp_path / "b")
    assert "\n" not in str(e.value)


def test_a_per_position_bundle_keeps_one_memory_per_tile_position(tiled):
    """knn: the query graph takes (positions, n, C) prototypes and each tile's position; a changeover runs the
    support graph on each position's tiles; every tile is scored against its own position's memory only (equal to
    a plain bundle scoring that position's tiles with that memory alone); fp16 keeps the fp32 maps."""
    from packd_runtime.bundle_format import TILE_INDEX
    from packd_runtime.detector import Prototypes
    from packd_runtime.pipeline import max_pool
    from packd_runtime.tensorrt.build import profile_shapes

    manifests, root = tiled
    m = manifests["knn_position"]
    assert m.memory == "position" and m.positions == 12
    inputs = {i.name: i.shape for i in m.graphs["query"].inputs}
    assert inputs["prototypes_1"][:2] == (12, "prototypes") and inputs[TILE_INDEX] == ("batch",)
    shapes = profile_shapes(m, "query")
    assert shapes[TILE_INDEX] == ((1,), (8,), (8,)) and [s[0] for s in shapes["prototypes_1"]] == [12, 12, 12]
    supports, frames = _frames(2, seed=9), _frames(2, seed=10)
    tiling = Tiling(FRAME_HW, tile=64, overlap=16)
    s_tiles = tiling.cut(supports).reshape(2, 12, 64, 64, 3)
    q_tiles = tiling.cut(frames).reshape(2, 12, 64, 64, 3)
    with Detector.open(root / "knn_position") as det, Detector.open(root / "knn_tiles") as plain, \
            Detector.open(root / "knn_positionfp16") as half:
        protos = det.prototypes(supports)
        n = min(2 * m.prototypes.per_shot, m.prototypes.max_count)  # knn's bank bound: 100
        assert protos.arrays[0].shape[:2] == (12, n)
        got = det.detect(frames)
        maps = np.zeros((2, 12, 64, 64), np.float32)
        for i in range(12):
            own = plain.prototypes(s_tiles[:, i])  # position i's memory, made alone from its 2 tiles
            np.testing.assert_allclose(protos.arrays[0][i], own.arrays[0], rtol=1e-5, atol=1e-6)
            maps[:, i] = plain.detect(q_tiles[:, i], prototypes=own).maps
        with pytest.raises(PackdError, match=r"prototype arrays must be \(positions, n, C\) with positions = 12"):
            det.use(Prototypes(tuple(a[0] for a in protos.arrays), det.fingerprint, 2))
        half.prototypes(supports)
        fp16 = half.detect(frames).maps
    expected = tiling.stitch(max_pool(maps.reshape(-1, 64, 64), 64))
    np.testing.assert_allclose(got.maps, expected, rtol=1e-4, atol=1e-4)
    assert np.corrcoef(fp16.ravel(), got.maps.ravel())[0, 1] > 0.97  # random frames: 0.989 measured


def test_the_triton_repository_of_a_per_position_bundle_declares_its_inputs(tiled, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from packd_export.triton import write_repository

    _, root = tiled
    write_repository(root / "knn_position", tmp_path / "repo", backend="onnxruntime")
    config = text_format.Parse((tmp_path / "repo" / "query" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    inputs = {i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input}
    assert config.max_batch_size == 0  # the prototypes have no batch axis
    assert inputs["tile_index"] == ("TYPE_INT64", [-1]) and inputs["prototypes_1"][1][:2] == [12, -1]


@pytest.mark.parametrize("options, message", [
    (dict(memory="position"), "--memory position describes a tiled export or evaluation: add --tile S"),
    (dict(memory="pooled", tile=64, frame_size=FRAME_HW), "--memory must be one of shared, position"),
    (dict(memory="position", tile=64, frame_size=FRAME_HW, precision="int8"), "not offered in int8 yet"),
])
def test_bad_memory_options_are_one_line_before_any_work(tmp_path, options, message):
    with pytest.raises(PackdError, match=message):
        _export(tmp_path / "no-checkpoint", tmp_path / "b", **options)
    assert not (tmp_path / "b").exists()


def test_a_per_position_memory_needs_a_few_shot_kind_and_its_manifest_says_it_whole(checkpoints, tiled, tmp_path):
    import shutil

    from packd_runtime.manifest import read_manifest

    with pytest.raises(PackdError, match="few-shot kind's memory; this model keeps none"):
        _export(checkpoints["rd"], tmp_path / "b", frame_size=FRAME_HW, tile=64, memory="position")
    _, root = tiled
    for edit, message in [(lambda m: m["tiling"].update(memory="pooled"), "memory must be shared or"),
                          (lambda m: m["tiling"].update(memory="shared"), "prototype inputs must be float32"),
                          (lambda m: m["graphs"]["query"]["inputs"].pop(), "last input must be tile_index")]:
        shutil.rmtree(tmp_path / "f", ignore_errors=True)
        shutil.copytree(root / "knn_position", tmp_path / "f")
        manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
        edit(manifest)
        (tmp_path / "f" / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(PackdError, match=message):
            read_manifest(tmp_path / "f")
