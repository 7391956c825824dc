"""The old import path of the Triton line model, kept for model repositories written before it moved to
`packd_runtime.triton.line_model` (their model.py imports `TritonPythonModel` from here)."""

from packd_runtime.triton.line_model import LineServer, TritonPythonModel

__all__ = ["LineServer", "TritonPythonModel"]
