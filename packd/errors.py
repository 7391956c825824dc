"""The one exception type packd raises for problems a user can fix (shared with the runtime), and its torchrun form."""

from packd_runtime.errors import PackdError

__all__ = ["EveryRankError", "PackdError"]


class EveryRankError(PackdError):
    """A PackdError every process of a torchrun run raises alike (a setting that does not split, rank 0's error
    broadcast to all): rank 0 alone prints it, so the user reads it once."""
