"""The bundle format's contract, exactly: graph and tensor names, the dynamic axes export declares, the typed graph
I/O, engines and limits as the manifest writes them, paths that stay inside the bundle, the verified bytes, the
fingerprint's coverage, and a manifest that pickles as its JSON (a process pool hands it back)."""

import json
import pickle
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
from toy_bundle import write_toy_bundle

from packd_runtime import PackdError
from packd_runtime.bundle_format import (
    MANIFEST,
    bundle_path,
    fingerprint,
    graph_axes,
    graph_file,
    prototype_names,
    verify_files,
)
from packd_runtime.manifest import Engine, Graph, Limits, Manifest, Tensor, read_manifest
from packd_runtime.pipeline import max_pool


def test_names_and_axes_are_the_contract():
    assert graph_file("query") == "query.onnx" and prototype_names(0) == []
    assert prototype_names(3) == ["prototypes_1", "prototypes_2", "prototypes_3"]
    assert graph_axes(0) == {"query": {"images": {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}}}
    assert graph_axes(2) == {
        "query": {"images": {0: "batch"}, "prototypes_1": {0: "prototypes"}, "prototypes_2": {0: "prototypes"},
                  "scores": {0: "batch"}, "maps": {0: "batch"}},
        "support": {"images": {0: "shots"}, "prototypes_1": {0: "prototypes"}, "prototypes_2": {0: "prototypes"}}}
    per_position = graph_axes(1, per_position=True)
    assert per_position["query"] == {"images": {0: "batch"}, "prototypes_1": {1: "prototypes"},
                                     "tile_index": {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}}
    assert list(per_position["query"]) == ["images", "prototypes_1", "tile_index", "scores", "maps"]  # input order
    assert per_position["support"] == {"images": {0: "shots"}, "prototypes_1": {0: "prototypes"}}


def test_graph_io_is_typed_from_exports_lists_and_written_back():
    graph = Graph.from_io("query.onnx", [{"name": "images", "dtype": "uint8", "shape": ["batch", 64, 64, 3]},
                                         {"name": "prototypes_1", "dtype": "float32", "shape": ["prototypes", 8]}],
                          [{"name": "scores", "dtype": "float32", "shape": ["batch"]},
                           {"name": "maps", "dtype": "float32", "shape": ["batch", 64, 64]}])
    assert graph.file == "query.onnx" and graph.inputs[1] == Tensor("prototypes_1", "float32", ("prototypes", 8))
    assert graph.outputs == (Tensor("scores", "float32", ("batch",)), Tensor("maps", "float32", ("batch", 64, 64)))
    assert graph.to_dict() == {"file": "query.onnx",
                               "inputs": [{"name": "images", "dtype": "uint8", "shape": ["batch", 64, 64, 3]},
                                          {"name": "prototypes_1", "dtype": "float32", "shape": ["prototypes", 8]}],
                               "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch"]},
                                           {"name": "maps", "dtype": "float32", "shape": ["batch", 64, 64]}]}


def test_engines_and_limits_write_what_they_hold():
    e = Engine("query", "query.plan", "10.3", "8.7")
    assert e.to_dict() == {"graph": "query", "file": "query.plan", "tensorrt": "10.3", "compute_capability": "8.7"}
    full = Engine("query", "query.plan", "10.3", "8.7", gpu="Orin", profile={"images": [[1, 8, 8, 3]] * 3})
    assert full.to_dict() == {"graph": "query", "file": "query.plan", "tensorrt": "10.3", "compute_capability": "8.7",
                              "gpu": "Orin", "profile": {"images": [[1, 8, 8, 3]] * 3}}
    assert Limits(4).to_dict() == {"batch": [1, 4]}
    assert Limits(4, 3, 96).to_dict() == {"batch": [1, 4], "shots": [1, 3], "prototypes": [1, 96]}
    assert [Limits(4, 3, 96).most(a) for a in ("batch", "shots", "prototypes")] == [4, 3, 96]


def test_a_manifest_pickles_as_its_json(tmp_path):
    manifest = write_toy_bundle(tmp_path / "b", frame_hw=(48, 64), tile=32, overlap=16)
    again = pickle.loads(pickle.dumps(manifest))
    assert again == manifest and again.to_dict() == manifest.to_dict() and isinstance(again, Manifest)
    assert again.tiling.tiling.count == manifest.tiling.tiling.count == 6


def test_paths_stay_inside_the_bundle(tmp_path):
    (tmp_path / "b" / "sub").mkdir(parents=True)
    assert bundle_path(tmp_path / "b", "sub/x.onnx") == tmp_path / "b" / "sub" / "x.onnx"
    for name in ["", "/etc/passwd", "../x", "sub/../../x", "a\\b"]:
        with pytest.raises(PackdError, match="names a file outside it"):
            bundle_path(tmp_path / "b", name)
    (tmp_path / "b" / "link").symlink_to(tmp_path / "b" / "sub")
    with pytest.raises(PackdError, match="is a symbolic link: refused"):
        bundle_path(tmp_path / "b", "link/x.onnx")


def test_verify_files_returns_the_bytes_it_hashed_and_refuses_any_other(tmp_path):
    bundle = tmp_path / "b"
    manifest = write_toy_bundle(bundle)
    verified = verify_files(bundle, manifest)
    assert set(verified) == {"query.onnx", "support.onnx"}
    assert all(verified[n] == (bundle / n).read_bytes() for n in verified)
    (bundle / "notes.txt").write_text("x")
    import hashlib

    listed = replace(manifest, files={**manifest.files, "notes.txt": hashlib.sha256(b"x").hexdigest()})
    assert set(verify_files(bundle, listed)) == {"query.onnx", "support.onnx"}  # hashed, not handed to loaders
    with pytest.raises(PackdError, match="bundle file missing: .*absent.bin"):
        verify_files(bundle, replace(manifest, files={**manifest.files, "absent.bin": "0" * 64}))
    with pytest.raises(PackdError, match="notes.txt was altered or corrupted"):
        verify_files(bundle, replace(manifest, files={**manifest.files, "notes.txt": "0" * 64}))
    data = (bundle / "query.onnx").read_bytes()
    (bundle / "query.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(PackdError, match="query.onnx was altered or corrupted"):
        verify_files(bundle, manifest)


def test_graph_io_other_than_the_manifests_is_refused(tmp_path):
    bundle = tmp_path / "b"
    manifest = write_toy_bundle(bundle)
    query = manifest.graphs["query"]
    wider = replace(query, inputs=(replace(query.inputs[0], shape=("batch", 64, 64, 3)), *query.inputs[1:]))
    with pytest.raises(PackdError, match="query.onnx has inputs .* not the manifest's .*: refused"):
        verify_files(bundle, replace(manifest, graphs={**manifest.graphs, "query": wider}))


def test_the_fingerprint_covers_graphs_frame_input_normalisation_and_tiling(tmp_path):
    base = write_toy_bundle(tmp_path / "a")
    fp = fingerprint(base)
    assert len(fp) == 16 and int(fp, 16) >= 0 and fingerprint(base) == fp
    changed = [replace(base, files={**base.files, "query.onnx": "1" * 64}),
               replace(base, files={**base.files, "support.onnx": "1" * 64}),
               replace(base, frame_hw=(32, 48)), replace(base, image_size=9), replace(base, mean=(0.4, 0.5, 0.5)),
               replace(base, std=(0.5, 0.5, 0.6)),
               write_toy_bundle(tmp_path / "t", frame_hw=(32, 32), tile=32),
               write_toy_bundle(tmp_path / "p", frame_hw=(32, 32), tile=32, memory="position")]
    prints = [fingerprint(m) for m in changed]
    assert fp not in prints and len(set(prints)) == len(prints)
    same = [replace(base, threshold=1.0), replace(base, created="2030-01-01T00:00:00+00:00"),
            replace(base, engines=(Engine("query", "query.plan", "10", "8.7"),),
                    files={**base.files, "query.plan": "2" * 64})]
    assert {fingerprint(m) for m in same} == {fp}  # thresholds, dates and engines are not the model


def test_read_manifest_types_what_export_wrote(tmp_path):
    bundle = tmp_path / "b"
    manifest = write_toy_bundle(bundle, frame_hw=(48, 64), tile=32, overlap=16, memory="position")
    assert read_manifest(bundle) == manifest
    raw = json.loads((bundle / MANIFEST).read_text())
    assert raw == manifest.to_dict() and raw["tiling"]["memory"] == "position"
    shutil.copytree(bundle, tmp_path / "c")
    raw["unknown"] = 1
    (tmp_path / "c" / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(PackdError, match="unknown"):
        read_manifest(tmp_path / "c")


def test_max_pool_takes_the_max_of_each_block():
    maps = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    maps[1, 5, 2] = 1000.0
    pooled = max_pool(maps, 4)
    assert pooled.shape == (2, 4, 4)
    assert np.array_equal(pooled[0], maps[0].reshape(4, 2, 4, 2).max(axis=(1, 3)))
    assert pooled[1, 2, 1] == 1000.0 and pooled[0, 0, 0] == 9.0 and pooled[0, 3, 3] == 63.0
    assert np.array_equal(max_pool(maps, 2)[1], [[maps[1, :4, :4].max(), maps[1, :4, 4:].max()],
                                                  [1000.0, maps[1, 4:, 4:].max()]])
    assert max_pool(maps, 8) is maps
    three = np.random.default_rng(0).random((3, 6, 6))
    assert max_pool(three, 2).shape == (3, 2, 2) and max_pool(three, 2)[2, 1, 0] == three[2, 3:, :3].max()


def _rewrite_query(bundle, edit):
    """Edit the bundle's query graph with onnx and re-record its hash (as a forger with the manifest would)."""
    import hashlib

    import onnx

    model = onnx.load(bundle / "query.onnx")
    edit(model)
    data = model.SerializeToString()
    (bundle / "query.onnx").write_bytes(data)
    raw = json.loads((bundle / MANIFEST).read_text())
    raw["files"]["query.onnx"] = hashlib.sha256(data).hexdigest()
    return raw


def _external(location):
    import onnx

    def edit(model):
        t = next(i for i in model.graph.initializer if i.name == "feat_shape")
        t.ClearField("raw_data")
        t.ClearField("int64_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", location
    return edit


def test_tensor_data_outside_or_unlisted_is_refused_before_any_loader(tmp_path):
    import hashlib

    for location, message in [
        ("../secret.bin", "query.onnx keeps tensor data outside the bundle ('../secret.bin': bundle {b} names a file "
                          "outside it: '../secret.bin'): refused"),
        ("/tmp/secret.bin", "query.onnx keeps tensor data outside the bundle ('/tmp/secret.bin': absolute or empty "
                            "location): refused"),
        ("weights.bin", "query.onnx keeps tensor data in 'weights.bin', which the manifest does not list (so it was "
                        "never hashed): refused"),
    ]:
        bundle = tmp_path / location.replace("/", "_")
        write_toy_bundle(bundle)
        raw = _rewrite_query(bundle, _external(location))
        manifest = Manifest.from_dict(raw, "M")
        with pytest.raises(PackdError, match="^" + re.escape(message.format(b=bundle)) + "$"):
            verify_files(bundle, manifest)
    bundle = tmp_path / "listed"
    write_toy_bundle(bundle)
    raw = _rewrite_query(bundle, _external("weights.bin"))
    (bundle / "weights.bin").write_bytes(np.array([0, -1, 3], np.int64).tobytes())
    raw["files"]["weights.bin"] = hashlib.sha256((bundle / "weights.bin").read_bytes()).hexdigest()
    assert set(verify_files(bundle, Manifest.from_dict(raw, "M"))) == {"query.onnx", "support.onnx"}


def test_graphs_defining_functions_are_refused_naming_three(tmp_path):
    from onnx import helper

    def edit(model):
        for i in range(4):
            model.functions.append(helper.make_function("evil", f"F{i}", ["x"], ["y"], [
                helper.make_node("Identity", ["x"], ["y"])], [helper.make_opsetid("", 18)]))

    bundle = tmp_path / "b"
    write_toy_bundle(bundle)
    raw = _rewrite_query(bundle, edit)
    with pytest.raises(PackdError, match=r"^query.onnx defines ONNX functions \(F0, F1, F2\), which packd never "
                                         r"emits: refused$"):
        verify_files(bundle, Manifest.from_dict(raw, "M"))


def test_io_other_than_the_manifests_is_named_both_ways(tmp_path):
    bundle = tmp_path / "b"
    manifest = write_toy_bundle(bundle)
    query = manifest.graphs["query"]
    said = replace(query, inputs=(replace(query.inputs[0], shape=("batch", 64, 64, 3)), *query.inputs[1:]))
    real_in = "[('images', 'uint8', ['batch', 32, 32, 3]), ('prototypes_1', 'float32', ['prototypes', 3])]"
    real_out = "[('scores', 'float32', ['batch']), ('maps', 'float32', ['batch', 8, 8])]"
    said_in = "[('images', 'uint8', ['batch', 64, 64, 3]), ('prototypes_1', 'float32', ['prototypes', 3])]"
    message = (f"query.onnx has inputs {real_in} and outputs {real_out}, not the manifest's {said_in} and {real_out} "
               "(a frame size or prototype width the graph does not take): refused")
    with pytest.raises(PackdError, match="^" + re.escape(message) + "$"):
        verify_files(bundle, replace(manifest, graphs={**manifest.graphs, "query": said}))


def test_the_fingerprint_of_a_given_manifest_never_changes(tmp_path):
    """Saved prototypes carry it: a packd that computed it otherwise would refuse every product saved before."""
    manifest = write_toy_bundle(tmp_path / "b", frame_hw=(48, 64), tile=32, overlap=16)
    fixed = replace(manifest, files={"query.onnx": "1" * 64, "support.onnx": "2" * 64})
    import hashlib

    identity = {"graphs": [["query", "1" * 64], ["support", "2" * 64]], "frame": [48, 64], "image_size": 8,
                "normalisation": [[0.5] * 3, [0.5] * 3],
                "tiling": {"tile": 32, "overlap": 16, "rois": [], "map_side": 8, "memory": "shared"}}
    expected = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint(fixed) == expected == "fe4b2bdfa5ab6e01"


def test_dot_dot_and_the_folder_itself_are_outside(tmp_path):
    (tmp_path / "b" / "sub").mkdir(parents=True)
    for name in ["sub/../x.onnx", "."]:
        with pytest.raises(PackdError, match="^" + re.escape(f"bundle {tmp_path / 'b'} names a file outside it: "
                                                             f"{name!r}") + "$"):
            bundle_path(tmp_path / "b", name)


def test_the_pipeline_never_sends_more_than_the_bundles_limits(tmp_path):
    from packd_runtime.pipeline import Pipeline

    seen = []

    def run(graph, feeds):
        n = len(feeds["images"])
        seen.append((graph, n))
        if graph == "support":
            return {"prototypes_1": np.ones((n, 3), np.float32)}
        return {"scores": np.zeros(n, np.float32), "maps": np.zeros((n, 2, 2), np.float32)}

    pipe = Pipeline(run, Limits(4, 3, 100), ("prototypes_1",))
    protos = pipe.prototypes(np.zeros((7, 8, 8, 3), np.uint8))
    scores, maps = pipe.score(np.zeros((9, 8, 8, 3), np.uint8), protos)
    assert seen == [("support", 3), ("support", 3), ("support", 1), ("query", 4), ("query", 4), ("query", 1)]
    assert protos[0].shape == (7, 3) and scores.shape == (9,) and maps.shape == (9, 2, 2)
    seen.clear()
    pipe.score(np.zeros((4, 8, 8, 3), np.uint8), protos)
    assert seen == [("query", 4)]
