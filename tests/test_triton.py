"""Serving many lines: the Triton model repository, the line model, the client, against a real Triton."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import FRAME
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from packd.errors import PackdError
from packd_bench.triton_local import local_triton, why_no_local_triton
from packd_export.cli import main as export_main
from packd_export.triton import LINE_MODEL, write_repository
from packd_runtime import Detector
from packd_runtime.bundle_format import fingerprint
from packd_runtime.manifest import read_manifest
from packd_runtime.triton.line_model import LineServer

TRITON_ENV = Path(os.environ.get("PACKD_TRITON_ENV", Path(__file__).parents[1] / ".venv-triton"))


def _config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt with Triton's own model-config schema (unknown fields or types fail)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _frames(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *FRAME, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["rd", "packd", "knn"])
def test_repository_configs_parse_with_tritons_schema(bundles, tmp_path, kind):
    manifest, path = bundles[kind]
    models = write_repository(path, tmp_path / "repo")
    few_shot = kind != "rd"
    assert models == {**({"support": "onnxruntime_onnx"} if few_shot else {}), "query": "onnxruntime_onnx",
                      LINE_MODEL: "python"}
    fp = fingerprint(manifest)
    query = _config(tmp_path / "repo" / "query" / "config.pbtxt")
    assert query.platform == "onnxruntime_onnx" and query.parameters["fingerprint"].string_value == fp
    assert (tmp_path / "repo" / "query" / "1" / "model.onnx").read_bytes() == (path / "query.onnx").read_bytes()
    inputs = {i.name: (i.data_type, list(i.dims)) for i in query.input}
    outputs = {o.name: (o.data_type, list(o.dims)) for o in query.output}
    if few_shot:  # prototypes (n, C) have no batch axis: no Triton batching, the batch axis is in the dims
        assert query.max_batch_size == 0 and not query.HasField("dynamic_batching")
        assert inputs["images"] == (model_config_pb2.TYPE_UINT8, [-1, *FRAME, 3])
        channels = [s.shape[1] for s in manifest.graphs["query"].inputs[1:]]
        assert [inputs[f"prototypes_{i + 1}"] for i in range(len(channels))] == [
            (model_config_pb2.TYPE_FP32, [-1, c]) for c in channels]
        support = _config(tmp_path / "repo" / "support" / "config.pbtxt")
        assert support.max_batch_size == 0 and [i.name for i in support.input] == ["images"]
    else:  # every tensor has the batch axis: Triton batches across requests
        assert query.max_batch_size == manifest.limits.batch and query.dynamic_batching is not None
        assert inputs == {"images": (model_config_pb2.TYPE_UINT8, [*FRAME, 3])}
        assert outputs == {"scores": (model_config_pb2.TYPE_FP32, []), "maps": (model_config_pb2.TYPE_FP32, [64, 64])}
    line = _config(tmp_path / "repo" / LINE_MODEL / "config.pbtxt")
    assert line.backend == "python" and line.max_batch_size == manifest.limits.batch
    assert [(i.name, i.data_type) for i in line.input] == [
        ("line", model_config_pb2.TYPE_STRING), ("action", model_config_pb2.TYPE_STRING),
        ("frames", model_config_pb2.TYPE_UINT8)]
    assert [g.count for g in line.instance_group] == [1] and line.parameters["fingerprint"].string_value == fp
    assert read_manifest(tmp_path / "repo" / LINE_MODEL / "1" / "bundle") == manifest


def test_engines_of_the_named_gpu_become_plans(bundles, tmp_path):
    import shutil

    from packd_runtime.files import sha256

    b = tmp_path / "b"
    shutil.copytree(bundles["rd"][1], b)
    manifest = json.loads((b / "manifest.json").read_text())
    for gpu in ("NVIDIA H100", "Orin"):  # stand-in engine files: only copied, never deserialised here
        name = f"query.{gpu.split()[-1]}.engine"
        (b / name).write_bytes(gpu.encode())
        manifest["files"][name] = sha256(b / name)
        manifest["engines"].append({"graph": "query", "file": name, "tensorrt": "10.3", "compute_capability": "9.0",
                                    "gpu": gpu})
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackdError, match="engines for several GPUs"):
        write_repository(b, tmp_path / "repo")
    with pytest.raises(PackdError, match="no engines built on 'A100'"):
        write_repository(b, tmp_path / "repo", engine_gpu="A100")
    assert write_repository(b, tmp_path / "repo", engine_gpu="Orin")["query"] == "tensorrt_plan"
    assert (tmp_path / "repo" / "query" / "1" / "model.plan").read_bytes() == b"Orin"
    config = _config(tmp_path / "repo" / "query" / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]


def test_repository_cli_and_what_it_refuses(bundles, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        export_main(["triton", str(bundles["rd"][1]), "--out", str(tmp_path / "repo")])
    assert e.value.code == 0 and "(onnxruntime_onnx)" in " ".join(capsys.readouterr().out.split())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(PackdError):
        write_repository(bundles["rd"][1], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(PackdError, match="--runtime-backend must be"):
        write_repository(bundles["rd"][1], tmp_path / "repo", backend="cuda")



def test_the_repository_copies_only_the_listed_files_never_through_a_link(bundles, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["packd"][1], bundle)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.pem").write_text("private")
    (bundle / "linked").symlink_to(secret)
    (bundle / "link.txt").symlink_to(secret / "key.pem")
    (bundle / "notes.txt").write_text("not listed")
    write_repository(bundle, tmp_path / "repo")
    copied = sorted(p.relative_to(tmp_path / "repo" / LINE_MODEL / "1" / "bundle").as_posix()
                    for p in (tmp_path / "repo" / LINE_MODEL / "1" / "bundle").rglob("*"))
    manifest = read_manifest(bundle)
    assert copied == sorted(["manifest.json", *manifest.files])
    assert not any(p.is_symlink() for p in (tmp_path / "repo").rglob("*"))
    with pytest.raises(PackdError, match="is inside the bundle"):
        write_repository(bundle, bundle / "repo")
    assert not (bundle / "repo").exists()

def test_line_server_keeps_each_lines_state(bundles):
    with Detector.open(bundles["packd"][1], backend="onnxruntime") as det, \
            Detector.open(bundles["packd"][1], backend="onnxruntime") as ref:
        server = LineServer(det)
        with pytest.raises(PackdError, match="line 'a' has no prototypes"):
            server.run("a", "detect", _frames(2, 0))
        server.run("a", "changeover", _frames(2, 1))
        server.run("b", "changeover", _frames(2, 2))
        t = server.run("b", "calibrate", _frames(5, 3)).threshold
        frames = _frames(3, 4)
        a, b = server.run("a", "detect", frames), server.run("b", "detect", frames)
        ref.prototypes(_frames(2, 1))
        assert np.array_equal(a.scores, ref.detect(frames).scores) and a.threshold == ref.threshold
        ref.prototypes(_frames(2, 2))
        assert np.array_equal(b.scores, ref.detect(frames).scores) and b.threshold == t != ref.threshold
        with pytest.raises(PackdError, match="unknown action"):
            server.run("a", "retrain", frames)


@pytest.fixture(scope="module")
def triton(bundles, tmp_path_factory):
    """A real tritonserver (nvidia-pytriton's, Python backend) serving the tiny PACKD's line model."""
    reason = why_no_local_triton(TRITON_ENV)
    if reason:
        pytest.skip(f"no local Triton: {reason}")
    repo = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(bundles["packd"][1], repo, backend="onnxruntime")
    with local_triton(repo, TRITON_ENV) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_real_triton_serves_two_lines_to_8_threads(triton, bundles, protocol):
    from packd_runtime.triton.client import TritonDetector

    manifest, path = bundles["packd"]
    url = triton.http if protocol == "http" else triton.grpc
    supports = {"grid": _frames(2, 10), "disc": _frames(3, 11)}
    client = TritonDetector(url, protocol=protocol, fingerprint=fingerprint(manifest))
    for line, frames in supports.items():
        assert client.changeover(line, frames) is None  # a new product: no threshold until it is calibrated
        with pytest.raises(PackdError, match="no threshold for this product yet"):
            _ = client.detect(line, _frames(1, 20)).labels
    thresholds = {line: client.calibrate(line, _frames(5, 30 + i)) for i, line in enumerate(supports)}
    expected = {}
    with Detector.open(path, backend="onnxruntime") as det:
        for i, (line, frames) in enumerate(supports.items()):
            det.prototypes(frames)
            assert det.calibrate(_frames(5, 30 + i)) == pytest.approx(thresholds[line], rel=1e-5)
            expected[line] = det.detect(_frames(6, 20))
    def camera(i):  # each camera thread its own client; calls of 1, 2 and 3 frames
        with TritonDetector(url, protocol=protocol) as own:
            line = ("grid", "disc")[i % 2]
            return [(line, j, own.detect(line, _frames(6, 20)[j:2 * j + 1])) for j in range(3)]

    with ThreadPoolExecutor(8) as pool:  # an exception in a camera thread re-raises here
        results = [r for rs in pool.map(camera, range(8)) for r in rs]
    assert len(results) == 24
    nine = _frames(9, 40)  # a calibration larger than the server's batch of 4: one operation, not 4 + 4 + 1
    with Detector.open(path, backend="onnxruntime") as det:
        det.prototypes(supports["grid"])
        assert client.calibrate("grid", nine) == pytest.approx(det.calibrate(nine), rel=1e-5)
    for line, j, got in results:
        want = expected[line]
        part = slice(j, 2 * j + 1)
        assert np.allclose(got.scores, want.scores[part], atol=1e-5)
        assert np.abs(got.maps - want.maps[part]).max() <= 1e-5 * np.ptp(want.maps)
        assert np.array_equal(got.labels, want.labels[part])


@pytest.mark.slow
def test_real_triton_answers_bad_requests_and_keeps_serving(triton, bundles):
    import tritonclient.http as http

    from packd_runtime.triton.client import TritonDetector

    manifest, _ = bundles["packd"]
    client = TritonDetector(triton.http)
    client.changeover("good", _frames(2, 1))
    before = client.detect("good", _frames(2, 2)).scores
    with pytest.raises(PackdError, match="line 'nobody' has no prototypes"):
        client.detect("nobody", _frames(1, 3))
    with pytest.raises(PackdError, match="runs model .* not 0000"):
        TritonDetector(triton.http, fingerprint="0000")
    raw = http.InferenceServerClient(triton.http)

    def infer(frames, dtype, parameters=None, lines=None):
        n = len(frames)
        lines = np.full((n, 1), b"good", dtype=object) if lines is None else lines
        inputs = [http.InferInput("line", [n, 1], "BYTES"), http.InferInput("action", [n, 1], "BYTES"),
                  http.InferInput("frames", list(frames.shape), dtype)]
        for tensor, data in zip(inputs, (lines, np.full((n, 1), b"detect", dtype=object), frames)):
            tensor.set_data_from_numpy(data)
        return raw.infer(LINE_MODEL, inputs, parameters=parameters)

    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="(?i)uint8|data type|datatype"):  # wrong dtype
        infer(_frames(1, 4).astype(np.float32), "FP32")
    with pytest.raises(InferenceServerException, match="expects model 0000"):  # another bundle's client
        infer(_frames(1, 4), "UINT8", parameters={"fingerprint": "0000"})
    with pytest.raises(InferenceServerException, match="one request, one line"):
        infer(_frames(2, 4), "UINT8", lines=np.array([[b"good"], [b"other"]], dtype=object))
    with pytest.raises(InferenceServerException, match="line is not UTF-8"):
        infer(_frames(1, 4), "UINT8", lines=np.array([[b"\xff\xfe"]], dtype=object))
    with pytest.raises(PackdError, match="frames must be uint8"):  # refused before it leaves the client
        client.detect("good", _frames(1, 5).astype(np.float32))
    with pytest.raises(PackdError, match="frames must be uint8"):
        client.detect("good", np.zeros((1, 8, 8, 3), np.uint8))
    assert np.array_equal(client.detect("good", _frames(2, 2)).scores, before)  # still serving, same state
    assert json.loads(json.dumps(raw.get_model_config(LINE_MODEL)))["name"] == LINE_MODEL


def test_client_without_tritonclient_or_with_a_bad_protocol_says_what_to_do(monkeypatch):
    import sys

    from packd_runtime.triton.client import TritonDetector

    with pytest.raises(PackdError, match="protocol must be http or grpc"):
        TritonDetector("localhost:1", protocol="smtp")
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)  # as if the extra were not installed
    with pytest.raises(PackdError, match=r"pip install 'packd-runtime\[triton\]'"):
        TritonDetector("localhost:1")


def test_client_refuses_a_server_without_the_model(tmp_path):
    from packd_runtime.triton.client import TritonDetector

    with pytest.raises(PackdError, match="no model 'packd' at 127.0.0.1:9"):
        TritonDetector("127.0.0.1:9", timeout_s=2)


def test_repositories_written_before_the_move_still_load_their_line_model():
    """Repositories written before the runtime grouped its Triton code import packd_runtime.triton_model; new
    ones import packd_runtime.triton.line_model. Both give the same class."""
    from packd_export.triton import LINE_MODEL_PY
    from packd_runtime import triton_model
    from packd_runtime.triton import line_model

    assert triton_model.TritonPythonModel is line_model.TritonPythonModel
    old, new = {}, {}
    exec("from packd_runtime.triton_model import TritonPythonModel", old)
    exec(LINE_MODEL_PY, new)
    assert old["TritonPythonModel"] is new["TritonPythonModel"] is line_model.TritonPythonModel
    assert "packd_runtime.triton.line_model" in LINE_MODEL_PY


class _FakeBackendUtils:
    """The part of triton_python_backend_utils the line model uses, to run execute() without a server."""

    class TritonError:
        def __init__(self, message):
            self.message = message

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.tensors, self.error = {t.name: t.value for t in output_tensors or []}, error

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

    @staticmethod
    def get_input_tensor_by_name(request, name):
        class Wrapped:
            def as_numpy(self):
                return request.inputs[name]
        return Wrapped()


class _Request:
    def __init__(self, line, action, frames, parameters=None):
        n = len(frames)
        self.inputs = {"line": np.full((n, 1), line, dtype=object), "action": np.full((n, 1), action, dtype=object),
                       "frames": frames}
        self._parameters = json.dumps(parameters or {})

    def parameters(self):
        return self._parameters


def test_one_bad_request_fails_alone_and_large_operations_are_staged(bundles, monkeypatch):
    import sys

    from packd_runtime.triton.line_model import TritonPythonModel

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeBackendUtils)
    model = TritonPythonModel()
    with Detector.open(bundles["packd"][1], backend="onnxruntime") as det, \
            Detector.open(bundles["packd"][1], backend="onnxruntime") as ref:
        model.server, model.fingerprint = LineServer(det), det.fingerprint
        supports, normal = _frames(3, 50), _frames(9, 51)
        token = {"stage": "t1"}
        replies = model.execute([_Request(b"a", b"stage", supports[:2], token),
                                 _Request(b"a", b"changeover", supports[2:], token)])
        assert [r.error for r in replies] == [None, None]
        ref.prototypes(supports)  # the three supports as one changeover, not the last one alone
        frames = _frames(2, 52)
        assert np.array_equal(model.server.run("a", "detect", frames).scores, ref.detect(frames).scores)
        replies = model.execute([_Request(b"a", b"stage", normal[:4], {"stage": "t2"}),
                                 _Request(b"a", b"stage", normal[4:8], {"stage": "t2"}),
                                 _Request(b"a", b"calibrate", normal[8:], {"stage": "t2"})])
        assert float(replies[-1].tensors["threshold"][0, 0]) == pytest.approx(ref.calibrate(normal), rel=1e-5)
        assert model.server.staged == {}
        replies = model.execute([_Request(b"a", b"detect", frames), _Request(b"\xff\xfe", b"detect", frames),
                                 _Request(b"a", b"detect", frames[:1])])
        assert replies[0].error is None and replies[2].error is None
        assert "not UTF-8" in replies[1].error.message
        assert np.allclose(replies[0].tensors["scores"].ravel(), ref.detect(frames).scores)
