"""The runtime's own tests: torch-free (they run in the runtime-only environment, `make test`'s .venv-runtime on
Python 3.10 as on JetPack 6), on toy bundles built with onnx.helper (see toy_bundle.py) and fakes of TensorRT / CUDA
that enforce their documented rules (fake_gpu.py)."""

import sys

import pytest


@pytest.fixture(scope="session", autouse=True)
def never_torch():
    """Nothing the runtime or its tests import may bring torch in."""
    yield
    assert "torch" not in sys.modules, "the torch-free runtime's tests imported torch"
