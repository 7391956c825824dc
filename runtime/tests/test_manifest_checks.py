"""Every check the manifest reader makes, one edit at a time, with the exact line it gives; the values at each
bound that are still taken; and the derived facts a reader relies on. (The fuzz tests in tests/hostile/ show
that any JSON gives a manifest or one line; these show which line, so a check made lax or strict is caught.)"""

import copy
import json
import re

import pytest
from toy_bundle import write_toy_bundle

from packd_runtime import PackdError
from packd_runtime.manifest import Limits, Manifest, Tensor, read_manifest

DELETE = object()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifests")
    return {name: write_toy_bundle(root / name, **options).to_dict() for name, options in {
        "few": {}, "plain": {"few_shot": False},
        "tiled": {"frame_hw": (48, 64), "tile": 32, "overlap": 16},
        "position": {"frame_hw": (48, 64), "tile": 32, "overlap": 16, "memory": "position"},
        "plain_tiled": {"few_shot": False, "frame_hw": (48, 64), "tile": 32, "overlap": 16}}.items()}


def edited(base, *changes):
    """`base` with (path, value) changes; a path is keys and indices, DELETE removes the entry."""
    m = copy.deepcopy(base)
    for path, value in changes:
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return m


def refused(m, message):
    with pytest.raises(PackdError, match="^" + re.escape(message) + "$"):
        Manifest.from_dict(m, "M")


def taken(m):
    manifest = Manifest.from_dict(m, "M")
    assert manifest.to_dict() == m
    return manifest


QUERY_IN = ("graphs", "query", "inputs")
GOOD_IMAGES = {"name": "images", "dtype": "uint8", "shape": ["batch", 32, 32, 3]}
CASES = [  # (base, changes, the line after "invalid manifest M: ")
    ("few", [(("kind",), DELETE)], "missing 'kind'"),
    ("few", [(("kind",), 5)], "'kind' has the wrong type (int)"),
    ("few", [(("image_size",), True)], "'image_size' has the wrong type (bool)"),
    ("few", [(("image_size",), 8.0)], "'image_size' has the wrong type (float)"),
    ("few", [(("image_size",), 0)], "image size 0 and frame size 32x32 must be 1 to 8192 pixels"),
    ("few", [(("image_size",), 8193)], "image size 8193 and frame size 32x32 must be 1 to 8192 pixels"),
    ("few", [(("input", "height"), 0)], "image size 8 and frame size 0x32 must be 1 to 8192 pixels"),
    ("few", [(("input", "width"), 8193)], "image size 8 and frame size 32x8193 must be 1 to 8192 pixels"),
    ("few", [(("input", "height"), "32")], "'height' has the wrong type (str)"),
    ("few", [(("input",), [])], "'input' has the wrong type (list)"),
    ("few", [(("input", "dtype"), "float32")], "the input contract must be uint8 NHWC RGB"),
    ("few", [(("input", "layout"), "NCHW")], "the input contract must be uint8 NHWC RGB"),
    ("few", [(("input", "color"), "BGR")], "the input contract must be uint8 NHWC RGB"),
    ("few", [(("input", "range"), [0, 1])], "'input.range.1' is not what packd writes (an entry missing, unknown "
                                            "or malformed)"),
    ("few", [(("normalisation", "mean"), [0.5, 0.5])], "normalisation mean must be three finite numbers, got "
                                                       "[0.5, 0.5]"),
    ("few", [(("normalisation", "std"), [0.5, True, 0.5])], "normalisation std must be three finite numbers, got "
                                                            "[0.5, True, 0.5]"),
    ("few", [(("normalisation", "std"), [0.5, float("inf"), 0.5])], "normalisation std must be three finite "
                                                                    "numbers, got [0.5, inf, 0.5]"),
    ("few", [(("normalisation", "mean"), "0.5")], "normalisation mean must be three finite numbers, got '0.5'"),
    ("few", [(("threshold",), "1")], "'threshold' has the wrong type (str)"),
    ("few", [(("threshold",), float("inf"))], "the threshold is inf: the model it was computed with is broken"),
    ("few", [(("threshold",), float("nan"))], "the threshold is nan: the model it was computed with is broken"),
    ("few", [(("threshold",), -1.0)], "the threshold is -1.0: scores are distances, never negative"),
    ("few", [(("threshold",), 10 ** 400)], "'threshold' is not a usable number (too many digits)"),
    ("few", [(("normal_scores", "images"), 0)], "normal_scores must count at least one image and range over "
                                                "finite scores, got {'images': 0, 'min': 250.0, 'max': 500.0}"),
    ("few", [(("normal_scores", "min"), 501.0)], "normal_scores must count at least one image and range over "
                                                 "finite scores, got {'images': 8, 'min': 501.0, 'max': 500.0}"),
    ("few", [(("normal_scores", "min"), -1.0)], "normal_scores must count at least one image and range over "
                                                "finite scores, got {'images': 8, 'min': -1.0, 'max': 500.0}"),
    ("few", [(("normal_scores", "max"), float("inf"))], "normal_scores must count at least one image and range "
                                                        "over finite scores, got {'images': 8, 'min': 250.0, "
                                                        "'max': inf}"),
    ("few", [(("normal_scores", "min"), float("nan"))], "normal_scores must count at least one image and range "
                                                        "over finite scores, got {'images': 8, 'min': nan, "
                                                        "'max': 500.0}"),
    ("few", [(("threshold",), 5000.5)], "the threshold 5000.5 is more than 10.0x outside the scores of the normal "
                                        "images it was computed from (250 to 500): edited by hand?"),
    ("few", [(("threshold",), 24.5)], "the threshold 24.5 is more than 10.0x outside the scores of the normal "
                                      "images it was computed from (250 to 500): edited by hand?"),
    ("few", [(("normal_scores", "foo"), 1)], "'normal_scores.foo' is not what packd writes (an entry missing, "
                                             "unknown or malformed)"),
    ("few", [(("files", "query.onnx"), "0" * 63)], "'files' must map file names to sha256 digests"),
    ("few", [(("files", "query.onnx"), 5)], "'files' must map file names to sha256 digests"),
    ("few", [(("graphs", "query"), DELETE)], "graphs must be 'query' and optionally 'support', got ['support']"),
    ("few", [(("graphs", "other"), {})], "graphs must be 'query' and optionally 'support', got ['other', 'query', "
                                         "'support']"),
    ("few", [(("graphs", "query", "file"), "x.onnx")], "the query graph's file 'x.onnx' is not listed in 'files' "
                                                       "(so never hashed)"),
    ("few", [((*QUERY_IN, 0, "shape"), ["batch", 32.5, 32, 3])], "images has an invalid shape ['batch', 32.5, 32, "
                                                                 "3]"),
    ("few", [((*QUERY_IN, 0, "shape"), ["batch", True, 32, 3])], "images has an invalid shape ['batch', True, 32, "
                                                                 "3]"),
    ("few", [((*QUERY_IN, 0, "name"), 1)], "'name' has the wrong type (int)"),
    ("few", [((*QUERY_IN, 0, "extra"), 1)], "'graphs.query.inputs.0.extra' is not what packd writes (an entry "
                                            "missing, unknown or malformed)"),
    ("few", [(("dynamic", "batch"), [1])], "dynamic range batch must be [1, max] with max at most 4096, got [1]"),
    ("few", [(("dynamic", "batch"), [0, 4])], "dynamic range batch must be [1, max] with max at most 4096, got "
                                              "[0, 4]"),
    ("few", [(("dynamic", "batch"), [2, 4])], "dynamic range batch must be [1, max] with max at most 4096, got "
                                              "[2, 4]"),
    ("few", [(("dynamic", "batch"), [1, 0])], "dynamic range batch must be [1, max] with max at most 4096, got "
                                              "[1, 0]"),
    ("few", [(("dynamic", "batch"), [1, 4097])], "dynamic range batch must be [1, max] with max at most 4096, got "
                                                 "[1, 4097]"),
    ("few", [(("dynamic", "batch"), [1, 4.0])], "dynamic range batch must be [1, max] with max at most 4096, got "
                                                "[1, 4.0]"),
    ("few", [(("dynamic", "shots"), [1, 1025])], "dynamic range shots must be [1, max] with max at most 1024, got "
                                                 "[1, 1025]"),
    ("few", [(("dynamic", "prototypes"), [1, 2 ** 24 + 1])], "dynamic range prototypes must be [1, max] with max "
                                                             "at most 16777216, got [1, 16777217]"),
    ("few", [(("dynamic", "prototypes"), DELETE)], "missing 'prototypes'"),
    ("few", [(("dynamic", "foo"), [1, 2])], "dynamic ranges must be ['batch', 'prototypes', 'shots'], got "
                                            "['batch', 'foo', 'prototypes', 'shots']"),
    ("plain", [(("dynamic", "shots"), [1, 2])], "dynamic ranges must be ['batch'], got ['batch', 'shots']"),
    ("few", [((*QUERY_IN, 0), {**GOOD_IMAGES, "dtype": "float32"})], "the query graph's first input must be "
                                                                     "{'name': 'images', 'dtype': 'uint8', 'shape': "
                                                                     "['batch', 32, 32, 3]}"),
    ("few", [((*QUERY_IN, 0), {**GOOD_IMAGES, "shape": ["batch", 64, 64, 3]})], "the query graph's first input "
                                                                                "must be {'name': 'images', 'dtype': "
                                                                                "'uint8', 'shape': ['batch', 32, 32, "
                                                                                "3]}"),
    ("plain", [(QUERY_IN, [])], "the query graph's first input must be {'name': 'images', 'dtype': 'uint8', "
                                "'shape': ['batch', 32, 32, 3]}"),
    ("few", [(("graphs", "query", "outputs", 1, "shape"), ["batch", 16, 16])], "the query graph's outputs must be "
                                                                               "['maps', 'scores'] float32 (batch) "
                                                                               "and (batch, 8, 8)"),
    ("few", [(("graphs", "query", "outputs", 0, "dtype"), "float16")], "the query graph's outputs must be ['maps', "
                                                                       "'scores'] float32 (batch) and (batch, 8, 8)"),
    ("few", [(("graphs", "query", "outputs"), [{"name": "scores", "dtype": "float32", "shape": ["batch"]}] * 2)],
     "the query graph's outputs must be ['maps', 'scores'] float32 (batch) and (batch, 8, 8)"),
    ("few", [((*QUERY_IN, 1, "dtype"), "float16"), (("graphs", "support", "outputs", 0, "dtype"), "float16")],
     "prototype inputs must be float32 (prototypes, C)"),
    ("few", [((*QUERY_IN, 1, "shape"), ["prototypes", "C"])], "prototype inputs must be float32 (prototypes, C)"),
    ("few", [((*QUERY_IN, 1, "shape"), ["prototypes"])], "prototype inputs must be float32 (prototypes, C)"),
    ("few", [((*QUERY_IN, 1, "shape"), ["n", 3])], "prototype inputs must be float32 (prototypes, C)"),
    ("few", [(("prototypes", "per_shot"), 0)], "prototypes per shot must be at least 1 and max_count 0 (no bound) "
                                               "or more"),
    ("few", [(("prototypes", "max_count"), -1)], "prototypes per shot must be at least 1 and max_count 0 (no "
                                                 "bound) or more"),
    ("few", [(("prototypes", "channels"), [4])], "the prototypes' channels [4] are not the query graph's"),
    ("few", [(("prototypes",), DELETE)], "missing 'prototypes'"),
    ("few", [(("graphs", "support", "inputs", 0, "shape"), ["batch", 32, 32, 3])], "the support graph must take "
                                                                                   "images uint8 (shots, H, W, 3)"),
    ("few", [(("graphs", "support", "outputs", 0, "name"), "prototypes_2")], "the support graph's outputs must be "
                                                                             "the query graph's prototype inputs"),
    ("few", [(("graphs", "support", "outputs", 0, "shape"), ["prototypes", 4])], "the support graph's outputs must "
                                                                                 "be the query graph's prototype "
                                                                                 "inputs"),
    ("few", [((*QUERY_IN,), [GOOD_IMAGES]), (("prototypes", "channels"), [])], "the support graph's outputs must "
                                                                               "be the query graph's prototype "
                                                                               "inputs"),
    ("plain", [(QUERY_IN, [GOOD_IMAGES, {"name": "prototypes_1", "dtype": "float32", "shape": ["prototypes", 3]}])],
     "a bundle without a support graph takes no prototypes"),
    ("plain", [(("prototypes",), {"per_shot": 1, "channels": [3], "max_count": 0})],
     "a bundle without a support graph has no 'prototypes' entry"),
    ("few", [(("int8",), 5)], "'int8' must be an object, got int"),
    ("few", [(("precision",), 5)], "'precision' has the wrong type (int)"),
    ("few", [(("created",), None)], "'created' has the wrong type (NoneType)"),
    ("few", [(("opset",), "18")], "'opset' has the wrong type (str)"),
    ("few", [(("teacher",), "toy")], "'teacher' has the wrong type (str)"),
    ("few", [(("settings",), [])], "'settings' has the wrong type (list)"),
    ("few", [(("versions",), DELETE)], "missing 'versions'"),
    ("few", [(("checkpoint",), 1)], "'checkpoint' has the wrong type (int)"),
    ("few", [(("engines",), {})], "'engines' has the wrong type (dict)"),
    ("few", [(("input", "width"), "32")], "'width' has the wrong type (str)"),
    ("few", [(("normalisation",), [])], "'normalisation' has the wrong type (list)"),
    ("few", [(("normal_scores",), [])], "'normal_scores' has the wrong type (list)"),
    ("few", [(("normal_scores", "min"), "1")], "'min' has the wrong type (str)"),
    ("few", [(("normal_scores", "max"), None)], "'max' has the wrong type (NoneType)"),
    ("few", [(("normal_scores", "images"), 8.0)], "'images' has the wrong type (float)"),
    ("few", [(("files",), [])], "'files' has the wrong type (list)"),
    ("few", [(("graphs",), [])], "'graphs' has the wrong type (list)"),
    ("few", [(("graphs", "query", "file"), 5)], "'file' has the wrong type (int)"),
    ("few", [(("graphs", "query", "inputs"), {})], "'inputs' has the wrong type (dict)"),
    ("few", [(("graphs", "query", "outputs"), None)], "'outputs' has the wrong type (NoneType)"),
    ("few", [((*QUERY_IN, 0, "dtype"), 8)], "'dtype' has the wrong type (int)"),
    ("few", [((*QUERY_IN, 0, "shape"), "batch")], "'shape' has the wrong type (str)"),
    ("few", [(("dynamic",), [])], "'dynamic' has the wrong type (list)"),
    ("few", [(("dynamic", "batch"), "1,4")], "'batch' has the wrong type (str)"),
    ("few", [(("prototypes", "per_shot"), "64")], "'per_shot' has the wrong type (str)"),
    ("few", [(("prototypes", "max_count"), None)], "'max_count' has the wrong type (NoneType)"),
    ("few", [(("prototypes",), [])], "'prototypes' has the wrong type (list)"),
    ("few", [(("threshold",), True)], "'threshold' has the wrong type (bool)"),
    ("tiled", [(("tiling", "tile"), "32")], "'tile' has the wrong type (str)"),
    ("few", [(("input", "range"), [0, 255, 1])], "'input.range' is not what packd writes (an entry missing, unknown "
                                                 "or malformed)"),
    ("few", [(("input", "range"), "0-255")], "'input.range' is not what packd writes (an entry missing, unknown or "
                                             "malformed)"),
    ("few", [(("input", "range"), [0, 255.0])], "'input.range.1' is not what packd writes (an entry missing, "
                                                "unknown or malformed)"),
    ("few", [(("settings", 5), 1), (("settings", "a"), 2)], None),  # keys of mixed types compared as text
    ("tiled", [(("tiling",), 5)], "its tiling must be an object, got int"),
    ("few", [(("graphs", "support", "outputs", 0, "shape"), ["n", 3])], None),  # the count's symbol may differ
    ("plain", [(("input", "height"), 1), (("input", "width"), 8192),
               ((*QUERY_IN, 0, "shape"), ["batch", 1, 8192, 3])], None),  # the sides' bounds themselves
    ("tiled", [(("tiling",), None)], "its tiling must be an object, got NoneType"),
    ("tiled", [(("tiling", "rois"), [[0, 0, 8]])], "its tiling is unusable: every region of interest must be four "
                                                   "whole numbers Y,X,H,W"),
    ("tiled", [(("tiling", "rois"), [[0, 0, 8, 8.0]])], "its tiling is unusable: every region of interest must be "
                                                        "four whole numbers Y,X,H,W"),
    ("tiled", [(("tiling", "rois"), {})], "'rois' has the wrong type (dict)"),
    ("tiled", [(("tiling", "rois"), DELETE)], "missing 'rois'"),
    ("tiled", [(("tiling", "overlap"), DELETE)], "missing 'overlap'"),
    ("tiled", [(("tiling", "tile"), DELETE)], "missing 'tile'"),
    ("tiled", [(("tiling", "map_side"), DELETE)], "missing 'map_side'"),
    ("tiled", [(("tiling", "overlap"), 32)], "its tiling is unusable: --overlap 32 must be at least 0 and less "
                                             "than the tile (32)"),
    ("tiled", [(("tiling", "rois"), [(0, 0, 8, 8)])], "its tiling is unusable: every region of interest must be "
                                                      "four whole numbers Y,X,H,W"),
    ("tiled", [(("tiling", "map_side"), 3)], "its tiling is unusable: the map side 3 must divide the model's input "
                                             "size 8"),
    ("tiled", [(("tiling", "map_side"), 0)], "its tiling is unusable: the map side 0 must divide the model's input "
                                             "size 8"),
    ("tiled", [(("tiling", "map_side"), 16)], "its tiling is unusable: the map side 16 must divide the model's "
                                              "input size 8"),
    ("tiled", [(("tiling", "map_side"), 4.0)], "'map_side' has the wrong type (float)"),
    ("tiled", [(("tiling", "memory"), "x")], "the tiling's memory must be shared or (few-shot kinds) position, got "
                                             "'x'"),
    ("plain_tiled", [(("tiling", "memory"), "shared")], "the tiling's memory must be shared or (few-shot kinds) "
                                                        "position, got 'shared'"),
    ("tiled", [(("tiling", "memory"), DELETE)], "the tiling's memory must be shared or (few-shot kinds) position, "
                                                "got None"),
    ("position", [(QUERY_IN, [GOOD_IMAGES, {"name": "prototypes_1", "dtype": "float32",
                                            "shape": [6, "prototypes", 3]}])],
     "a per-position query graph's last input must be tile_index int64 (batch)"),
    ("position", [((*QUERY_IN, 2, "dtype"), "int32")], "a per-position query graph's last input must be tile_index "
                                                       "int64 (batch)"),
    ("position", [((*QUERY_IN, 1, "shape"), [5, "prototypes", 3])], "prototype inputs must be float32 "
                                                                    "(prototypes, C), per position (6, prototypes, "
                                                                    "C)"),
    ("position", [((*QUERY_IN, 1, "shape"), ["prototypes", 3])], "prototype inputs must be float32 (prototypes, C), "
                                                                 "per position (6, prototypes, C)"),
    ("position", [((*QUERY_IN, 1, "shape"), [6, "prototypes", 3, 1])], "prototype inputs must be float32 "
                                                                       "(prototypes, C), per position (6, "
                                                                       "prototypes, C)"),
    ("tiled", [((*QUERY_IN, 0, "shape"), ["batch", 48, 64, 3])], "the query graph's first input must be {'name': "
                                                                  "'images', 'dtype': 'uint8', 'shape': ['batch', "
                                                                  "32, 32, 3]}"),
    ("tiled", [(("graphs", "support", "inputs", 0, "shape"), ["shots", 48, 64, 3])], "the support graph must take "
                                                                                     "images uint8 (shots, H, W, 3)"),
]


@pytest.mark.parametrize("base, changes, message", CASES, ids=[str(i) for i in range(len(CASES))])
def test_each_check_gives_its_line(bases, base, changes, message):
    if message is None:  # taken as it is
        taken(edited(bases[base], *changes))
        return
    refused(edited(bases[base], *changes), f"invalid manifest M: {message}")


def test_what_is_no_manifest_at_all(bases):
    refused([], "invalid manifest M: not a JSON object")
    refused(edited(bases["few"], (("format",), 2)), "M has bundle format 2; this packd reads format 3")
    refused(edited(bases["few"], (("format",), DELETE)), "M has bundle format None; this packd reads format 3")
    refused(edited(bases["few"], *((("z" + str(i),), 1) for i in range(7))),
            "invalid manifest M: unknown key(s) 'z0', 'z1', 'z2', 'z3', 'z4': packd writes none of them")


def test_engines_must_be_hashed_files_with_their_fields(bases):
    engine = {"graph": "query", "file": "query.plan", "tensorrt": "10.3", "compute_capability": "8.7"}
    hashed = (("files", "query.plan"), "1" * 64)
    with pytest.raises(PackdError, match=r"^engine \{'graph': 'query', 'file': 'query.plan', 'tensorrt': '10.3', "
                                         r"'compute_capability': '8.7'\} is not a hashed file of the bundle: "
                                         r"refused$"):
        Manifest.from_dict(edited(bases["few"], (("engines",), [engine])), "M")
    with pytest.raises(PackdError, match=r"^engine 5 is not a hashed file of the bundle: refused$"):
        Manifest.from_dict(edited(bases["few"], (("engines",), [5])), "M")
    refused(edited(bases["few"], hashed, (("engines",), [{**engine, "tensorrt": 10}])),
            "invalid manifest M: 'tensorrt' has the wrong type (int)")
    refused(edited(bases["few"], hashed, (("engines",), [{**engine, "gpu": 5}])),
            "invalid manifest M: engine 'query.plan' has a malformed gpu or profile")
    refused(edited(bases["few"], hashed, (("engines",), [{**engine, "profile": []}])),
            "invalid manifest M: engine 'query.plan' has a malformed gpu or profile")
    full = {**engine, "gpu": "Orin", "profile": {"images": [[1, 32, 32, 3], [2, 32, 32, 3], [4, 32, 32, 3]]}}
    m = taken(edited(bases["few"], hashed, (("engines",), [full])))
    assert m.engines[0].gpu == "Orin" and m.engines[0].profile["images"][2] == (4, 32, 32, 3)
    assert taken(edited(bases["few"], hashed, (("engines",), [engine]))).engines[0].profile == {}


def test_values_at_each_bound_are_taken(bases):
    few = bases["few"]
    for changes in [
        [(("threshold",), 5000.0)], [(("threshold",), 25.0)], [(("threshold",), 500)],  # an int equals its float
        [(("normal_scores", "min"), 250)], [(("normal_scores", "min"), 0.0), (("threshold",), 0.0)],
        [(("normal_scores", "images"), 1)], [(("dynamic", "batch"), [1, 4096])], [(("dynamic", "batch"), [1, 1])],
        [(("dynamic", "shots"), [1, 1024])], [(("dynamic", "prototypes"), [1, 2 ** 24])],
        [(("prototypes", "max_count"), 7)], [(("prototypes", "per_shot"), 1)], [(("int8",), {"a": [1]})],
        [(("normalisation", "mean"), [0, 1, 2])],
    ]:
        taken(edited(few, *changes))
    tiled = bases["tiled"]
    for side in (1, 2, 4, 8):
        assert taken(edited(tiled, (("tiling", "map_side"), side))).tiling.tiling.map_side == side
    rois = taken(edited(tiled, (("tiling", "rois"), [[0, 0, 16, 16], [20, 30, 8, 8]])))
    assert rois.tiling.tiling.rois == ((0, 0, 16, 16), (20, 30, 8, 8))
    plain_tiled = taken(bases["plain_tiled"])
    assert plain_tiled.tiling.memory is None and plain_tiled.memory is None


def test_the_facts_readers_rely_on(bases):
    few, plain = taken(bases["few"]), taken(bases["plain"])
    tiled, position = taken(bases["tiled"]), taken(bases["position"])
    assert (few.few_shot, plain.few_shot, tiled.few_shot) == (True, False, True)
    assert (few.memory, tiled.memory, position.memory) == (None, "shared", "position")
    assert (few.positions, tiled.positions, position.positions) == (0, 0, 6)
    assert few.prototype_inputs == (Tensor("prototypes_1", "float32", ("prototypes", 3)),)
    assert position.prototype_inputs == (Tensor("prototypes_1", "float32", (6, "prototypes", 3)),)
    assert (position.prototype_names, position.prototype_channels) == (("prototypes_1",), (3,))
    assert (plain.prototype_names, plain.prototype_channels, plain.max_count) == ((), (), 0)
    assert (few.graph_hw, tiled.graph_hw, few.frame_hw, tiled.frame_hw) == ((32, 32), (32, 32), (32, 32), (48, 64))
    assert (few.map_hw, tiled.map_hw) == ((8, 8), tiled.tiling.tiling.map_hw) and tiled.map_hw == (12, 16)
    assert taken(edited(bases["few"], (("prototypes", "max_count"), 9))).max_count == 9
    assert (few.limits.batch, few.limits.shots, few.limits.prototypes, plain.limits.shots) == (4, 3, 192, 0)
    assert plain.limits == Limits(4, 0, 0) and "int8" not in few.to_dict() and "prototypes" not in plain.to_dict()
    assert few.prototypes.per_shot == 64 and few.prototypes.channels == (3,) and plain.prototypes is None
    assert few.threshold == 500.0 and few.normal_scores.images == 8
    assert (few.normal_scores.min, few.normal_scores.max) == (250.0, 500.0)


def test_a_manifest_file_is_read_and_checked(tmp_path, bases):
    bundle = tmp_path / "b"
    write_toy_bundle(bundle)
    assert read_manifest(bundle).to_dict() == bases["few"] | {"files": read_manifest(bundle).files}
    (bundle / "manifest.json").write_text(json.dumps(edited(bases["few"], (("threshold",), -1.0))))
    with pytest.raises(PackdError, match=rf"^invalid manifest {re.escape(str(bundle / 'manifest.json'))}: the "
                                         r"threshold is -1.0"):
        read_manifest(bundle)
    m = Manifest.from_dict(bases["few"], "M")
    assert m.checked() == m and m.with_engines((), {"query.onnx": "1" * 64}).files == {"query.onnx": "1" * 64}


def test_what_the_manifest_writes_and_where_a_bad_one_is_named(bases):
    import pickle
    from dataclasses import replace

    from packd_runtime.manifest import TilingSpec

    plain_tiled = taken(bases["plain_tiled"])
    assert "memory" not in plain_tiled.to_dict()["tiling"]  # a per-category tiling has no memory to write
    assert taken(bases["tiled"]).to_dict()["tiling"]["memory"] == "shared"
    with pytest.raises(PackdError, match=r"^--memory must be one of shared, position, got 'x'$"):
        TilingSpec(plain_tiled.tiling.tiling, "x")
    broken = replace(taken(bases["few"]), threshold=-1.0)
    with pytest.raises(PackdError, match=r"^invalid manifest being written: the threshold is -1.0"):
        broken.checked()
    with pytest.raises(PackdError, match=r"^invalid manifest unpickled: the threshold is -1.0"):
        pickle.loads(pickle.dumps(broken))
