"""The third hostile pass, on the runtime: what is hashed is what is loaded, a threshold only ever sits on the
prototypes it came from and is checked like the manifest's, the fingerprint covers frame size and tiling, a thin
region of interest that no map pixel covers is refused, and a prototypes path that is no regular file is never read."""

import os
import shutil
from functools import partial

import numpy as np
import pytest
from toy_bundle import POOL, frames, query_graph, toy_maps, write_toy_bundle

from packd_runtime import Detector, PackdError, Prototypes
from packd_runtime import detector as detector_module
from packd_runtime.tiling import Tiling

_frames = partial(frames, low=0, high=256)


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp("toys3")
    write_toy_bundle(root / "few")
    write_toy_bundle(root / "taller", frame_hw=(64, 64), tile=32, overlap=16)  # the same graphs, another frame
    write_toy_bundle(root / "abutting", frame_hw=(48, 64), tile=32)  # the same graphs and frame, another tiling
    write_toy_bundle(root / "tiled", frame_hw=(48, 64), tile=32, overlap=16)
    write_toy_bundle(root / "position", frame_hw=(48, 64), tile=32, overlap=16, memory="position")
    return root


def test_a_graph_swapped_after_the_check_is_never_loaded(toys, tmp_path, monkeypatch):
    """The bytes whose sha256 matched the manifest are the bytes the backend loads: an evil query graph renamed
    over the checked one between the check and the load is not what runs."""
    import onnx

    bundle = tmp_path / "b"
    shutil.copytree(toys / "few", bundle)
    real = detector_module.open_backend

    def swap_then_open(*args, **kwargs):
        evil = bundle / "evil.onnx"
        onnx.save(query_graph((32, 32), few_shot=False), evil)  # the same I/O but for the prototypes: other scores
        os.replace(evil, bundle / "query.onnx")
        return real(*args, **kwargs)

    monkeypatch.setattr(detector_module, "open_backend", swap_then_open)
    supports, frames = _frames(2, seed=1), _frames(2, seed=2)
    with Detector.open(bundle) as det:
        protos = det.prototypes(supports)
        np.testing.assert_allclose(det.detect(frames).maps, toy_maps(frames, protos.arrays[0]), rtol=1e-4, atol=1e-2)
    with pytest.raises(PackdError, match="altered or corrupted"):  # the next open sees the swap
        Detector.open(bundle)


def test_a_changeover_during_calibrate_never_gets_the_old_products_threshold(toys, monkeypatch):
    with Detector.open(toys / "few") as det:
        det.prototypes(_frames(2, seed=3))  # product A
        real_detect = det.detect

        def detect_then_changeover(*args, **kwargs):  # another thread changes over to B while A is calibrated
            result = real_detect(*args, **kwargs)
            det.prototypes(_frames(2, seed=4))
            return result

        monkeypatch.setattr(det, "detect", detect_then_changeover)
        t = det.calibrate(_frames(5, seed=5))
        monkeypatch.undo()
        assert np.isfinite(t) and det.threshold is None  # B has no threshold: judged by none, not by A's
        assert det.current_prototypes.threshold is None


@pytest.mark.parametrize("threshold, message", [(1e30, "more than 10x outside"), (-1.0, "or negative"),
                                                (0.0, "more than 10x outside")])
def test_saved_prototypes_with_an_edited_threshold_are_refused(toys, tmp_path, threshold, message):
    with Detector.open(toys / "few") as det:
        det.prototypes(_frames(2, seed=6))
        det.calibrate(_frames(5, seed=7))
        good = det.current_prototypes
        good.save(tmp_path / "p.npz")
        with np.load(tmp_path / "p.npz") as z:
            fields = {k: z[k] for k in z.files}
        fields["threshold"] = np.array(threshold)
        np.savez(tmp_path / "edited.npz", **fields)
        with pytest.raises(PackdError, match=message):
            det.use(Prototypes.load(tmp_path / "edited.npz"))
        det.use(Prototypes.load(tmp_path / "p.npz"))  # the one calibrate wrote is taken back
        from dataclasses import replace

        det.use(replace(good, threshold=np.float32(good.threshold)))  # a numpy float is a number too
        with pytest.raises(PackdError, match="without the normal scores it came from"):
            det.use(replace(good, normal_scores=None))


def test_the_fingerprint_covers_the_frame_size_the_tiling_and_the_memory(toys):
    """The same graph files, another frame size, tiling or memory: prototypes and thresholds of one are refused by
    the other (a whole-frame product's tiles pooled, or a per-position memory's, would give wrong verdicts)."""
    with Detector.open(toys / "few") as few, Detector.open(toys / "taller") as taller, \
            Detector.open(toys / "tiled") as tiled, Detector.open(toys / "position") as position, \
            Detector.open(toys / "abutting") as abutting:
        prints = {few.fingerprint, taller.fingerprint, tiled.fingerprint, position.fingerprint, abutting.fingerprint}
        assert len(prints) == 5
        shared = tiled.prototypes(_frames(2, (48, 64), seed=8))
        with pytest.raises(PackdError, match="made by another model"):
            few.use(shared)  # the same graph files and shapes: only the fingerprint tells whole frames from tiles
        with pytest.raises(PackdError, match="made by another model"):
            taller.use(shared)  # the same tiling of another frame size
        with pytest.raises(PackdError, match="made by another model"):
            abutting.use(shared)  # tiles without overlap: other tiles


def test_a_region_thinner_than_a_map_pixel_is_refused():
    with pytest.raises(PackdError, match=r"--roi 6,0,3,192 covers no pixel of the stitched map at 0.25"):
        Tiling((128, 192), tile=64, rois=((6, 0, 3, 192),), map_side=16)
    Tiling((128, 192), tile=64, rois=((6, 0, 3, 192),), map_side=64)  # at full resolution it is scored
    with pytest.raises(PackdError, match="covers no pixel"):
        Tiling((64, 96), tile=32, rois=((3, 0, 1, 96),), map_side=32 // POOL)


@pytest.mark.parametrize("make", ["/dev/zero", "fifo", "big"])
def test_a_prototypes_path_that_is_no_small_regular_file_is_never_read(tmp_path, make):
    path = tmp_path / "p.npz"
    if make == "/dev/zero":
        path = "/dev/zero"
    elif make == "fifo":
        os.mkfifo(path)  # opening it would wait for a writer forever
    else:
        path.write_bytes(b"\0" * 2048)
    with pytest.raises(PackdError, match="not a regular file" if make != "big" else "more than 1024"):
        Prototypes.load(path, max_bytes=1024)


def test_a_null_tiling_bad_key_types_and_huge_thresholds_are_one_line(toys, tmp_path):
    import json

    bundle = tmp_path / "b"
    shutil.copytree(toys / "tiled", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["tiling"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackdError, match="its tiling must be an object, got NoneType") as e:
        Detector.open(bundle)
    assert "\n" not in str(e.value)
    for keys in (b"key.pem", 7, [b"key.pem"]):
        with pytest.raises(PackdError, match="trusted_keys must be public key files"):
            Detector.open(toys / "few", trusted_keys=keys)
    with Detector.open(toys / "few") as det:
        det.prototypes(_frames(2, seed=10))
        with pytest.raises(PackdError, match="threshold must be a finite number"):
            det.detect(_frames(1), threshold=10**400)


@pytest.mark.parametrize("count", [1, 4])
def test_a_threshold_from_too_few_normal_frames_is_refused_before_scoring(toys, count, monkeypatch):
    """One frame gave std 0, so a threshold at that frame's own score (about half of all good frames flagged); the
    measured curve (docs: 'How many images') puts the floor at 5. Refused before any frame is scored."""
    from packd_runtime.threshold import MIN_NORMAL_IMAGES, threshold_from_normal_scores

    with Detector.open(toys / "few") as det:
        det.prototypes(_frames(2, seed=1))
        monkeypatch.setattr(type(det.pipeline), "score", lambda *a: pytest.fail("frames were scored"))
        with pytest.raises(PackdError, match=f"at least 5 normal images, got {count}: from fewer, mean \\+ 3 std"):
            det.calibrate(_frames(count, seed=2))
        assert det.current_prototypes.threshold is None
    assert MIN_NORMAL_IMAGES == 5
    with pytest.raises(PackdError, match="got 4"):
        threshold_from_normal_scores(np.ones(4))
    assert threshold_from_normal_scores(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(3 + 3 * np.sqrt(2))
