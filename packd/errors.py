"""The one exception type packd raises for problems a user can fix."""


class PackdError(Exception):
    """Bad input, missing files or dependencies: the message says what is wrong and what to do."""
