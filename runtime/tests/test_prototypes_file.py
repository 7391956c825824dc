"""Saved prototypes (`Prototypes.save` / `Prototypes.load`): what is written is what is read back, every field
typed, and a file that is damaged, holds pickles, is no regular file, or whose arrays would exceed the limit is one
line, before any array is read."""

import io
import os
import zipfile

import numpy as np
import pytest

from packd_runtime import PackdError, Prototypes
from packd_runtime.detector import PROTOTYPES_FILE_LIMIT


def _saved(tmp_path, **fields):
    """An .npz with exactly these fields (numpy arrays), as an older or a hostile writer would leave it."""
    path = tmp_path / "p.npz"
    with open(path, "wb") as f:
        np.savez(f, **fields)
    return path


GOOD = {"fingerprint": np.array("abc"), "shots": np.array(2), "stage_1": np.ones((4, 3), np.float32)}


def test_what_is_saved_is_what_is_loaded(tmp_path):
    arrays = tuple(np.random.default_rng(i).random((5 + i, 3 + i)).astype(np.float32) for i in range(11))
    p = Prototypes(arrays, "f" * 64, 3, threshold=2.5, normal_scores=(0.5, 1.5))
    p.save(tmp_path / "p.npz")
    q = Prototypes.load(tmp_path / "p.npz")
    assert len(q.arrays) == 11 and all(np.array_equal(a, b) for a, b in zip(q.arrays, arrays))  # stage_10 after 9
    assert (q.fingerprint, q.shots, q.threshold, q.normal_scores) == ("f" * 64, 3, 2.5, (0.5, 1.5))
    assert isinstance(q.threshold, float) and isinstance(q.shots, int) and isinstance(q.fingerprint, str)
    Prototypes(arrays[:1], "x", 1).save(tmp_path / "none.npz")
    r = Prototypes.load(tmp_path / "none.npz")
    assert (r.threshold, r.normal_scores, r.shots) == (None, None, 1)
    Prototypes(arrays[:1], "x", 1, threshold=3, normal_scores=(1, 2)).save(tmp_path / "ints.npz")  # ints: floats
    ints = Prototypes.load(tmp_path / "ints.npz")
    assert (ints.threshold, ints.normal_scores) == (3.0, (1.0, 2.0)) and isinstance(ints.threshold, float)
    with np.load(tmp_path / "none.npz") as z:
        assert np.isnan(z["threshold"]) and np.isnan(z["normal_scores"]).all() and z["threshold"].dtype == np.float64


def test_files_of_an_older_packd_without_thresholds_still_load(tmp_path):
    q = Prototypes.load(_saved(tmp_path, **GOOD))
    assert (q.threshold, q.normal_scores, q.shots, q.fingerprint) == (None, None, 2, "abc")
    q = Prototypes.load(_saved(tmp_path, **GOOD, threshold=np.array(3.0)))
    assert (q.threshold, q.normal_scores) == (3.0, None)
    q = Prototypes.load(_saved(tmp_path, **GOOD, threshold=np.array(3.0), normal_scores=np.array([1.0, np.nan])))
    assert q.normal_scores is None


@pytest.mark.parametrize("fields, message", [
    ({"fingerprint": np.array("abc"), "shots": np.array(2)}, "not prototypes"),
    ({"shots": np.array(2), "stage_1": np.ones((2, 3))}, "not prototypes"),
    ({"fingerprint": np.array("abc"), "stage_1": np.ones((2, 3))}, "not prototypes"),
    ({**GOOD, "fingerprint": np.array(5)}, "fingerprint or shot count of the wrong type"),
    ({**GOOD, "fingerprint": np.array(["a", "b"])}, "fingerprint or shot count of the wrong type"),
    ({**GOOD, "shots": np.array(2.0)}, "fingerprint or shot count of the wrong type"),
    ({**GOOD, "shots": np.array([2])}, "fingerprint or shot count of the wrong type"),
    ({**GOOD, "threshold": np.array(3)}, "threshold of the wrong type"),
    ({**GOOD, "threshold": np.array(np.inf)}, "threshold of the wrong type"),
    ({**GOOD, "threshold": np.array([3.0])}, "threshold of the wrong type"),
    ({**GOOD, "normal_scores": np.array([1, 2])}, "normal scores of the wrong type"),
    ({**GOOD, "normal_scores": np.array([1.0, 2.0, 3.0])}, "normal scores of the wrong type"),
])
def test_a_field_missing_or_of_the_wrong_type_is_one_line(tmp_path, fields, message):
    path = _saved(tmp_path, **fields)
    with pytest.raises(PackdError, match=f"corrupted prototypes file {path}: .*{message}"):
        Prototypes.load(path)


def test_pickles_foreign_members_and_broken_zips_are_refused_before_reading(tmp_path):
    with pytest.raises(PackdError, match="holds Python objects"):
        Prototypes.load(_saved(tmp_path, **GOOD, evil=np.array([{"a": 1}], dtype=object)))
    path = tmp_path / "foreign.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("stage_1.npy", _npy(np.ones(3)))
        z.writestr("notes.txt", b"hello")
    with pytest.raises(PackdError, match="member 'notes.txt' is not a small .npy array"):
        Prototypes.load(path)
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PackdError, match="corrupted prototypes file"):
        Prototypes.load(path)
    with pytest.raises(PackdError, match="prototypes file not found"):
        Prototypes.load(tmp_path / "absent.npz")
    with pytest.raises(PackdError, match="not a regular file"):
        Prototypes.load(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(PackdError, match="not a regular file"):  # never opened: opening a pipe would wait
        Prototypes.load(tmp_path / "pipe")
    with pytest.raises(PackdError, match="not a regular file"):
        Prototypes.load("/dev/zero")


def _npy(array, version=(1, 0)):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=False)
    return buf.getvalue()


def _zip(tmp_path, members):
    path = tmp_path / "z.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_the_size_limit_counts_every_member_by_its_header_and_is_exact(tmp_path):
    stage = np.zeros((1000, 3), np.float32)  # deflates to little: the file is far smaller than its arrays
    arrays = {"fingerprint.npy": _npy(np.array("abc")), "shots.npy": _npy(np.array(2)),
              "stage_1.npy": _npy(stage, version=(2, 0))}  # both header versions read
    path = _zip(tmp_path, arrays)
    need = sum(len(data) for data in arrays.values())  # each member: the larger of its data and its file
    assert os.path.getsize(path) < need - 1000 and len(arrays["stage_1.npy"]) > stage.nbytes
    assert Prototypes.load(path, max_bytes=need).arrays[0].shape == (1000, 3)
    with pytest.raises(PackdError, match=f"its arrays would take more than {need - 1} bytes"):
        Prototypes.load(path, max_bytes=need - 1)
    with pytest.raises(PackdError, match="member 'stage_1.npy' is not a small .npy array"):
        Prototypes.load(path, max_bytes=len(arrays["stage_1.npy"]) - 1)
    # a header that claims more than its bytes: counted by the header's size, refused before the data is read
    big = _npy(np.zeros((2, 3), np.float32)).replace(b"(2, 3)", b"(9000, 3)")
    path = _zip(tmp_path, {**arrays, "stage_1.npy": big})
    with pytest.raises(PackdError, match="its arrays would take more than 100000 bytes: refused before reading them"):
        Prototypes.load(path, max_bytes=100_000)
    whole = tmp_path / "whole.npz"
    Prototypes((np.ones((10, 3), np.float32),), "x", 1).save(whole)
    with pytest.raises(PackdError, match=f"{whole.stat().st_size} bytes, more than 100: refused before reading it"):
        Prototypes.load(whole, max_bytes=100)
    assert PROTOTYPES_FILE_LIMIT >= 1 << 28


def test_the_file_names_its_arrays_stage_1_to_n_and_a_member_at_the_limit_is_read(tmp_path):
    Prototypes((np.ones((2, 3), np.float32), np.zeros((2, 5), np.float32)), "x", 1).save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as z:
        assert sorted(z.files) == ["fingerprint", "normal_scores", "shots", "stage_1", "stage_2", "threshold"]
    member = _npy(np.zeros((1000, 3), np.float32))
    path = _zip(tmp_path, {"stage_1.npy": member})  # alone, exactly at the limit: read, then found no prototypes
    with pytest.raises(PackdError, match=r"holds \['stage_1'\], not prototypes$"):
        Prototypes.load(path, max_bytes=len(member))
    with pytest.raises(PackdError, match=r": not a regular file$"):
        Prototypes.load(tmp_path)
    bad = _saved(tmp_path, **{**GOOD, "shots": np.array(2.0)})
    with pytest.raises(PackdError, match=r": fingerprint or shot count of the wrong type$"):
        Prototypes.load(bad)
    with pytest.raises(PackdError, match=r": threshold of the wrong type$"):
        Prototypes.load(_saved(tmp_path, **GOOD, threshold=np.array(3)))
    with pytest.raises(PackdError, match=r": normal scores of the wrong type$"):
        Prototypes.load(_saved(tmp_path, **GOOD, normal_scores=np.array([1, 2])))
    assert Prototypes.load(_saved(tmp_path, **{**GOOD, "shots": np.array(2, np.uint8)})).shots == 2
