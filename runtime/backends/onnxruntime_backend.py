"""ONNX Runtime backend: CUDA execution provider when onnxruntime-gpu has one, else CPU.

Sessions are created once at open; `InferenceSession.run` is thread-safe, so one backend serves
every camera thread. Device arrays (`__cuda_array_interface__`) are bound in place with
IOBinding on the CUDA provider; on the CPU provider they are refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from packd_runtime.errors import PackdError


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Path, manifest: dict[str, Any], device: int = 0, cpu_only: bool = False):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PackdError("the ONNX Runtime backend needs onnxruntime: pip install onnxruntime "
                             "(or onnxruntime-gpu on NVIDIA machines)") from None
        self._ort = ort
        available = ort.get_available_providers()
        self.cuda = not cpu_only and "CUDAExecutionProvider" in available
        providers = ([("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"] if self.cuda
                     else ["CPUExecutionProvider"])
        self.provider = "CUDAExecutionProvider" if self.cuda else "CPUExecutionProvider"
        self.device = device
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {g: ort.InferenceSession(str(bundle / spec["file"]), sess_options=opts, providers=providers)
                         for g, spec in manifest["graphs"].items()}
        self.outputs = {g: [o["name"] for o in spec["outputs"]] for g, spec in manifest["graphs"].items()}

    def run(self, graph: str, feeds: dict[str, Any]) -> list[np.ndarray]:
        """Outputs of `graph` in manifest order, as host arrays."""
        if not any(hasattr(v, "__cuda_array_interface__") for v in feeds.values()):
            return self.sessions[graph].run(self.outputs[graph], feeds)
        if not self.cuda:
            raise PackdError("device arrays need a GPU backend (TensorRT, or onnxruntime-gpu's CUDA provider); "
                             "this detector runs ONNX Runtime on the CPU: pass numpy arrays")
        binding = self.sessions[graph].io_binding()
        for name, value in feeds.items():
            if hasattr(value, "__cuda_array_interface__"):
                cai = value.__cuda_array_interface__
                binding.bind_input(name, "cuda", self.device, np.dtype(cai["typestr"]), list(cai["shape"]), cai["data"][0])
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs[graph]:
            binding.bind_output(name, "cpu")
        self.sessions[graph].run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def close(self) -> None:
        self.sessions.clear()
