"""packd: few-shot industrial anomaly detection with knowledge distillation."""

from packd.errors import PackdError

__version__ = "0.1.0"
__all__ = ["PackdError", "__version__"]
