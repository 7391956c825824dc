"""TensorRT in the runtime: the backend (`backend.py`) and the engine builder (`build.py`, which a Jetson with
the runtime and JetPack runs to build its own engines)."""
