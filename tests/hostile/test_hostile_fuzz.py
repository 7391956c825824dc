"""Hostile input, fuzzed: whatever reaches the manifest reader, `Prototypes.load`, the ONNX scan or the Detector's
input checks either works or is a PackdError of one line, never another exception. Property-based (hypothesis)
with a fixed budget and derandomised examples, so CI runs the same cases every time and stays fast."""

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FRAME
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from packd_runtime import Detector, Prototypes
from packd_runtime.bundle_format import verify_files
from packd_runtime.errors import PackdError
from packd_runtime.manifest import Manifest, read_manifest
from packd_runtime.onnx_scan import external_data_locations, graph_inputs_outputs, local_functions

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=60)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
DELETE = object()


def _one_line(error: PackdError) -> None:
    assert str(error) and "\n" not in str(error), repr(str(error))


def _works_or_one_line(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except PackdError as e:
        _one_line(e)
        return None


def _paths(value, prefix=()):
    """Every key path into a JSON value."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _mutate(manifest, path, new):
    m = json.loads(json.dumps(manifest))
    if not path:
        return new if new is not DELETE else {}
    parent = m
    for key in path[:-1]:
        parent = parent[key]
    if new is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return m


@pytest.fixture(scope="module")
def packd_bundle(bundles):
    manifest, folder = bundles["packd"]
    return json.loads((folder / "manifest.json").read_text()), folder


@FUZZ
@given(value=JSON)
def test_any_json_is_a_manifest_or_one_line(value):
    _works_or_one_line(Manifest.from_dict, value, "fuzz")


@FUZZ
@given(data=st.data())
def test_a_manifest_with_any_field_replaced_or_removed_is_checked_in_one_line(packd_bundle, data):
    manifest, folder = packd_bundle
    path = data.draw(st.sampled_from(sorted(_paths(manifest), key=repr)))
    forged = _mutate(manifest, path, data.draw(JSON | st.just(DELETE)))
    checked = _works_or_one_line(Manifest.from_dict, forged, "fuzz")
    if checked is not None:
        assert checked.to_dict() == forged  # typed, nothing dropped or defaulted
        _works_or_one_line(verify_files, folder, checked)  # reads only inside the bundle, or refuses


@FEW
@given(raw=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_manifest_file_is_read_or_refused_in_one_line(raw):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest.json").write_bytes(raw)
        _works_or_one_line(read_manifest, tmp)


def _saved(protos: Prototypes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        protos.save(Path(tmp) / "p.npz")
        return (Path(tmp) / "p.npz").read_bytes()


def _load(raw: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.npz").write_bytes(raw)
        return _works_or_one_line(Prototypes.load, Path(tmp) / "p.npz", max_bytes=1 << 20)


VALID_NPZ = _saved(Prototypes(arrays=(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)),
                              fingerprint="0123456789abcdef", shots=2, threshold=1.5))


@FUZZ
@given(raw=st.binary(max_size=400),
       edits=st.lists(st.tuples(st.integers(0, len(VALID_NPZ) - 1), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, len(VALID_NPZ)))
def test_any_prototypes_file_loads_or_is_one_line(raw, edits, cut):
    _load(raw)
    damaged = bytearray(VALID_NPZ)
    for at, byte in edits:
        damaged[at] = byte
    _load(bytes(damaged))
    _load(VALID_NPZ[:cut])


ARRAYS = hnp.arrays(dtype=hnp.scalar_dtypes() | hnp.unicode_string_dtypes(max_len=4),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))


@FEW
@given(members=st.dictionaries(st.sampled_from(["fingerprint", "shots", "threshold", "stage_1", "stage_2",
                                                "stage_x", "other"]), ARRAYS, max_size=5))
def test_prototypes_files_of_any_arrays_load_or_are_one_line_and_are_checked_before_use(packd_bundle, members):
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    protos = _load(buffer.getvalue())
    if protos is not None:
        with Detector.open(packd_bundle[1]) as det:
            _works_or_one_line(det.use, protos)


ONNX_FILES = {}


def _onnx(folder: Path, name: str) -> bytes:
    if name not in ONNX_FILES:
        ONNX_FILES[name] = (folder / name).read_bytes()
    return ONNX_FILES[name]


@FUZZ
@given(data=st.data(), raw=st.binary(max_size=300))
def test_the_onnx_scan_reads_any_bytes_or_says_so_in_one_line(packd_bundle, data, raw):
    graph = _onnx(packd_bundle[1], data.draw(st.sampled_from(["query.onnx", "support.onnx"])))
    damaged = bytearray(graph)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(graph) - 1))] = data.draw(st.integers(0, 255))
    cut = graph[:data.draw(st.integers(0, len(graph)))]
    for blob in (raw, bytes(damaged), cut):
        for scan in (external_data_locations, local_functions, graph_inputs_outputs):
            _works_or_one_line(scan, blob)


@pytest.fixture(scope="module")
def detectors(bundles, tmp_path_factory):
    """An rd detector and a packd one with prototypes, opened once for every example."""
    rd = Detector.open(bundles["rd"][1])
    packd = Detector.open(bundles["packd"][1])
    packd.prototypes(np.zeros((2, *FRAME, 3), np.uint8))
    yield rd, packd
    rd.close()
    packd.close()


class DeviceLike:
    """Claims to be a device array: its interface may be anything (the CPU backend must refuse it either way)."""

    def __init__(self, interface):
        self.__cuda_array_interface__ = interface


INTERFACES = JSON | st.fixed_dictionaries({
    "shape": st.lists(st.integers(-2, 100), max_size=5) | JSON,
    "typestr": st.sampled_from(["|u1", "<f4", "xx", ""]) | JSON,
    "data": st.tuples(st.integers(0, 2**64), st.booleans()) | JSON,
    "version": st.integers(0, 4)})

FRAMES = st.one_of(
    st.builds(DeviceLike, INTERFACES),
    hnp.arrays(dtype=st.sampled_from([np.uint8, np.float32, np.int16, np.bool_, np.float64]),
               shape=st.sampled_from([(*FRAME, 3), (1, *FRAME, 3), (2, *FRAME, 3), (0, *FRAME, 3), (*FRAME, 4),
                                      (1, *FRAME[::-1], 3), FRAME, (3,), ()])),
    JSON,
    st.lists(st.lists(st.integers(0, 300), max_size=3), max_size=3),  # ragged nested lists
    st.builds(lambda: np.zeros((1, *FRAME, 3), np.uint8).T),  # right size, other layout
)
THRESHOLDS = st.none() | st.booleans() | st.integers(-10, 10) | st.floats() | st.text(max_size=4) | hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=2))


@FEW
@given(images=FRAMES, threshold=THRESHOLDS, masks=st.booleans())
def test_the_detectors_input_checks_take_anything(detectors, images, threshold, masks):
    rd, packd = detectors
    for det in (rd, packd):
        result = _works_or_one_line(det.detect, images, threshold=threshold, masks=masks)
        if result is not None:
            assert result.scores.shape == (result.maps.shape[0],) and np.isfinite(result.scores).all()
    _works_or_one_line(packd.prototypes, images)
    packd.prototypes(np.zeros((2, *FRAME, 3), np.uint8))  # the next example starts from known prototypes

