"""Execution backends: TensorRT (engines built for this GPU) and ONNX Runtime (CUDA or CPU)."""
