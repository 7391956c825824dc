"""ONNX Runtime backend: CUDA execution provider when onnxruntime-gpu has one, else CPU.

Sessions are created once at open; `InferenceSession.run` is thread-safe, so one backend serves
every camera thread. The provider reported is the one the sessions really got (ONNX Runtime falls
back to the CPU silently when the CUDA provider fails to load). Device arrays
(`__cuda_array_interface__`) are bound in place with IOBinding on the CUDA provider, after their
producer's stream is synchronised (ONNX Runtime runs on a stream of its own, which nothing else
orders after the producer; cuda-python is needed for that); on the CPU provider they are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packd_runtime.cuda_arrays import producer_stream
from packd_runtime.errors import PackdError
from packd_runtime.files import native_path
from packd_runtime.onnx_scan import external_data_locations

if TYPE_CHECKING:
    from packd_runtime.manifest import Graph


def _model_source(path: Path, data: bytes | None = None) -> bytes | str:
    """A graph's bytes (any folder name works; `data` when already read and verified), or its path where tensors live
    in external files beside it."""
    data = path.read_bytes() if data is None else data
    return native_path(path) if external_data_locations(data) else data


class OnnxRuntimeBackend:
    """`Backend` on ONNX Runtime; outputs are returned by name. `models`: per graph its ONNX bytes (or path);
    `graphs`: their I/O, which the sessions must have."""

    name = "onnxruntime"

    @classmethod
    def open(cls, bundle: Path, graphs: Mapping[str, Graph], device: int | None = 0,
             verified: Mapping[str, bytes] | None = None) -> OnnxRuntimeBackend:
        """The backend of a bundle's graph files (device None: the CPU provider only); `verified`: their bytes as
        already read and hashed."""
        verified = verified or {}
        return cls({g: _model_source(bundle / spec.file, verified.get(spec.file)) for g, spec in graphs.items()},
                   graphs, device)

    def __init__(self, models: Mapping[str, bytes | str], graphs: Mapping[str, Graph], device: int | None = 0,
                 exact_qdq: bool = False):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PackdError("the ONNX Runtime backend needs onnxruntime: pip install onnxruntime "
                             "(or onnxruntime-gpu on NVIDIA machines)") from None
        wanted = device is not None and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ([("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"] if wanted
                     else ["CPUExecutionProvider"])
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if exact_qdq:  # int8 graphs in their own arithmetic (Q, DQ, then fp32), the same on every CPU: not fused into
            # ONNX Runtime's int8 kernels, whose u8 x s8 products saturate on CPUs without VNNI (6.4 % mean map
            # error instead of 1.2 % on an AVX2 EPYC; docs/export.md)
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        self._sessions = {g: ort.InferenceSession(models[g], sess_options=opts, providers=providers)
                          for g in graphs}
        self._outputs = {g: [o.name for o in spec.outputs] for g, spec in graphs.items()}
        for g, spec in graphs.items():  # the runtime reads outputs by name: the names must be right
            session = self._sessions[g]
            real = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
            if real != ([i.name for i in spec.inputs], self._outputs[g]):
                raise PackdError(f"{spec.file} has inputs/outputs {real}, not the manifest's: refused")
        got = {p for session in self._sessions.values() for p in session.get_providers()}
        self.cuda = all("CUDAExecutionProvider" in s.get_providers() for s in self._sessions.values())
        self.device_id = device
        self.device = f"cuda:{device}" if self.cuda else "cpu"
        self.description = "CUDAExecutionProvider" if self.cuda else "CPUExecutionProvider"
        if wanted and not self.cuda:
            self.description += (f" (the CUDA provider is installed but did not load: sessions got {sorted(got)}; "
                                 "check the CUDA and cuDNN libraries onnxruntime-gpu needs)")

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        session, names = self._sessions[graph], self._outputs[graph]
        if not any(hasattr(v, "__cuda_array_interface__") for v in feeds.values()):
            return dict(zip(names, session.run(names, dict(feeds))))
        if not self.cuda:
            raise PackdError("device arrays need a GPU backend (TensorRT, or onnxruntime-gpu's CUDA provider); "
                             "this detector runs ONNX Runtime on the CPU: pass numpy arrays")
        binding = session.io_binding()
        for name, value in feeds.items():
            if hasattr(value, "__cuda_array_interface__"):
                cai = value.__cuda_array_interface__
                order_after_producer(cai)
                binding.bind_input(name, "cuda", self.device_id, np.dtype(cai["typestr"]), list(cai["shape"]),
                                   cai["data"][0])
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def timings(self) -> dict[str, float]:  # ONNX Runtime does not time its kernels for us
        return {}

    def close(self) -> None:
        self._sessions.clear()



def cuda_runtime() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise PackdError(f"device arrays on ONNX Runtime need cuda-python to wait for their producer ({e}): "
                         "pip install 'cuda-python>=12.6.1,<13' (CUDA 12 drivers) or 'cuda-python>=13' (CUDA 13)"
                         ) from None
    return cudart


def order_after_producer(cai: Mapping[str, Any]) -> None:
    """Wait on the host for the stream that wrote a device array: the one it names, the legacy default
    stream when it names none (torch's version 2 export), none when it says None."""
    producer = producer_stream(cai)
    if producer is None:
        return
    cudart = cuda_runtime()
    err, = cudart.cudaStreamSynchronize(producer)
    if err != cudart.cudaError_t.cudaSuccess:
        raise PackdError(f"CUDA error waiting for the producer of a device input: {err}")
