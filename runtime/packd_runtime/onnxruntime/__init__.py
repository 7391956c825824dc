"""ONNX Runtime in the runtime: the backend (`backend.py`), on the CUDA provider when onnxruntime-gpu has one, else
the CPU."""
