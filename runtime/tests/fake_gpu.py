"""A fake TensorRT + CUDA runtime for testing the TensorRT backend's logic without a GPU.

Memory is host memory, work runs at once on the host, and the rules that make real GPU code
correct or undefined are enforced, raising `Violation`:
- a CUDA graph replays only on a context whose shapes have not changed since capture;
- a capture must follow a flush: a plain enqueue after the context's last shape change, then a
  synchronisation of its stream;
- `cudaStreamEndCapture` only on a capturing stream (never twice);
- a device-to-device copy from memory a producer is still writing must be ordered after it: our
  stream waited on an event recorded on the producer's stream after the write;
- nothing is freed twice or unknown; `leaks()` lists what is still allocated.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import threading
from types import SimpleNamespace

import numpy as np


class Violation(AssertionError):
    """Undefined behaviour on a real GPU."""


SUCCESS, FAILED = "cudaSuccess", "cudaErrorUnknown"


class FakeCudart:
    cudaError_t = SimpleNamespace(cudaSuccess=SUCCESS)
    cudaStreamNonBlocking = 1
    cudaEventDisableTiming = 2
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H",
                                     cudaMemcpyDeviceToDevice="D2D")
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal="thread-local")
    LEGACY = 1

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.lock = threading.RLock()
        self.buffers: dict[int, ctypes.Array] = {}
        self.device_ptrs: set[int] = set()
        self.host_ptrs: set[int] = set()
        self.streams: set[int] = set()
        self.events: dict[int, tuple[int, int] | None] = {}
        self.graphs: dict[int, list] = {}
        self.execs: dict[int, list] = {}
        self.capturing: dict[int, list] = {}
        self.unsynced: dict[int, set] = {}
        self.writes: dict[int, int] = {}  # stream -> how many writes it has issued
        self.waited: dict[int, dict[int, int]] = {}  # stream -> producer stream -> write count waited for
        self.pending: dict[int, tuple[int, int]] = {}  # device ptr -> (producer stream, its write count)
        self.fail_instantiate = False
        self._ids = itertools.count(100)

    def _record(self, *call) -> None:
        with self.lock:
            self.log.append(call)

    def calls(self, name: str) -> list[tuple]:
        return [c for c in self.log if c[0] == name]

    def leaks(self) -> dict[str, int]:
        found = {"device": len(self.device_ptrs), "host": len(self.host_ptrs), "streams": len(self.streams),
                 "events": len(self.events), "graphs": len(self.graphs), "graph_execs": len(self.execs)}
        return {k: v for k, v in found.items() if v}

    def cudaSetDevice(self, device):
        self._record("cudaSetDevice", device)
        return (SUCCESS,)

    def cudaGetLastError(self):
        return (SUCCESS,)

    def cudaGetDeviceCount(self):
        return (SUCCESS, 2)

    def cudaGetDeviceProperties(self, device):
        self._record("cudaGetDeviceProperties", device)
        return (SUCCESS, SimpleNamespace(major=8, minor=7, name=(b"Fake Orin", b"Fake Orin NX")[device] + b"\0\0"))

    def _alloc(self, n, pool):
        buf = ctypes.create_string_buffer(n)
        ptr = ctypes.addressof(buf)
        with self.lock:
            self.buffers[ptr] = buf
            pool.add(ptr)
        return (SUCCESS, ptr)

    def _free(self, ptr, pool, what):
        with self.lock:
            if ptr not in pool:
                raise Violation(f"{what} of unknown or freed memory {ptr}")
            pool.discard(ptr)
        return (SUCCESS,)

    def cudaMalloc(self, n):
        return self._alloc(n, self.device_ptrs)

    def cudaMallocHost(self, n):
        return self._alloc(n, self.host_ptrs)

    def cudaFree(self, ptr):
        return self._free(ptr, self.device_ptrs, "cudaFree")

    def cudaFreeHost(self, ptr):
        return self._free(ptr, self.host_ptrs, "cudaFreeHost")

    def cudaStreamCreateWithFlags(self, flags):
        stream = next(self._ids)
        with self.lock:
            self.streams.add(stream)
        return (SUCCESS, stream)

    def cudaStreamDestroy(self, stream):
        with self.lock:
            if stream not in self.streams:
                raise Violation(f"cudaStreamDestroy of unknown stream {stream}")
            self.streams.discard(stream)
        return (SUCCESS,)

    def cudaStreamSynchronize(self, stream):
        self._record("cudaStreamSynchronize", stream)
        with self.lock:
            for ctx in self.unsynced.pop(stream, set()):
                ctx.flush_synced = True
        return (SUCCESS,)

    def cudaEventCreate(self):
        return self.cudaEventCreateWithFlags(0)

    def cudaEventCreateWithFlags(self, flags):
        event = next(self._ids)
        with self.lock:
            self.events[event] = None
        return (SUCCESS, event)

    def cudaEventDestroy(self, event):
        with self.lock:
            if event not in self.events:
                raise Violation(f"cudaEventDestroy of unknown event {event}")
            del self.events[event]
        return (SUCCESS,)

    def cudaEventRecord(self, event, stream):
        self._record("cudaEventRecord", event, stream)
        with self.lock:
            self.events[event] = (stream, self.writes.get(stream, 0))
        return (SUCCESS,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        self._record("cudaStreamWaitEvent", stream, event)
        with self.lock:
            if self.events.get(event) is None:
                raise Violation("cudaStreamWaitEvent on an event never recorded")
            producer, count = self.events[event]
            self.waited.setdefault(stream, {})[producer] = count
        return (SUCCESS,)

    def cudaEventElapsedTime(self, start, end):
        return (SUCCESS, 0.25)

    def produce(self, ptr: int, stream: int) -> None:
        """A producer (torch, cupy) wrote `ptr` on `stream`, and the write may still be in flight."""
        with self.lock:
            self.writes[stream] = self.writes.get(stream, 0) + 1
            self.pending[ptr] = (stream, self.writes[stream])

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self._record("cudaMemcpyAsync", kind, stream)
        with self.lock:
            if stream in self.capturing:
                raise Violation("copies are not part of the captured graph")
            if kind == "D2D" and src in self.pending:
                producer, count = self.pending[src]
                if self.waited.get(stream, {}).get(producer, 0) < count:
                    raise Violation(f"copy from {src} is not ordered after its producer on stream {producer}")
        ctypes.memmove(dst, src, n)
        return (SUCCESS,)

    def cudaStreamBeginCapture(self, stream, mode):
        self._record("cudaStreamBeginCapture", stream, mode)
        with self.lock:
            if stream in self.capturing:
                raise Violation("capture begun twice")
            self.capturing[stream] = []
        return (SUCCESS,)

    def cudaStreamEndCapture(self, stream):
        self._record("cudaStreamEndCapture", stream)
        with self.lock:
            if stream not in self.capturing:
                raise Violation("cudaStreamEndCapture on a stream that is not capturing (called twice?)")
            work = self.capturing.pop(stream)
            graph = next(self._ids)
            self.graphs[graph] = work
        return (SUCCESS, graph)

    def cudaGraphInstantiate(self, graph, flags):
        self._record("cudaGraphInstantiate", graph)
        if self.fail_instantiate:
            return (FAILED, None)
        with self.lock:
            instance = next(self._ids)
            self.execs[instance] = list(self.graphs[graph])
        return (SUCCESS, instance)

    def cudaGraphDestroy(self, graph):
        with self.lock:
            if self.graphs.pop(graph, None) is None:
                raise Violation(f"cudaGraphDestroy of unknown graph {graph}")
        return (SUCCESS,)

    def cudaGraphExecDestroy(self, instance):
        with self.lock:
            if self.execs.pop(instance, None) is None:
                raise Violation(f"cudaGraphExecDestroy of unknown graph {instance}")
        return (SUCCESS,)

    def cudaGraphLaunch(self, instance, stream):
        self._record("cudaGraphLaunch", instance, stream)
        for ctx, version in self.execs[instance]:
            if ctx.version != version:
                raise Violation("graph replayed after its context's shapes changed")
            ctx.compute()
        return (SUCCESS,)


class FakeEngine:
    """Inputs `images` uint8 (B,H,W,3) and optional `prototypes_1` float32 (n,C); outputs listed FIRST
    (TensorRT's I/O order is not documented): `maps` (B,4,4) and `scores` (B,) float32,
    score = mean of the image (+ the sum of the prototypes)."""

    def __init__(self, spec: dict, cudart: FakeCudart, gate: threading.Event | None, entered: threading.Event):
        self.spec, self.cudart, self.gate, self.entered = spec, cudart, gate, entered
        self.names = ["maps", "scores", *spec["inputs"]]
        self.num_io_tensors = len(self.names)
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.spec["inputs"] else "OUTPUT"

    def get_tensor_dtype(self, name):
        return np.uint8 if name == "images" else np.float32

    def create_execution_context(self):
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.version, self.flushed_version, self.flush_synced = 0, -1, False

    def set_input_shape(self, name, shape):
        if name == "images" and not 1 <= shape[0] <= self.engine.spec["max_batch"]:
            return False
        self.shapes[name] = tuple(shape)
        self.version += 1
        self.flush_synced = False
        return True

    def get_tensor_shape(self, name):
        b = self.shapes["images"][0]
        return (b, 4, 4) if name == "maps" else (b,)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def _view(self, name, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer((ctypes.c_byte * n).from_address(self.addresses[name]), dtype=dtype).reshape(shape)

    def compute(self):
        images = self._view("images", self.shapes["images"], np.uint8)
        scores = images.reshape(len(images), -1).mean(axis=1).astype(np.float32)
        if "prototypes_1" in self.shapes:
            scores = scores + self._view("prototypes_1", self.shapes["prototypes_1"], np.float32).sum()
        self._view("scores", (len(images),), np.float32)[:] = scores
        self._view("maps", (len(images), 4, 4), np.float32)[:] = scores[:, None, None]

    def execute_async_v3(self, stream):
        cudart = self.engine.cudart
        cudart._record("execute_async_v3", id(self), stream)
        with cudart.lock:
            capture = cudart.capturing.get(stream)
        if capture is not None:
            if self.flushed_version != self.version or not self.flush_synced:
                raise Violation("capture not preceded by a flush (plain enqueue + sync) after the last shape change")
            capture.append((self, self.version))
            return True
        self.engine.entered.set()
        if self.engine.gate is not None:
            self.engine.gate.wait(10)
        self.compute()
        self.flushed_version, self.flush_synced = self.version, False
        with cudart.lock:
            cudart.unsynced.setdefault(stream, set()).add(self)
        return True


class FakeTensorRT:
    __version__ = "10.3.0.26"
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    def __init__(self, cudart: FakeCudart):
        self.cudart = cudart
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.engines: list[FakeEngine] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data: bytes):
                try:
                    spec = json.loads(data)
                except ValueError:
                    return None
                engine = FakeEngine(spec, fake.cudart, fake.gate, fake.entered)
                fake.engines.append(engine)
                return engine

        self.Logger, self.Runtime = Logger, Runtime
        self.built: list[dict] = []  # per build: the builder config's flags, timing cache and profile
        self.refuse_cache = b"stale"  # timing cache bytes set_timing_cache refuses (another TensorRT / GPU)

        class Network:
            def __init__(self):
                self.inputs: list[str] = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return SimpleNamespace(name=self.inputs[i])

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                record = {"flags": {"TF32"}, "profiles": [], "cache": None}
                fake.built.append(record)

                class Config:
                    builder_optimization_level = 0

                    def set_memory_pool_limit(self, pool, size):
                        pass

                    def clear_flag(self, flag):
                        record["flags"].discard(flag)

                    def create_timing_cache(self, data):
                        return SimpleNamespace(data=data, serialize=lambda: b"cache:" + data)

                    def set_timing_cache(self, cache, ignore_mismatch):
                        if cache.data == fake.refuse_cache:
                            return False
                        record["cache"] = cache
                        return True

                    def get_timing_cache(self):
                        return record["cache"]

                    def add_optimization_profile(self, profile):
                        record["profiles"].append(profile.shapes)

                return Config()

            def create_optimization_profile(self):
                shapes = {}
                return SimpleNamespace(shapes=shapes, set_shape=lambda name, *s: shapes.__setitem__(name, s))

            def build_serialized_network(self, network, config):
                return b"plan"

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                self.network.inputs = ["images"]
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)
        self.BuilderFlag = SimpleNamespace(TF32="TF32")
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")

    @staticmethod
    def nptype(dtype):
        return dtype


def engine_bytes(inputs: list[str], max_batch: int = 32) -> bytes:
    """What the fake Runtime deserialises: the engine's inputs and batch limit."""
    return json.dumps({"inputs": inputs, "max_batch": max_batch}).encode()


class DeviceArray:
    """Something with `__cuda_array_interface__` whose memory a producer wrote on a stream."""

    def __init__(self, cudart: FakeCudart, array: np.ndarray, stream: object = "absent"):
        self.ptr = cudart.cudaMalloc(array.nbytes)[1]
        ctypes.memmove(self.ptr, array.ctypes.data, array.nbytes)
        self.cai = {"shape": array.shape, "typestr": array.dtype.str, "data": (self.ptr, False), "version": 2}
        if stream != "absent":
            self.cai |= {"stream": stream, "version": 3}
        if stream is not None:
            cudart.produce(self.ptr, FakeCudart.LEGACY if stream in ("absent", 0) else stream)

    @property
    def __cuda_array_interface__(self):
        return self.cai
