"""TensorRT backend (TensorRT 10.3 to 11.x + cuda-python).

- engines deserialized once, on the GPU `device` names;
- per thread one non-default stream, and one *slot* per (graph, input shapes): its own execution
  context, device and pinned host buffers, all set once. A CUDA graph is valid only for the
  context and shapes it was captured with, so no context ever changes shape: a new shape key gets
  a new slot (at most `MAX_SLOTS` per thread, least recently used evicted first, graph included);
- CUDA graphs: a slot's first call is a plain enqueue, synchronised at the end of the call (the
  flush TensorRT requires after the shapes were set); its second call captures
  `execute_async_v3` (thread-local capture mode) and launches the graph, later calls launch it.
  If capture fails, `cudaStreamEndCapture` has still been called exactly once, any graph it
  produced is destroyed, the error is cleared and that slot runs plainly from then on;
- `__cuda_array_interface__` inputs (cupy, torch, numba, pycuda) are copied device to device,
  ordered after their producer with an event: recorded on the stream the array names, or on the
  legacy default stream when it names none (torch's version 2 export); no host synchronisation;
- outputs by name; I/O names, modes and dtypes from the engine, never assumed;
- thread-safe `close()`: it waits for calls in flight, any later call raises a PackdError;
  resources of threads that have exited are released when the next thread starts and at close.

NOT RUN on a GPU in development (no TensorRT there). Every rule above is enforced by a fake
TensorRT / CUDA layer in the tests (tests/fake_gpu.py), and the names used are checked against
TensorRT 11's lean binding and cuda-bindings.
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packd_runtime.cuda_arrays import producer_stream
from packd_runtime.errors import PackdError
from packd_runtime.gate import CallGate
from packd_runtime.tensorrt.build import INSTALL, modules

MAX_SLOTS = 8  # per thread: each slot holds an execution context (its activation memory) and buffers


def import_modules() -> tuple[Any, Any]:
    """(tensorrt, cuda.bindings.runtime), or a PackdError saying what is missing and the error that came back."""
    try:
        return modules()
    except ImportError as e:
        raise PackdError(f"the TensorRT backend needs tensorrt and cuda-python ({type(e).__name__}: {e}): "
                         f"{INSTALL}") from None


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return max(int(np.prod(shape)), 1) * dtype.itemsize  # never 0: cudaMalloc(0) gives no usable address


def _host_view(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    buffer = (ctypes.c_byte * _nbytes(shape, dtype)).from_address(ptr)
    return np.frombuffer(buffer, dtype=dtype)[: int(np.prod(shape))].reshape(shape)


@dataclass
class _Slot:
    """One (thread, graph, input shapes): an execution context whose shapes never change, its buffers, its graph."""

    context: Any
    device: dict[str, int]
    host: dict[str, np.ndarray]
    host_ptrs: list[int]
    calls: int = 0
    graph: Any = None  # the instantiated cudaGraphExec_t
    graph_failed: bool = False


@dataclass
class _ThreadState:
    thread: weakref.ref
    stream: Any
    ready: Any  # event recorded on a producer's stream; our stream waits on it
    slots: OrderedDict = field(default_factory=OrderedDict)  # (graph, shapes) -> _Slot, least recent first
    events: list = field(default_factory=list)  # 4 timing events when profiling
    samples: dict[str, list[float]] = field(default_factory=dict)


class TensorRTBackend:
    """`Backend` on TensorRT engines; outputs are returned by name."""

    name = "tensorrt"

    def __init__(self, bundle: Path, engines: dict[str, bytes], device: int = 0, profile: bool = False,
                 cuda_graphs: bool = True):
        self._trt, self._cudart = import_modules()
        trt, cudart = self._trt, self._cudart
        self.device_id, self.profile, self.cuda_graphs = device, profile, cuda_graphs
        self.device = f"cuda:{device}"
        self.description = f"TensorRT {trt.__version__}"
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines = {}
        for graph, plan in engines.items():  # the plans' bytes, as verified against the manifest
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise PackdError(f"TensorRT could not load the {graph} engine: rebuild it on this device with "
                                 f"`packd-export build {bundle}`")
            self.engines[graph] = engine
        self.io = {g: self._io(e) for g, e in self.engines.items()}
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()
        self._gate = CallGate("this TensorRT backend was closed")

    def _check(self, result: tuple, what: str) -> Any:
        err, *values = result
        if err != self._cudart.cudaError_t.cudaSuccess:
            raise PackdError(f"CUDA error in {what}: {err}")
        return values[0] if len(values) == 1 else (values or None)

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
            cudart = self._cudart
            self._check(cudart.cudaSetDevice(self.device_id), "cudaSetDevice")
            stream = self._check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                 "cudaStreamCreateWithFlags")
            ready = self._check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming),
                                "cudaEventCreateWithFlags")
            state = _ThreadState(weakref.ref(threading.current_thread()), stream, ready)
            if self.profile:
                state.events = [self._check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(4)]
            self._local.state = state
            with self._lock:
                gone = [s for s in self._states if s.thread() is None or not s.thread().is_alive()]
                self._states = [s for s in self._states if s not in gone] + [state]
            for s in gone:  # threads that exited: their slots, streams and events
                self._release(s)
        return state

    def _slot(self, state: _ThreadState, graph: str, feeds: Mapping[str, Any]) -> _Slot:
        shapes = {name: tuple(int(d) for d in _shape(feeds[name])) for name, is_input, _ in self.io[graph] if is_input}
        key = (graph, *shapes.values())
        slot = state.slots.get(key)
        if slot is not None:
            state.slots.move_to_end(key)
            return slot
        if len(state.slots) >= MAX_SLOTS:
            self._free_slot(state.slots.popitem(last=False)[1])
        cudart, ctx = self._cudart, self.engines[graph].create_execution_context()
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise PackdError(f"input {name} shape {shape} is outside the engine's profile")
        slot = _Slot(ctx, {}, {}, [])
        try:
            for name, is_input, dtype in self.io[graph]:
                shape = shapes[name] if is_input else tuple(ctx.get_tensor_shape(name))
                nbytes = _nbytes(shape, dtype)
                slot.device[name] = self._check(cudart.cudaMalloc(nbytes), "cudaMalloc")
                slot.host_ptrs.append(self._check(cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
                slot.host[name] = _host_view(slot.host_ptrs[-1], shape, dtype)
                if not ctx.set_tensor_address(name, slot.device[name]):
                    raise PackdError(f"TensorRT refused the address of {name}")
        except PackdError:
            self._free_slot(slot)
            raise
        state.slots[key] = slot
        return slot

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Outputs of `graph` by name, copied to new host arrays."""
        with self._gate.call():
            state = self._state()
            slot = self._slot(state, graph, feeds)
            stream, cudart = state.stream, self._cudart
            kinds = cudart.cudaMemcpyKind
            t = time.perf_counter()
            staged = {}
            for name, is_input, dtype in self.io[graph]:  # host staging first: not part of the H2D time
                if is_input and not hasattr(feeds[name], "__cuda_array_interface__"):
                    np.copyto(slot.host[name], np.asarray(feeds[name], dtype=dtype))
                    staged[name] = True
            stage_ms = (time.perf_counter() - t) * 1e3
            self._mark(state, 0)
            for name, is_input, dtype in self.io[graph]:
                if not is_input:
                    continue
                if name in staged:
                    self._check(cudart.cudaMemcpyAsync(slot.device[name], slot.host[name].ctypes.data,
                                                       slot.host[name].nbytes, kinds.cudaMemcpyHostToDevice, stream),
                                "cudaMemcpyAsync")
                else:
                    self._copy_device_input(state, slot, name, dtype, feeds[name])
            self._mark(state, 1)
            self._execute(slot, stream)
            self._mark(state, 2)
            outputs = [name for name, is_input, _ in self.io[graph] if not is_input]
            for name in outputs:
                self._check(cudart.cudaMemcpyAsync(slot.host[name].ctypes.data, slot.device[name],
                                                   slot.host[name].nbytes, kinds.cudaMemcpyDeviceToHost, stream),
                            "cudaMemcpyAsync")
            self._mark(state, 3)
            self._check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            if state.events:
                ms = [self._check(cudart.cudaEventElapsedTime(state.events[i], state.events[i + 1]),
                                  "cudaEventElapsedTime") for i in range(3)]
                for key, value in zip(("h2d_ms", "compute_ms", "d2h_ms", "stage_ms"), (*ms, stage_ms)):
                    state.samples.setdefault(key, []).append(value)
            return {name: slot.host[name].copy() for name in outputs}

    def _copy_device_input(self, state: _ThreadState, slot: _Slot, name: str, dtype: np.dtype, value: Any) -> None:
        """Device to device, after the producer's work: our stream waits on an event recorded on the producer's
        stream (the legacy default stream when the array names none); no host synchronisation."""
        cudart = self._cudart
        cai = value.__cuda_array_interface__
        if np.dtype(cai["typestr"]) != dtype or cai.get("strides") not in (None, ()):
            raise PackdError(f"device input {name} must be contiguous {dtype}")
        producer = producer_stream(cai)
        if producer is not None:
            self._check(cudart.cudaEventRecord(state.ready, producer), "cudaEventRecord")
            self._check(cudart.cudaStreamWaitEvent(state.stream, state.ready, 0), "cudaStreamWaitEvent")
        self._check(cudart.cudaMemcpyAsync(slot.device[name], cai["data"][0], slot.host[name].nbytes,
                                           cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, state.stream),
                    "cudaMemcpyAsync")

    def _mark(self, state: _ThreadState, i: int) -> None:
        if state.events:
            self._check(self._cudart.cudaEventRecord(state.events[i], state.stream), "cudaEventRecord")

    def timings(self) -> dict[str, float]:
        """This thread's calls since the last `timings()`: H2D, GPU compute, D2H (ms, CUDA events) and host
        staging (ms), each summed over the calls, and the call count; needs profile=True."""
        with self._gate.call():
            state = self._state()
            samples, state.samples = state.samples, {}
        return {"calls": len(samples.get("compute_ms", [])), **{k: float(sum(v)) for k, v in samples.items()}}

    def _execute(self, slot: _Slot, stream) -> None:
        cudart = self._cudart
        slot.calls += 1
        if slot.graph is not None:
            self._check(cudart.cudaGraphLaunch(slot.graph, stream), "cudaGraphLaunch")
            return
        if self.cuda_graphs and slot.calls >= 2 and not slot.graph_failed:
            slot.graph = self._capture(slot.context, stream)
            if slot.graph is not None:
                self._check(cudart.cudaGraphLaunch(slot.graph, stream), "cudaGraphLaunch")
                return
            slot.graph_failed = True
        if not slot.context.execute_async_v3(int(stream)):
            raise PackdError("TensorRT execute_async_v3 failed")

    def _capture(self, ctx, stream) -> Any:
        """The slot's enqueue as an instantiated CUDA graph, or None when capture fails (cleaned up). The
        slot's first call (a plain enqueue after its shapes were set, synchronised) was the flush."""
        cudart = self._cudart
        ok = cudart.cudaError_t.cudaSuccess
        err, = cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        if err != ok:
            cudart.cudaGetLastError()
            return None
        try:
            enqueued = ctx.execute_async_v3(int(stream))
        finally:
            err, graph = cudart.cudaStreamEndCapture(stream)  # exactly once, whatever happened inside
        if err != ok or graph is None:
            cudart.cudaGetLastError()
            return None
        try:
            if not enqueued:
                return None
            err, instance = cudart.cudaGraphInstantiate(graph, 0)
            return instance if err == ok else None
        finally:
            cudart.cudaGraphDestroy(graph)
            cudart.cudaGetLastError()

    def _free_slot(self, slot: _Slot) -> None:
        cudart = self._cudart
        if slot.graph is not None:
            cudart.cudaGraphExecDestroy(slot.graph)
        for ptr in slot.device.values():
            cudart.cudaFree(ptr)
        for ptr in slot.host_ptrs:
            cudart.cudaFreeHost(ptr)
        slot.device.clear()
        slot.host_ptrs.clear()
        slot.context = None

    def _release(self, state: _ThreadState) -> None:
        cudart = self._cudart
        cudart.cudaStreamSynchronize(state.stream)
        for slot in state.slots.values():
            self._free_slot(slot)
        state.slots.clear()
        for event in [*state.events, state.ready]:
            cudart.cudaEventDestroy(event)
        cudart.cudaStreamDestroy(state.stream)

    def close(self) -> None:
        """Wait for calls in flight, then release everything; later calls raise a PackdError."""
        if not self._gate.close():
            return
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            self._release(state)
        self.engines.clear()


def _shape(value: Any) -> tuple[int, ...]:
    cai = getattr(value, "__cuda_array_interface__", None)
    return tuple(cai["shape"]) if cai is not None else tuple(np.shape(value))
