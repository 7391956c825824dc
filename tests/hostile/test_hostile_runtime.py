"""Hostile input, runtime surface: prototypes that are wrong, forged or damaged; calls after close();
close() under load; full disks."""

import errno
import threading
import time
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from conftest import FRAME

from packd_runtime import Detector, PackdError, Prototypes


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *FRAME, 3), dtype=np.uint8)


@pytest.fixture
def det(bundles):
    with Detector.open(bundles["packd"][1], backend="onnxruntime") as d:
        yield d


def test_wrong_prototypes_are_refused(det, tmp_path):
    good = det.prototypes(_frames(2))
    fp, arrays = good.fingerprint, good.arrays
    cases = [
        (Prototypes(tuple(a.astype(np.float64) for a in arrays), fp, 2), "must be float32, got float64"),
        (Prototypes(tuple(a[:0] for a in arrays), fp, 2), "takes 1 to"),
        (Prototypes(tuple(a[:, :-1] for a in arrays), fp, 2), "must be \\(n, C\\)"),
        (Prototypes(arrays[:2], fp, 2), "expected 3 prototype arrays"),
        (Prototypes((arrays[0][:3], *arrays[1:]), fp, 2), "one n"),
        (Prototypes(tuple(np.concatenate([a] * 3) for a in arrays), fp, 2), "takes 1 to 24"),
        (Prototypes(tuple(np.full_like(a, np.nan) for a in arrays), fp, 2), "NaN or infinite"),
    ]
    for bad, match in cases:
        with pytest.raises(PackdError, match=match):
            det.use(bad)
        with pytest.raises(PackdError, match=match):
            det.detect(_frames(1), bad)
    forged = Prototypes(tuple(np.full_like(a, np.inf) for a in arrays), fp, 2)  # right fingerprint, inf values
    forged.save(tmp_path / "forged.npz")
    with pytest.raises(PackdError, match="NaN or infinite"):
        det.use(Prototypes.load(tmp_path / "forged.npz"))


def test_damaged_prototype_files_are_refused(det, tmp_path):
    good = det.prototypes(_frames(2))
    good.save(tmp_path / "p.npz")
    data = (tmp_path / "p.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:
        z.writestr("x.npy", b"not an array")
    np.savez(tmp_path / "objects.npz", stage_1=np.array([{"a": 1}], dtype=object), fingerprint=np.array("x"),
             shots=np.array(1))
    for name in ("truncated.npz", "other.npz", "objects.npz"):
        with pytest.raises(PackdError, match="corrupted prototypes file"):
            Prototypes.load(tmp_path / name)


def test_calls_after_close_are_clear_errors(bundles):
    det = Detector.open(bundles["packd"][1], backend="onnxruntime")
    protos = det.prototypes(_frames(2))
    det.close()
    det.close()  # twice is harmless
    for call in (lambda: det.detect(_frames(1)), lambda: det.prototypes(_frames(1)),
                 lambda: det.calibrate(_frames(2)), lambda: det.detect(_frames(1), protos)):
        with pytest.raises(PackdError, match="detector is closed"):
            call()


def test_close_waits_for_calls_in_flight(bundles):
    det = Detector.open(bundles["rd"][1], backend="onnxruntime")
    real = det.pipeline.run
    started = threading.Event()

    def slow(graph, feeds):
        started.set()
        time.sleep(0.5)
        return real(graph, feeds)

    det.pipeline = replace(det.pipeline, run=slow)
    results = []
    t = threading.Thread(target=lambda: results.append(det.detect(_frames(2))))
    t.start()
    started.wait(5)
    t0 = time.perf_counter()
    det.close()  # must not pull the sessions from under the running call
    assert time.perf_counter() - t0 > 0.2
    t.join()
    assert len(results) == 1 and results[0].scores.shape == (2,)


def test_non_finite_thresholds_are_refused(det):
    det.prototypes(_frames(2))
    with pytest.raises(PackdError, match="threshold must be a finite number"):
        det.detect(_frames(1), threshold=float("nan"))


def test_a_full_disk_keeps_the_old_prototypes_file(det, tmp_path, monkeypatch):
    protos = det.prototypes(_frames(2))
    protos.save(tmp_path / "p.npz")
    before = (tmp_path / "p.npz").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(PackdError, match="disk full"):
        protos.save(tmp_path / "p.npz")
    assert (tmp_path / "p.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]


def test_a_prototypes_file_that_unpacks_to_gigabytes_is_refused_before_reading(tmp_path):
    import resource

    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, fingerprint=np.array("abc"), shots=np.array(2),
                        stage_1=np.zeros((375_000_000,), np.float32))  # 1.5 GB of zeros in about 1.5 MB
    assert bomb.stat().st_size < 3_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PackdError, match="not a small .npy array"):
        Prototypes.load(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing was unpacked
    packed = tmp_path / "many.npz"
    np.savez(packed, fingerprint=np.array("abc"), shots=np.array(2),
             **{f"stage_{i}": np.zeros((1000, 100), np.float32) for i in range(1, 5)})  # 1.6 MB of arrays
    with pytest.raises(PackdError, match="1601522 bytes, more than 1000000: refused before reading it"):
        Prototypes.load(packed, max_bytes=1_000_000)  # the file itself is larger than the limit
    assert len(Prototypes.load(packed).arrays) == 4
    small = tmp_path / "many_small.npz"
    np.savez_compressed(small, fingerprint=np.array("abc"), shots=np.array(2),
                        **{f"stage_{i}": np.zeros((1000, 100), np.float32) for i in range(1, 5)})
    with pytest.raises(PackdError, match="would take more than 1000000 bytes"):
        Prototypes.load(small, max_bytes=1_000_000)  # a small file whose arrays together unpack past it
    objects = tmp_path / "objects.npz"
    with zipfile.ZipFile(objects, "w") as z:
        with z.open("stage_1.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PackdError, match="holds Python objects"):
        Prototypes.load(objects)


def test_thresholds_that_are_not_numbers_and_device_arrays_on_the_cpu_are_one_line(det):
    det.prototypes(_frames(2))
    for bad in ("0.5", np.array([1.0, 2.0]), True, None.__class__):
        with pytest.raises(PackdError, match="threshold must be a number"):
            det.detect(_frames(1), threshold=bad)
    assert det.detect(_frames(1), threshold=np.float32(0.5)).threshold == 0.5

    class DeviceOnly:  # what a camera SDK's GPU buffer may look like: the interface and nothing else
        __cuda_array_interface__ = {"shape": (1, *FRAME, 3), "typestr": "|u1", "data": (0, False), "version": 3}

    with pytest.raises(PackdError, match="device arrays need a GPU backend"):
        det.detect(DeviceOnly())


def test_a_new_product_is_never_judged_by_another_products_threshold(det, tmp_path):
    """A changeover without calibrate used the bundle's default threshold (computed on the training
    categories): defects of the new product came out ok. Now there is no threshold until calibrate."""
    assert det.threshold is None  # the manifest's default belongs to the training categories
    protos = det.prototypes(_frames(2))
    result = det.detect(_frames(3, seed=1))
    assert result.threshold is None and result.scores.shape == (3,) and result.maps.shape[0] == 3
    with pytest.raises(PackdError, match="no threshold for this product yet"):
        _ = result.labels
    with pytest.raises(PackdError, match="no threshold for this product yet"):
        det.detect(_frames(1), masks=True)
    assert det.detect(_frames(1), threshold=0.5).labels.shape == (1,)  # an explicit threshold always works
    t = det.calibrate(_frames(5, seed=2))
    assert det.threshold == t and det.current_prototypes.threshold == t and protos.threshold is None
    assert det.detect(_frames(3, seed=1)).labels.shape == (3,)
    det.current_prototypes.save(tmp_path / "product_a.npz")  # a restart keeps the product's threshold
    det.prototypes(_frames(2, seed=3))  # the next product: its own threshold, none yet
    assert det.threshold is None
    det.use(Prototypes.load(tmp_path / "product_a.npz"))
    assert det.threshold == t
    with pytest.raises(PackdError, match="threshold that is not a finite number"):
        det.use(Prototypes(protos.arrays, protos.fingerprint, protos.shots, float("inf")))


def test_a_triton_line_has_no_threshold_until_it_is_calibrated(bundles):
    from packd_runtime.triton.line_model import LineServer

    with Detector.open(bundles["packd"][1], backend="onnxruntime") as d:
        server = LineServer(d)
        assert server.run("a", "changeover", _frames(2)).threshold is None
        with pytest.raises(PackdError, match="no threshold for this product yet"):
            _ = server.run("a", "detect", _frames(1)).labels
        t = server.run("a", "calibrate", _frames(5, seed=2)).threshold
        server.run("b", "changeover", _frames(2, seed=3))
        assert server.run("a", "detect", _frames(1)).threshold == t
        assert server.run("b", "detect", _frames(1)).threshold is None  # b never borrows a's threshold
