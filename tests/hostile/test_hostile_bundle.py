"""Hostile input, bundle surface: forged manifests and graphs with their hashes recomputed (as an
attacker would), external data and paths that point outside the bundle, symbolic links."""

import json
import math
import shutil

import numpy as np
import onnx
import pytest
from conftest import FRAME
from onnx import numpy_helper

from packd.errors import PackdError
from packd_export.check import check_bundle
from packd_runtime import Detector
from packd_runtime.files import sha256


def forge(src, dst, manifest=None, graph=None, rehash=True):
    """Copy a bundle, edit its manifest (dict -> None) and/or its query graph (ModelProto -> None),
    then recompute every hash the manifest lists, so only the checks beyond hashes can catch it."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    if graph is not None:
        model = onnx.load(dst / "query.onnx")
        graph(model, dst)
        onnx.save(model, dst / "query.onnx")
    if manifest is not None:
        manifest(m, dst)
    if rehash:
        m["files"] = {name: sha256(dst / name) for name in m["files"] if (dst / name).is_file()} | {
            name: d for name, d in m["files"].items() if not (dst / name).is_file()}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _refused(bundle, match):
    with pytest.raises(PackdError, match=match):
        check_bundle(bundle)
    with pytest.raises(PackdError, match=match):
        Detector.open(bundle)


def _externalise(location, copy_secret_to=None):
    def edit(model, dst):
        t = max(model.graph.initializer, key=lambda i: len(i.raw_data))
        data = numpy_helper.to_array(t)
        target = dst / location if copy_secret_to is None else copy_secret_to
        target.parent.mkdir(parents=True, exist_ok=True)
        (data + 1.0).astype(data.dtype).tofile(target)  # different values: a loader that follows it changes scores
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", location
    return edit


def test_non_finite_thresholds_and_weights_fail_closed(bundles, tmp_path):
    src = bundles["rd"][1]
    b = forge(src, tmp_path / "nan", manifest=lambda m, d: m.update(threshold=math.nan))
    _refused(b, "threshold is nan")

    def poison(model, dst):
        t = max(model.graph.initializer, key=lambda i: len(i.raw_data))
        a = numpy_helper.to_array(t).copy()
        a.flat[0] = np.inf
        t.CopyFrom(numpy_helper.from_array(a, t.name))

    with pytest.raises(PackdError, match="non-finite weights"):
        check_bundle(forge(src, tmp_path / "inf", graph=poison))


def test_check_verifies_the_graphs_real_io_and_every_listed_file(bundles, tmp_path):
    src = bundles["rd"][1]
    b = forge(src, tmp_path / "unlisted", manifest=lambda m, d: m["files"].pop("query.onnx"))
    _refused(b, "not listed in 'files'")
    b = forge(src, tmp_path / "renamed", manifest=lambda m, d: m["graphs"]["query"]["outputs"][0].update(name="score"))
    _refused(b, "outputs must be")

    def swap(model, dst):  # maps first, scores second: a positional reader would return maps as scores
        outs = list(model.graph.output)
        del model.graph.output[:]
        model.graph.output.extend(outs[::-1])

    b = forge(src, tmp_path / "swapped", graph=swap)
    _refused(b, "differ from the manifest|not the manifest's")
    both = forge(src, tmp_path / "swapped_both", graph=swap,
                 manifest=lambda m, d: m["graphs"]["query"].update(outputs=m["graphs"]["query"]["outputs"][::-1]))
    frames = np.random.default_rng(0).integers(0, 256, (2, *FRAME, 3), dtype=np.uint8)
    with Detector.open(src) as a, Detector.open(both) as c:  # consistent but reordered: read by name, equal
        ra, rc = a.detect(frames), c.detect(frames)
    assert ra.scores.shape == rc.scores.shape == (2,) and np.array_equal(ra.scores, rc.scores)


@pytest.mark.parametrize("location", ["../../secret.bin", "/tmp/packd_secret.bin"])
def test_external_data_outside_the_bundle_is_never_loaded(bundles, tmp_path, location):
    secret = tmp_path / "secret.bin" if location.startswith("..") else None
    b = forge(bundles["rd"][1], tmp_path / "x" / "ext", graph=_externalise(location, secret or
                                                                          tmp_path / "packd_secret.bin"))
    _refused(b, "outside the bundle|outside it")


def test_external_data_inside_the_bundle_must_be_listed_and_hashed(bundles, tmp_path):
    b = forge(bundles["rd"][1], tmp_path / "unlisted", graph=_externalise("weights.bin"))
    _refused(b, "does not list")
    listed = forge(bundles["rd"][1], tmp_path / "listed", graph=_externalise("weights.bin"),
                   manifest=lambda m, d: m["files"].update({"weights.bin": "0" * 64}))
    with Detector.open(listed) as det:  # inside, listed, hashed: a legitimate large-model layout loads
        assert det.detect(np.zeros((1, *FRAME, 3), np.uint8)).scores.shape == (1,)
    (listed / "weights.bin").write_bytes((listed / "weights.bin").read_bytes()[::-1])
    _refused(listed, "altered or corrupted")


def test_manifest_paths_and_symbolic_links_stay_inside(bundles, tmp_path):
    src = bundles["rd"][1]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(src / "query.onnx", outside / "query.onnx")
    b = forge(src, tmp_path / "dotdot", manifest=lambda m, d: (
        m["graphs"]["query"].update(file="../elsewhere/query.onnx"),
        m["files"].update({"../elsewhere/query.onnx": sha256(outside / "query.onnx")})), rehash=False)
    _refused(b, "outside it")
    b = forge(src, tmp_path / "absolute", manifest=lambda m, d: (
        m["graphs"]["query"].update(file=str(outside / "query.onnx")),
        m["files"].update({str(outside / "query.onnx"): sha256(outside / "query.onnx")})), rehash=False)
    _refused(b, "outside it")
    dotdot_inside = forge(src, tmp_path / "dotdot_inside", manifest=lambda m, d: (
        m["graphs"]["query"].update(file="x/../query.onnx"),
        m["files"].update({"x/../query.onnx": m["files"]["query.onnx"]})), rehash=False)
    (dotdot_inside / "x").mkdir()
    _refused(dotdot_inside, "outside it")  # refused by the `..` rule itself, though it resolves inside
    link = forge(src, tmp_path / "link", rehash=False)
    (link / "query.onnx").unlink()
    (link / "query.onnx").symlink_to(outside / "query.onnx")
    _refused(link, "symbolic link")


@pytest.mark.parametrize("edit, match", [
    (lambda m, d: m.pop("threshold"), "missing 'threshold'"),
    (lambda m, d: m.update(threshold="0.5"), "'threshold' has the wrong type"),
    (lambda m, d: m["input"].update(height="72"), "'height' has the wrong type"),
    (lambda m, d: m.update(graphs=[]), "'graphs' has the wrong type"),
    (lambda m, d: m["dynamic"].update(batch=[0, 4]), "dynamic range batch"),
    (lambda m, d: m.update(engines=[{"file": "x.engine"}]), "not a hashed file"),
    (lambda m, d: m.update(threshold=-1.0), "never negative"),
    (lambda m, d: m.update(threshold=10 ** 400), "too many digits"),
    (lambda m, d: m["dynamic"].update(batch=[1, 2 ** 40]), "max at most 4096"),
    (lambda m, d: m["dynamic"].update(batch=[1, True]), "dynamic range batch"),
    (lambda m, d: m["input"].update(height=20000), "must be 1 to 8192 pixels"),
    (lambda m, d: m.update(threshold=m["threshold"] * 1000), r"more than 10.0x outside the scores of the normal"),
    (lambda m, d: m.update(threshold=m["normal_scores"]["min"] / 1000), r"more than 10.0x outside the scores"),
    (lambda m, d: m.update(threshold=1e30), r"more than 10.0x outside the scores"),
    (lambda m, d: m.pop("normal_scores"), "missing 'normal_scores'"),
    (lambda m, d: m["normal_scores"].update(max=10 ** 400), "'max' is not a usable number"),
    (lambda m, d: m["normal_scores"].update(images=0), "normal_scores must count at least one image"),
])
def test_manifests_with_missing_or_mistyped_keys_are_one_line_errors(bundles, tmp_path, edit, match):
    _refused(forge(bundles["rd"][1], tmp_path / "b", manifest=edit), match)


def test_a_manifest_nested_too_deep_or_with_absurd_numbers_is_one_line(bundles, tmp_path):
    deep = forge(bundles["rd"][1], tmp_path / "deep", rehash=False)
    (deep / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    _refused(deep, "corrupted .*RecursionError")


def test_prototype_limits_that_make_no_sense_are_refused(bundles, tmp_path):
    for name, edit in (("negative", lambda m, d: m["prototypes"].update(max_count=-1)),
                       ("zero_per_shot", lambda m, d: m["prototypes"].update(per_shot=0))):
        _refused(forge(bundles["packd"][1], tmp_path / name, manifest=edit), "max_count 0 .no bound. or more")


def _function_with_external_default(location):
    def edit(model, dst):
        (dst.parent / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
        tensor = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[4],
                                  data_location=onnx.TensorProto.EXTERNAL)
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
        default = onnx.helper.make_attribute("w", tensor)
        function = onnx.helper.make_function("evil", "Weights", ["x"], ["y"], [
            onnx.helper.make_node("Identity", ["x"], ["y"])], [onnx.helper.make_opsetid("", 18)],
            attributes=[])
        function.attribute_proto.append(default)
        model.functions.append(function)
    return edit


def test_external_data_through_an_onnx_functions_default_attribute_is_found(bundles, tmp_path):
    from packd_runtime.onnx_scan import external_data_locations, local_functions

    b = forge(bundles["rd"][1], tmp_path / "x" / "fn", graph=_function_with_external_default("../secret.bin"))
    data = (b / "query.onnx").read_bytes()
    assert "../secret.bin" in external_data_locations(data) and local_functions(data) == ["Weights"]
    _refused(b, "defines ONNX functions")


def test_a_bundle_folder_name_that_is_not_utf8_opens_or_says_why(bundles, tmp_path):
    """A name with a byte that is not UTF-8 (Python keeps it as a surrogate) opens like any other; a graph with
    external data, which ONNX Runtime must open by path, is refused in one line naming the folder."""
    import os

    from packd_runtime.files import native_path

    name = tmp_path / os.fsdecode(b"line\xff")
    shutil.copytree(bundles["rd"][1], name)
    frames = np.random.default_rng(0).integers(0, 256, (2, *FRAME, 3), dtype=np.uint8)
    check_bundle(name)
    with Detector.open(name) as det, Detector.open(bundles["rd"][1]) as ref:
        np.testing.assert_array_equal(det.detect(frames).scores, ref.detect(frames).scores)
    external = forge(bundles["rd"][1], tmp_path / os.fsdecode(b"ext\xfe"), graph=_externalise("weights.bin"),
                     manifest=lambda m, d: m["files"].update({"weights.bin": "0" * 64}))
    with pytest.raises(PackdError, match=r"ext\\xfe/query.onnx: a folder or file name in this path is not UTF-8"):
        Detector.open(external)
    assert native_path(tmp_path / "plain") == str(tmp_path / "plain")


def test_a_manifest_frame_size_the_graphs_do_not_take_is_refused_at_open(bundles, tmp_path):
    """The manifest consistent with itself (contract and both graphs' image inputs say 96x96) but the graphs
    take FRAME: refused when opened, not at the first frame."""

    def resize(m, d):
        m["input"].update(height=96, width=96)
        for spec in m["graphs"].values():
            spec["inputs"][0]["shape"][1:3] = [96, 96]

    b = forge(bundles["packd"][1], tmp_path / "frame", manifest=resize)
    _refused(b, r"has inputs \[\('images', 'uint8', \['shots', 72, 88, 3\]\)\].*not the manifest's")


def test_the_runtimes_onnx_reader_uses_onnxs_own_field_numbers():
    from onnx import (
        AttributeProto,
        FunctionProto,
        GraphProto,
        ModelProto,
        NodeProto,
        TensorProto,
        TensorShapeProto,
        TypeProto,
        ValueInfoProto,
    )

    from packd_runtime import onnx_scan as s

    def number(message, field):
        return message.DESCRIPTOR.fields_by_name[field].number

    assert (s.MODEL_GRAPH, s.MODEL_TRAINING_INFO, s.MODEL_FUNCTIONS) == tuple(
        number(ModelProto, f) for f in ("graph", "training_info", "functions"))
    assert (s.GRAPH_NODE, s.GRAPH_INITIALIZER, s.GRAPH_SPARSE_INITIALIZER, s.GRAPH_INPUT, s.GRAPH_OUTPUT) == tuple(
        number(GraphProto, f) for f in ("node", "initializer", "sparse_initializer", "input", "output"))
    assert (s.FUNCTION_NAME, s.FUNCTION_NODE, s.FUNCTION_ATTRIBUTE_PROTO) == tuple(
        number(FunctionProto, f) for f in ("name", "node", "attribute_proto"))
    assert s.NODE_ATTRIBUTE == number(NodeProto, "attribute")
    assert (s.ATTR_T, s.ATTR_G, s.ATTR_TENSORS, s.ATTR_GRAPHS, s.ATTR_SPARSE, s.ATTR_SPARSES) == tuple(
        number(AttributeProto, f) for f in ("t", "g", "tensors", "graphs", "sparse_tensor", "sparse_tensors"))
    assert (s.TENSOR_EXTERNAL_DATA, s.TENSOR_DATA_LOCATION) == tuple(
        number(TensorProto, f) for f in ("external_data", "data_location"))
    assert (s.VALUE_NAME, s.VALUE_TYPE) == (number(ValueInfoProto, "name"), number(ValueInfoProto, "type"))
    assert (s.TYPE_TENSOR, s.TENSOR_ELEM_TYPE, s.TENSOR_SHAPE) == (
        number(TypeProto, "tensor_type"), number(TypeProto.Tensor, "elem_type"), number(TypeProto.Tensor, "shape"))
    assert (s.SHAPE_DIM, s.DIM_VALUE, s.DIM_PARAM) == (number(TensorShapeProto, "dim"), number(
        TensorShapeProto.Dimension, "dim_value"), number(TensorShapeProto.Dimension, "dim_param"))
    assert all(TensorProto.DataType.Name(k).lower().replace("float", "float32").replace("float3216", "float16")
               == v for k, v in s.ELEM_TYPES.items())


def test_a_manifest_batch_of_two_to_the_40_never_reaches_a_triton_config(bundles, tmp_path):
    from packd_export.triton import write_repository

    b = forge(bundles["rd"][1], tmp_path / "huge", manifest=lambda m, d: m["dynamic"].update(batch=[1, 2**40]))
    with pytest.raises(PackdError, match=r"dynamic range batch must be \[1, max\] with max at most \d+, got \[1, "):
        write_repository(b, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
