"""The TensorRT backend's logic against a fake TensorRT / CUDA layer that enforces the documented rules
(tests/fake_gpu.py): CUDA graphs, stream ordering of device inputs, capture failure, close, threads."""

import threading
from dataclasses import replace

import numpy as np
import pytest
from fake_gpu import DeviceArray, FakeCudart, FakeTensorRT, Violation, engine_bytes

from packd_runtime.backends import engines_here
from packd_runtime.errors import PackdError
from packd_runtime.manifest import Engine, Graph, Limits, Manifest, NormalScores, Tensor
from packd_runtime.onnxruntime import backend as onnxruntime_backend
from packd_runtime.tensorrt import backend as tensorrt_backend
from packd_runtime.tensorrt import build as tensorrt_build
from packd_runtime.tensorrt.backend import MAX_SLOTS, TensorRTBackend


@pytest.fixture
def fake(monkeypatch):
    cudart = FakeCudart()
    trt = FakeTensorRT(cudart)
    monkeypatch.setattr(tensorrt_backend, "import_modules", lambda: (trt, cudart))
    return trt, cudart


def _backend(tmp_path, fake, **kwargs) -> TensorRTBackend:
    plans = {"query": engine_bytes(["images"]), "support": engine_bytes(["images", "prototypes_1"])}
    return TensorRTBackend(tmp_path, plans, **kwargs)  # the plans' bytes, as the bundle's check read them


def _frames(n: int, value: int = 3) -> np.ndarray:
    return np.full((n, 8, 8, 3), value, np.uint8)


def test_alternating_shapes_never_replay_a_stale_graph(tmp_path, fake):
    """detect() on 40 frames with max batch 32 alternates (32, ...) and (8, ...): each shape keeps its
    own context, so every replayed graph still has the shapes it was captured with."""
    trt, cudart = fake
    backend = _backend(tmp_path, fake)
    for i in range(4):
        for n in (32, 8):
            out = backend.run("query", {"images": _frames(n, value=i + n)})
            assert out["scores"].shape == (n,) and out["maps"].shape == (n, 4, 4)
            assert np.all(out["scores"] == i + n)  # the graph reads this call's inputs
    assert len(cudart.calls("cudaStreamBeginCapture")) == 2  # one capture per shape, on the second call
    assert len(cudart.calls("cudaGraphLaunch")) == 6
    assert len(trt.engines[0].contexts) == 2
    backend.close()
    assert cudart.leaks() == {}


def test_the_fake_refuses_what_a_gpu_would_not_survive(tmp_path, fake):
    """The rules the backend is tested against: a shape change on a captured context, a capture without a
    flush, a second EndCapture, an unordered device copy."""
    trt, cudart = fake
    (tmp_path / "q.engine").write_bytes(engine_bytes(["images"]))
    engine = trt.Runtime(None).deserialize_cuda_engine((tmp_path / "q.engine").read_bytes())
    ctx = engine.create_execution_context()
    ptrs = {n: cudart.cudaMalloc(4096)[1] for n in ("images", "scores", "maps")}
    for n, p in ptrs.items():
        ctx.set_tensor_address(n, p)
    ctx.set_input_shape("images", (2, 8, 8, 3))
    cudart.cudaStreamBeginCapture(5, "thread-local")
    with pytest.raises(Violation, match="flush"):
        ctx.execute_async_v3(5)
    cudart.cudaStreamEndCapture(5)
    with pytest.raises(Violation, match="called twice"):
        cudart.cudaStreamEndCapture(5)
    ctx.execute_async_v3(5)
    cudart.cudaStreamSynchronize(5)
    cudart.cudaStreamBeginCapture(5, "thread-local")
    ctx.execute_async_v3(5)
    graph = cudart.cudaStreamEndCapture(5)[1]
    instance = cudart.cudaGraphInstantiate(graph, 0)[1]
    cudart.cudaGraphLaunch(instance, 5)
    ctx.set_input_shape("images", (1, 8, 8, 3))
    with pytest.raises(Violation, match="shapes changed"):
        cudart.cudaGraphLaunch(instance, 5)
    src = DeviceArray(cudart, _frames(1))
    with pytest.raises(Violation, match="not ordered after its producer"):
        cudart.cudaMemcpyAsync(ptrs["images"], src.ptr, 192, "D2D", 5)


@pytest.mark.parametrize("stream", ["absent", 77, None])
def test_device_inputs_are_ordered_after_their_producer(tmp_path, fake, stream):
    """torch exports __cuda_array_interface__ v2 without "stream": order after the legacy default stream;
    a named stream: an event recorded there; None: the producer needs no ordering. Never a host sync."""
    _, cudart = fake
    backend = _backend(tmp_path, fake)
    x = DeviceArray(cudart, _frames(2, value=9), stream=stream)
    out = backend.run("query", {"images": x})
    assert np.all(out["scores"] == 9)
    producer = {"absent": FakeCudart.LEGACY, 77: 77, None: None}[stream]
    recorded = [c[2] for c in cudart.calls("cudaEventRecord")]
    assert recorded == ([producer] if producer else [])
    assert all(c[1] != producer for c in cudart.calls("cudaStreamSynchronize"))
    backend.close()


def test_failed_capture_runs_plainly_and_leaks_nothing(tmp_path, fake):
    _, cudart = fake
    cudart.fail_instantiate = True
    backend = _backend(tmp_path, fake)
    for value in (1, 2, 3):
        assert np.all(backend.run("query", {"images": _frames(4, value)})["scores"] == value)
    assert len(cudart.calls("cudaStreamBeginCapture")) == 1  # tried once, then plain for this shape
    assert len(cudart.calls("cudaStreamEndCapture")) == 1
    assert cudart.graphs == {} and cudart.execs == {}  # the captured graph was destroyed
    backend.close()
    assert cudart.leaks() == {}


def test_outputs_by_name_whatever_the_engine_order(tmp_path, fake):
    backend = _backend(tmp_path, fake)
    out = backend.run("support", {"images": _frames(3, 2), "prototypes_1": np.ones((5, 4), np.float32)})
    assert set(out) == {"maps", "scores"} and out["scores"].shape == (3,) and np.all(out["scores"] == 22)
    backend.close()


def test_close_waits_for_calls_in_flight_and_later_calls_fail(tmp_path, fake):
    trt, cudart = fake
    trt.gate = threading.Event()
    backend = _backend(tmp_path, fake)
    results, errors = {}, []

    def camera():
        try:
            results["out"] = backend.run("query", {"images": _frames(2, 5)})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    worker = threading.Thread(target=camera)
    worker.start()
    assert trt.entered.wait(5)
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # close waits for the call in flight...
    assert cudart.device_ptrs  # ...and frees nothing under it
    trt.gate.set()
    worker.join(5)
    closer.join(5)
    assert not errors and np.all(results["out"]["scores"] == 5)
    assert cudart.leaks() == {}
    with pytest.raises(PackdError, match="closed"):
        backend.run("query", {"images": _frames(2)})
    backend.close()  # twice is harmless


def test_threads_that_exit_are_released_and_slots_are_bounded(tmp_path, fake):
    trt, cudart = fake
    backend = _backend(tmp_path, fake)
    thread = threading.Thread(target=lambda: backend.run("query", {"images": _frames(2)}))
    thread.start()
    thread.join()
    assert len(cudart.streams) == 1
    backend.run("query", {"images": _frames(2)})  # a new thread's first call releases the exited one's
    assert len(cudart.streams) == 1
    for n in range(1, MAX_SLOTS + 4):
        for _ in range(2):  # each shape captured: evictions must destroy graphs too
            backend.run("query", {"images": _frames(n, n)})
    assert len(cudart.execs) <= MAX_SLOTS
    assert len(cudart.device_ptrs) == 3 * MAX_SLOTS  # images, maps, scores per slot
    backend.close()
    assert cudart.leaks() == {}


def test_timings_sum_every_call_since_the_last_read(tmp_path, fake):
    backend = _backend(tmp_path, fake, profile=True)
    for _ in range(3):
        backend.run("query", {"images": _frames(2)})
    t = backend.timings()
    assert t["calls"] == 3 and t["compute_ms"] == pytest.approx(0.75) and t["h2d_ms"] == pytest.approx(0.75)
    assert t["stage_ms"] >= 0
    assert backend.timings() == {"calls": 0}
    backend.close()


@pytest.fixture
def fake_builder(fake, monkeypatch):
    monkeypatch.setattr(tensorrt_build, "modules", lambda: fake)
    return fake


def _manifest(precision: str) -> Manifest:
    """A checked manifest of an 8-px query graph, batch up to 4."""
    query = Graph("query.onnx", (Tensor("images", "uint8", ("batch", 8, 8, 3)),),
                  (Tensor("scores", "float32", ("batch",)), Tensor("maps", "float32", ("batch", 8, 8))))
    return Manifest(kind="rd", image_size=8, frame_hw=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, precision=precision,
                    opset=18, graphs={"query": query}, limits=Limits(4), threshold=1.0,
                    normal_scores=NormalScores(1, 1.0, 1.0), files={"query.onnx": "0" * 64}, teacher={}, settings={},
                    versions={}, checkpoint={}, created="").checked()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_builds_clear_tf32_and_replace_a_refused_timing_cache(tmp_path, fake_builder, precision):
    """TF32 off for every precision: the FP32 islands of fp16 and int8 bundles stay FP32."""
    trt, cudart = fake_builder
    (tmp_path / "query.onnx").write_bytes(b"onnx")
    (tmp_path / "timing.trt10.3.0.26.sm87.cache").write_bytes(b"stale")
    entries = tensorrt_build.build_engines(tmp_path, _manifest(precision), device=1)
    assert "TF32" not in trt.built[0]["flags"]
    assert trt.built[0]["cache"].data == b""  # the refused cache was replaced by a fresh one
    assert trt.built[0]["profiles"] == [{"images": ((1, 8, 8, 3), (4, 8, 8, 3), (4, 8, 8, 3))}]
    assert ("cudaSetDevice", 1) in cudart.log and ("cudaGetDeviceProperties", 1) in cudart.log
    assert entries[0].gpu == "Fake Orin NX" and entries[0].compute_capability == "87"
    assert (tmp_path / entries[0].file).read_bytes() == b"plan"


def test_engines_of_another_gpu_name_run_with_a_warning(fake_builder):
    engine = Engine(graph="query", file="q.engine", tensorrt="10.3.0.26", compute_capability="87", gpu="Fake Orin")
    files = {"query.onnx": "0" * 64, "q.engine": "1" * 64}
    manifest = _manifest("fp16").with_engines((engine,), files).checked()
    assert engines_here(manifest, 0)[0] == {"query": "q.engine"}
    with pytest.warns(UserWarning, match="built on Fake Orin, this is Fake Orin NX"):
        assert engines_here(manifest, 1)[0] == {"query": "q.engine"}
    manifest = manifest.with_engines((replace(engine, compute_capability="90"),), files)
    engines, why = engines_here(manifest, 0)
    assert engines is None and "sm90" in why and "rebuild" in why


def test_why_no_tensorrt_says_which_error_came_back(monkeypatch):
    def missing():
        raise ImportError("No module named 'tensorrt'")

    monkeypatch.setattr(tensorrt_build, "modules", missing)
    why = tensorrt_build.why_no_tensorrt()
    assert "No module named 'tensorrt'" in why and "tensorrt-cu13" in why and "JetPack" in why


@pytest.mark.parametrize("stream, waited", [("absent", [FakeCudart.LEGACY]), (77, [77]), (None, [])])
def test_onnxruntime_device_inputs_wait_for_their_producer(monkeypatch, stream, waited):
    cudart = FakeCudart()
    monkeypatch.setattr(onnxruntime_backend, "cuda_runtime", lambda: cudart)
    onnxruntime_backend.order_after_producer(DeviceArray(cudart, _frames(1), stream=stream).cai)
    assert [c[1] for c in cudart.calls("cudaStreamSynchronize")] == waited


def test_onnxruntime_reports_the_provider_its_sessions_got(tmp_path, monkeypatch):
    """onnxruntime-gpu falls back to the CPU silently when the CUDA provider cannot load: say so."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["scores"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), tmp_path / "q.onnx")
    graphs = {"query": Graph("q.onnx", (Tensor("images", "float32", (1,)),), (Tensor("scores", "float32", (1,)),))}
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", lambda path, sess_options, providers: real(
        path, sess_options=sess_options, providers=["CPUExecutionProvider"]))
    backend = onnxruntime_backend.OnnxRuntimeBackend.open(tmp_path, graphs)
    assert backend.device == "cpu" and not backend.cuda
    assert "did not load" in backend.description and "CPUExecutionProvider" in backend.description
    assert backend.run("query", {"images": np.ones(1, np.float32)})["scores"] == 1
