"""packd_runtime: run packd bundles in camera software. Needs numpy and onnxruntime (CPU) or
tensorrt + cuda-python (NVIDIA); never torch. Works on Python 3.10 (JetPack 6)."""

from packd_runtime.detector import Detector, Prototypes, Result
from packd_runtime.errors import PackdError

__all__ = ["Detector", "PackdError", "Prototypes", "Result"]
__version__ = "0.1.0"
