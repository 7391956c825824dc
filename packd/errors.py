"""The one exception type packd raises for problems a user can fix (shared with the runtime)."""

from packd_runtime.errors import PackdError

__all__ = ["PackdError"]
