"""The Detector's calls as camera software makes them, on toy bundles: every wrong input is one exact line naming
what was given and what the bundle takes; thresholds as the caller, the product or the bundle sets them; a
per-category bundle's own threshold and calibration; prototypes of the wrong shape, type or values refused."""

import re
from dataclasses import replace

import numpy as np
import pytest
from toy_bundle import POOL, toy_maps, write_toy_bundle
from toy_bundle import frames as _frames

from packd_runtime import Detector, PackdError, Prototypes, Result


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("calls")
    write_toy_bundle(root / "few")
    write_toy_bundle(root / "plain", few_shot=False, threshold=300.0)
    write_toy_bundle(root / "position", frame_hw=(48, 64), tile=32, overlap=16, memory="position")
    return root


def _exactly(message):
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize("images, message", [
    ([[1, 2], [3]], "images must be a uint8 RGB array, got list numpy cannot convert (setting an array element "),
    (np.zeros((32, 32), np.uint8), "images must be (B,32,32,3) or (32,32,3) uint8 RGB, got shape (32, 32)"),
    (np.zeros((1, 1, 32, 32, 3), np.uint8), "images must be (B,32,32,3) or (32,32,3) uint8 RGB, got shape "
                                            "(1, 1, 32, 32, 3)"),
    (np.zeros((1, 32, 32, 4), np.uint8), "images must have 3 channels (RGB, last axis), got 4"),
    (np.zeros((1, 32, 48, 3), np.uint8), "images must be 32x32 frames (this bundle's input size), got 32x48"),
    (np.zeros((1, 32, 32, 3), np.float32), "images must be uint8 RGB 0-255, got dtype float32"),
    (np.zeros((0, 32, 32, 3), np.uint8), "images is an empty batch"),
])
def test_wrong_frames_are_one_line_naming_what_was_given(root, images, message):
    with Detector.open(root / "few") as det:
        det.prototypes(_frames(2))
        with pytest.raises(PackdError, match="^" + re.escape(message)):
            det.detect(images)
        with pytest.raises(PackdError, match="^" + re.escape(message.replace("images", "support images", 1))):
            det.prototypes(images)


def test_one_frame_or_a_batch(root):
    with Detector.open(root / "few") as det:
        protos = det.prototypes(_frames(2, seed=1))
        one, batch = det.detect(_frames(1, seed=2)[0]), det.detect(_frames(1, seed=2))
        assert one.scores.shape == (1,) and np.array_equal(one.maps, batch.maps)
        assert protos.shots == 2 and det.prototypes(_frames(1, seed=1)[0]).shots == 1


def test_thresholds_come_from_the_call_the_product_or_nowhere(root):
    frames = _frames(3, seed=4, low=0, high=256)
    with Detector.open(root / "few") as det:
        with pytest.raises(PackdError, match=_exactly(
                "this toy bundle needs prototypes first: call detector.prototypes(support_images) at product "
                "changeover (or detector.use(Prototypes.load(path)))")):
            det.detect(frames)
        det.prototypes(_frames(2, seed=1))
        plain = det.detect(frames)
        assert plain.threshold is None and det.threshold is None
        with pytest.raises(PackdError, match="^no threshold for this product yet"):
            det.detect(frames, masks=True)
        t = float(np.median(plain.scores))
        given = det.detect(frames, threshold=t, masks=True)
        assert given.threshold == t and np.array_equal(given.labels, plain.scores > t)
        assert np.array_equal(given.masks, plain.maps > t)
        assert det.detect(frames, threshold=np.float32(t)).threshold == pytest.approx(t)
        assert det.detect(frames, threshold=int(t)).threshold == float(int(t))
        calibrated = det.calibrate(_frames(5, seed=3))
        assert det.threshold == calibrated == det.detect(frames).threshold
        assert det.detect(frames, threshold=t).threshold == t  # the call's wins
        for bad, message in [(True, "threshold must be a number, got bool True"),
                             ("1", "threshold must be a number, got str '1'"),
                             (float("nan"), "threshold must be a finite number, got nan"),
                             (float("inf"), "threshold must be a finite number, got inf"),
                             (10 ** 400, "threshold must be a finite number, got 1" + "0" * 39)]:
            with pytest.raises(PackdError, match=_exactly(message)):
                det.detect(frames, threshold=bad)


def test_a_per_category_bundle_keeps_its_own_threshold_and_calibrates_it(root):
    frames = _frames(4, seed=5, low=0, high=256)
    with Detector.open(root / "plain") as det:
        assert not det.few_shot and det.threshold == 300.0 and det.current_prototypes is None
        with pytest.raises(PackdError, match=_exactly("this toy bundle has no support graph: it needs no "
                                                      "prototypes")):
            det.prototypes(frames)
        r = det.detect(frames)
        grey = np.full((1, 3), 128.0, np.float32)  # the toy keeps a mid-grey patch as its fixed memory
        np.testing.assert_allclose(r.maps, toy_maps(frames, grey), rtol=1e-4, atol=1e-2)
        assert r.threshold == 300.0 and np.array_equal(r.labels, r.scores > 300.0)
        normal = _frames(6, seed=6)
        t = det.calibrate(normal)
        s = det.detect(normal).scores
        assert t == pytest.approx(s.mean() + 3 * s.std(), rel=1e-6) and det.threshold == t
        assert det.detect(frames).threshold == t


def test_calibrating_other_prototypes_returns_their_threshold_and_leaves_the_current_ones(root):
    with Detector.open(root / "few") as det:
        a = det.prototypes(_frames(2, seed=1))
        b = det.prototypes(_frames(2, seed=9, low=0, high=256))
        normal = _frames(5, seed=3)
        t_a = det.calibrate(normal, prototypes=a)
        s = det.detect(normal, prototypes=a).scores
        assert t_a == pytest.approx(s.mean() + 3 * s.std(), rel=1e-6)
        assert det.current_prototypes is b and det.threshold is None  # only returned
        t_b = det.calibrate(normal)
        assert t_b != t_a and det.threshold == t_b and det.current_prototypes.normal_scores is not None
        low, high = det.current_prototypes.normal_scores
        sb = det.detect(normal).scores
        assert (low, high) == (pytest.approx(sb.min()), pytest.approx(sb.max()))


def test_prototypes_this_bundle_could_not_have_made_are_refused(root):
    with Detector.open(root / "few") as det, Detector.open(root / "position") as pos:
        good = det.prototypes(_frames(2))
        n = good.arrays[0].shape[0]
        cases = [
            ("not prototypes", "expected Prototypes, got str"),
            (replace(good, fingerprint="0" * 16), f"these prototypes were made by another model (bundle fingerprint "
                                                  f"{'0' * 16} != {det.fingerprint}): compute them again with this "
                                                  "bundle"),
            (replace(good, arrays=good.arrays * 2), "expected 1 prototype arrays, got 2"),
            (replace(good, arrays=(good.arrays[0].astype(np.float64),)),
             "prototype arrays must be float32, got float64"),
            (replace(good, arrays=([[1.0, 2.0, 3.0]],)), "prototype arrays must be float32, got list"),
            (replace(good, arrays=(good.arrays[0][:, :2].copy(),)),
             f"prototype arrays must be (n, C) with one n and C = [3], got [({n}, 2)]"),
            (replace(good, arrays=(good.arrays[0][None],)),
             f"prototype arrays must be (n, C) with one n and C = [3], got [(1, {n}, 3)]"),
            (replace(good, arrays=(np.zeros((0, 3), np.float32),)), "0 prototypes, but this bundle takes 1 to 192"),
            (replace(good, arrays=(np.zeros((193, 3), np.float32),)),
             "193 prototypes, but this bundle takes 1 to 192"),
            (replace(good, arrays=(np.full((2, 3), np.nan, np.float32),)),
             "the prototypes hold NaN or infinite values: refused"),
        ]
        for protos, message in cases:
            with pytest.raises(PackdError, match=_exactly(message)):
                det.use(protos)
            with pytest.raises(PackdError, match=_exactly(message)):
                det.detect(_frames(1), prototypes=protos)
        det.use(replace(good, arrays=(np.zeros((192, 3), np.float32),)))  # the limit itself is taken
        det.use(replace(good, arrays=(np.zeros((1, 3), np.float32),)))
        assert det.current_prototypes.arrays[0].shape == (1, 3)
        p = pos.prototypes(_frames(2, hw=(48, 64)))
        assert p.arrays[0].shape == (6, 2 * (32 // POOL) ** 2, 3)
        with pytest.raises(PackdError, match=re.escape("prototype arrays must be (positions, n, C) with positions "
                                                       "= 6, one n and C = [3], got [(5, 128, 3)]")):
            pos.use(replace(p, arrays=(p.arrays[0][:5],)))


@pytest.mark.parametrize("threshold, scores, message", [
    (float("nan"), (1.0, 2.0), "the prototypes carry a threshold that is not a finite number (nan): refused"),
    (True, (1.0, 2.0), "the prototypes carry a threshold that is not a finite number (True): refused"),
    ("3", (1.0, 2.0), "the prototypes carry a threshold that is not a finite number ('3'): refused"),
    (3.0, None, "the prototypes carry a threshold without the normal scores it came from (saved by an older packd, "
                "or made by hand): calibrate this product again"),
    (-1.0, (1.0, 2.0), "the prototypes' threshold -1.0 is more than 10x outside the scores of the normal frames it "
                       "came from (1 to 2), or negative: edited by hand? calibrate this product again"),
    (21.0, (1.0, 2.0), "the prototypes' threshold 21.0 is more than 10x outside"),
    (0.09, (1.0, 2.0), "the prototypes' threshold 0.09 is more than 10x outside"),
    (1.5, (2.0, 1.0), "the prototypes' threshold 1.5 is more than 10x outside"),
    (1.5, (-1.0, 2.0), "the prototypes' threshold 1.5 is more than 10x outside"),
    (1.5, (1.0, float("inf")), "the prototypes' threshold 1.5 is more than 10x outside"),
])
def test_a_threshold_prototypes_carry_is_checked_like_the_manifests(root, threshold, scores, message):
    with Detector.open(root / "few") as det:
        good = det.prototypes(_frames(2))
        with pytest.raises(PackdError, match="^" + re.escape(message)):
            det.use(replace(good, threshold=threshold, normal_scores=scores))
        for t in (20.0, 0.1, 1.5, np.float32(1.5), 2):  # at the slack's edges and numpy / int thresholds: taken
            det.use(replace(good, threshold=t, normal_scores=(1.0, 2.0)))
            assert det.threshold == t
        det.use(replace(good, threshold=0.0, normal_scores=(0.0, 0.0)))


def test_results_say_what_they_hold(root):
    r = Result(np.array([1.0, 3.0]), np.zeros((2, 4, 4)), 2.0, np.array([False, True]))
    assert r.labels.tolist() == [False, True] and r.masks is None
    with pytest.raises(PackdError, match="^no threshold for this product yet"):
        _ = Result(np.array([1.0]), np.zeros((1, 4, 4)), None).labels
    with Detector.open(root / "few") as det:
        det.prototypes(_frames(2))
        r = det.detect(_frames(2), threshold=1e9)
        assert r.labels.tolist() == [False, False] and r.masks is None and r.threshold == 1e9


def test_the_detector_describes_its_bundle(root):
    with Detector.open(root / "position") as det:
        assert (det.few_shot, det.frame_hw, det.memory, det.max_batch, det.max_shots) == (True, (48, 64),
                                                                                         "position", 4, 3)
        assert det.tiling.count == 6 and det.prototype_names == ["prototypes_1"] and det.max_prototypes == 192
        assert det.bundle == root / "position" and det.backend.name == "onnxruntime" and "CPU" in det.reason
    with Detector.open(root / "plain") as det:
        assert (det.few_shot, det.tiling, det.memory, det.prototype_names) == (False, None, None, [])


def test_calibration_frames_are_checked_like_any_frames_and_broken_scores_are_one_line(root):
    with Detector.open(root / "few") as det:
        det.prototypes(_frames(2))
        with pytest.raises(PackdError, match=_exactly("normal images must be 32x32 frames (this bundle's input "
                                                      "size), got 16x16")):
            det.calibrate(_frames(5, hw=(16, 16)))
        huge = Prototypes((np.full((1, 3), 3e38, np.float32),), det.fingerprint, 1)
        with pytest.raises(PackdError, match=_exactly("the model gave non-finite scores: this bundle or these "
                                                      "prototypes are broken")):
            det.detect(_frames(1), prototypes=huge)


def test_signing_without_cryptography_says_what_to_install(monkeypatch):
    import sys

    from packd_runtime import signing

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives", None)
    with pytest.raises(PackdError, match=_exactly("signing needs the cryptography package: pip install "
                                                  "cryptography (or 'packd-runtime[signing]')")):
        signing.generate_keys("/nonexistent/never-written")


class DeviceArray:
    """What a device array shows the runtime: `__cuda_array_interface__` (shape, typestr, data), no numpy."""

    def __init__(self, shape, typestr="|u1", sliceable=True):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (1 << 20, False),
                                         "version": 3}
        if sliceable:
            self.__getitem__ = lambda item: self


def test_device_arrays_are_checked_from_their_interface(root, monkeypatch):
    from packd_runtime.pipeline import batch_size

    assert batch_size(DeviceArray((7, 32, 32, 3))) == 7 and batch_size(np.zeros((3, 2))) == 3
    with Detector.open(root / "few") as det:
        det.prototypes(_frames(2))
        for array, message in [
            (DeviceArray((32, 32, 3)), "images: device arrays must be batched (B,H,W,3), got shape (32, 32, 3)"),
            (DeviceArray((1, 32, 32, 4)), "images must have 3 channels (RGB, last axis), got 4"),
            (DeviceArray((1, 32, 32, 3), "<f4"), "images must be uint8 RGB 0-255, got dtype float32"),
            (DeviceArray((1, 32, 32, 3)), "images: device arrays need a GPU backend (TensorRT, or onnxruntime-gpu's "
                                          "CUDA provider); this detector runs onnxruntime on the CPU: pass numpy "
                                          "arrays"),
        ]:
            with pytest.raises(PackdError, match=_exactly(message)):
                det.detect(array)
        monkeypatch.setattr(det.backend, "device", "cuda:0")  # as on a GPU: the checks after the CPU's
        with pytest.raises(PackdError, match=_exactly("images: a device array of 5 frames, more than this bundle's "
                                                      "batch of 4, must support slicing (cupy, torch, numba do)")):
            det.detect(DeviceArray((5, 32, 32, 3), sliceable=False))
        within = DeviceArray((4, 32, 32, 3), sliceable=False)
        assert det._frames(within, "images") is within  # device arrays pass unchanged
        sliceable = DeviceArray((5, 32, 32, 3))
        assert det._frames(sliceable, "images") is sliceable  # more than a batch, but it slices
        with pytest.raises(PackdError, match="^" + re.escape("images: DeviceArray's __cuda_array_interface__ is "
                                                             "malformed")):
            broken = DeviceArray((1, 32, 32, 3))
            broken.__cuda_array_interface__ = {"shape": "x"}
            det._frames(broken, "images")
    with Detector.open(root / "position") as det:
        monkeypatch.setattr(det.backend, "device", "cuda:0")
        with pytest.raises(PackdError, match=_exactly("support images: this bundle tiles its frames on the host: "
                                                      "pass numpy arrays")):
            det.prototypes(DeviceArray((2, 48, 64, 3)))


def test_open_refuses_what_cannot_be_trusted_in_one_line(root):
    with pytest.raises(PackdError, match=_exactly("build=True cannot be combined with trusted_keys: engines built now "
                                                  "are not signed; build them with packd-export build, then sign "
                                                  "the bundle")):
        Detector.open(root / "few", build=True, trusted_keys=["k.pem"])
    for keys, shown in [(b"k.pem", "bytes b'k.pem'"), (5, "int 5"), ([5], "list [5]")]:
        with pytest.raises(PackdError, match=_exactly(f"trusted_keys must be public key files: a path or a list of "
                                                      f"paths, got {shown}")):
            Detector.open(root / "few", trusted_keys=keys)
    det = Detector.open(root / "few")
    det.prototypes(_frames(2))
    det.close()
    with pytest.raises(PackdError, match=_exactly("this detector is closed: open the bundle again")):
        det.detect(_frames(1))


def test_host_frames_are_made_contiguous_and_numpys_own_complaint_is_cut_at_120_characters(root):
    with Detector.open(root / "few") as det:
        flipped = _frames(2)[:, ::-1]
        assert not flipped.flags.c_contiguous and det._frames(flipped, "images").flags.c_contiguous
        ragged = [np.zeros((32, 32, 3), np.uint8), np.zeros((16, 32, 3), np.uint8)]
        try:
            np.asarray(ragged)
        except ValueError as e:
            first = str(e).splitlines()[0]
        assert len(first) > 120
        with pytest.raises(PackdError, match=_exactly(f"images must be a uint8 RGB array, got list numpy cannot "
                                                      f"convert ({first[:120]})")):
            det.detect(ragged)


def test_engines_the_signature_did_not_cover_are_said_to_be_ignored(tmp_path):
    import hashlib
    import json

    from packd_runtime.bundle_format import MANIFEST
    from packd_runtime.signing import generate_keys, sign_bundle

    bundle = tmp_path / "b"
    write_toy_bundle(bundle)
    private, public = generate_keys(tmp_path / "k")
    sign_bundle(bundle, private)
    raw = json.loads((bundle / MANIFEST).read_text())
    (bundle / "query.plan").write_bytes(b"plan")
    raw["engines"] = [{"graph": "query", "file": "query.plan", "tensorrt": "10.0", "compute_capability": "8.7"}]
    raw["files"]["query.plan"] = hashlib.sha256(b"plan").hexdigest()
    (bundle / MANIFEST).write_text(json.dumps(raw))  # an engine added after signing: the signature still holds
    with Detector.open(bundle, trusted_keys=[public]) as det:
        assert "1 engine(s) not covered by the signature were ignored" in det.reason
    with Detector.open(bundle) as det:  # without keys nothing is filtered
        assert "not covered by the signature" not in det.reason
