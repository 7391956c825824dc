"""TensorRT backend (TensorRT 10.3 to 11.x + cuda-python).

- engines deserialized once; one execution context and one non-default stream per thread;
- device and pinned host buffers allocated once per (graph, input shapes) and reused;
- I/O enumerated from the engine (names, modes, dtypes: never assumed FP32); output shapes read
  from the context after the input shapes are set;
- CUDA-graph replay when shapes repeat: the first call of a shape runs plainly, the second
  captures execute_async_v3 and later calls launch the graph; if capture fails it is ended, the
  error cleared and that shape runs plainly from then on;
- `__cuda_array_interface__` inputs (cupy, torch, numba, pycuda) are copied device-to-device into
  the bound buffer: no host round trip;
- everything is released by `close()`.

NOT RUN on a GPU in development (no TensorRT there); the runtime names it uses are checked
against TensorRT 11's lean binding by the tests.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packd_runtime.errors import PackdError


def _check(result: tuple, what: str) -> Any:
    from cuda.bindings import runtime as cudart

    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise PackdError(f"CUDA error in {what}: {err}")
    return values[0] if len(values) == 1 else values


def _host_view(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=dtype).reshape(shape)


@dataclass
class _Buffers:
    """Device and pinned host memory for one (graph, input shapes)."""

    device: dict[str, int]
    host: dict[str, np.ndarray]
    host_ptrs: list[int]
    shapes: dict[str, tuple[int, ...]]
    calls: int = 0
    graph: Any = None
    graph_failed: bool = False


@dataclass
class _ThreadState:
    stream: Any
    contexts: dict[str, Any]
    buffers: dict[tuple, _Buffers] = field(default_factory=dict)
    events: list = field(default_factory=list)  # 4 CUDA events when profiling
    timings: dict[str, float] = field(default_factory=dict)


class TensorRTBackend:
    """`Backend` on TensorRT engines; outputs are returned by name."""

    name = "tensorrt"

    def __init__(self, bundle: Path, engines: dict[str, str], device: int = 0, profile: bool = False):
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise PackdError(f"the TensorRT backend needs tensorrt and cuda-python ({e}): "
                             "pip install 'packd-runtime[tensorrt]'") from None
        self._trt, self._cudart = trt, cudart
        self.device_id, self.profile = device, profile
        self.device = f"cuda:{device}"
        self.description = f"TensorRT {trt.__version__}"
        _check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines = {}
        for graph, file in engines.items():
            engine = self._runtime.deserialize_cuda_engine((bundle / file).read_bytes())
            if engine is None:
                raise PackdError(f"TensorRT could not load {file}: rebuild it on this device with "
                                 f"`packd-export build {bundle}`")
            self.engines[graph] = engine
        self.io = {g: self._io(e) for g, e in self.engines.items()}
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()
        self._closed = False

    def _io(self, engine) -> list[tuple[str, bool, np.dtype]]:
        trt = self._trt
        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            out.append((name, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
        return out

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            if self._closed:
                raise PackdError("this detector was closed")
            cudart = self._cudart
            _check(cudart.cudaSetDevice(self.device_id), "cudaSetDevice")
            stream = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                            "cudaStreamCreateWithFlags")
            contexts = {g: e.create_execution_context() for g, e in self.engines.items()}
            state = _ThreadState(stream, contexts)
            if self.profile:
                state.events = [_check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(4)]
            self._local.state = state
            with self._lock:
                self._states.append(state)
        return state

    def _allocate(self, graph: str, ctx, feeds: dict[str, Any]) -> _Buffers:
        cudart = self._cudart
        device, host, host_ptrs, shapes = {}, {}, [], {}
        for name, is_input, _ in self.io[graph]:
            if is_input:
                shapes[name] = tuple(int(d) for d in _shape(feeds[name]))
                if not ctx.set_input_shape(name, shapes[name]):
                    raise PackdError(f"input {name} shape {shapes[name]} is outside the engine's profile")
        for name, is_input, dtype in self.io[graph]:
            shape = shapes[name] if is_input else tuple(ctx.get_tensor_shape(name))
            shapes[name] = shape
            nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
            device[name] = _check(cudart.cudaMalloc(nbytes), "cudaMalloc")
            ptr = _check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            host_ptrs.append(ptr)
            host[name] = _host_view(ptr, shape, dtype)
        return _Buffers(device, host, host_ptrs, shapes)

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Outputs of `graph` by name, copied to new host arrays."""
        cudart = self._cudart
        state = self._state()
        ctx, stream = state.contexts[graph], state.stream
        key = (graph, *(tuple(_shape(feeds[n])) for n, is_in, _ in self.io[graph] if is_in))
        bufs = state.buffers.get(key)
        if bufs is None:
            bufs = state.buffers[key] = self._allocate(graph, ctx, feeds)
        for name, is_input, _ in self.io[graph]:
            if is_input and not ctx.set_input_shape(name, bufs.shapes[name]):
                raise PackdError(f"input {name} shape {bufs.shapes[name]} is outside the engine's profile")
            if not ctx.set_tensor_address(name, bufs.device[name]):
                raise PackdError(f"TensorRT refused the address of {name}")
        kinds = cudart.cudaMemcpyKind
        h2d, d2d, d2h = kinds.cudaMemcpyHostToDevice, kinds.cudaMemcpyDeviceToDevice, kinds.cudaMemcpyDeviceToHost
        self._mark(state, 0)
        for name, is_input, dtype in self.io[graph]:
            if not is_input:
                continue
            value, nbytes = feeds[name], bufs.host[name].nbytes
            if hasattr(value, "__cuda_array_interface__"):
                cai = value.__cuda_array_interface__
                if np.dtype(cai["typestr"]) != dtype or (cai.get("strides") not in (None, ())):
                    raise PackdError(f"device input {name} must be contiguous {dtype}")
                if cai.get("stream") not in (None, 0):
                    _check(cudart.cudaStreamSynchronize(cai["stream"]), "cudaStreamSynchronize")
                _check(cudart.cudaMemcpyAsync(bufs.device[name], cai["data"][0], nbytes, d2d, stream),
                       "cudaMemcpyAsync")
            else:
                np.copyto(bufs.host[name], np.asarray(value, dtype=dtype))
                _check(cudart.cudaMemcpyAsync(bufs.device[name], bufs.host[name].ctypes.data, nbytes, h2d, stream),
                       "cudaMemcpyAsync")
        self._mark(state, 1)
        self._execute(ctx, stream, bufs)
        self._mark(state, 2)
        outputs = []
        for name, is_input, _ in self.io[graph]:
            if not is_input:
                _check(cudart.cudaMemcpyAsync(bufs.host[name].ctypes.data, bufs.device[name],
                                              bufs.host[name].nbytes, d2h, stream), "cudaMemcpyAsync")
                outputs.append(name)
        self._mark(state, 3)
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        if state.events:
            ms = [_check(cudart.cudaEventElapsedTime(state.events[i], state.events[i + 1]),
                         "cudaEventElapsedTime") for i in range(3)]
            state.timings = {"h2d_ms": ms[0], "compute_ms": ms[1], "d2h_ms": ms[2]}
        return {name: bufs.host[name].copy() for name in outputs}

    def _mark(self, state: _ThreadState, i: int) -> None:
        if state.events:
            _check(self._cudart.cudaEventRecord(state.events[i], state.stream), "cudaEventRecord")

    def timings(self) -> dict[str, float]:
        """H2D, GPU compute and D2H times (ms, CUDA events) of this thread's last call; needs profile=True."""
        state = self._state()
        return dict(state.timings)

    def _execute(self, ctx, stream, bufs: _Buffers) -> None:
        cudart = self._cudart
        bufs.calls += 1
        if bufs.graph is not None:
            _check(cudart.cudaGraphLaunch(bufs.graph, stream), "cudaGraphLaunch")
            return
        if bufs.calls >= 2 and not bufs.graph_failed:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            try:
                _check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
                ok = ctx.execute_async_v3(int(stream))
                graph = _check(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
                if not ok:
                    raise PackdError("execute_async_v3 failed during capture")
                bufs.graph = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
                _check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
                _check(cudart.cudaGraphLaunch(bufs.graph, stream), "cudaGraphLaunch")
                return
            except PackdError:
                cudart.cudaStreamEndCapture(stream)
                cudart.cudaGetLastError()
                bufs.graph_failed = True
        if not ctx.execute_async_v3(int(stream)):
            raise PackdError("TensorRT execute_async_v3 failed")

    def close(self) -> None:
        cudart = self._cudart
        with self._lock:
            self._closed = True
            for state in self._states:
                for bufs in state.buffers.values():
                    if bufs.graph is not None:
                        cudart.cudaGraphExecDestroy(bufs.graph)
                    for ptr in bufs.device.values():
                        cudart.cudaFree(ptr)
                    for ptr in bufs.host_ptrs:
                        cudart.cudaFreeHost(ptr)
                for event in state.events:
                    cudart.cudaEventDestroy(event)
                state.buffers.clear()
                state.contexts.clear()
                cudart.cudaStreamDestroy(state.stream)
            self._states.clear()
        self.engines.clear()


def _shape(value: Any) -> tuple[int, ...]:
    cai = getattr(value, "__cuda_array_interface__", None)
    return tuple(cai["shape"]) if cai is not None else tuple(np.shape(value))
