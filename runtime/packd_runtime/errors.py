"""The one exception type packd raises for problems a user or integrator can act on.

It lives in the torch-free runtime so that the training side (`packd.errors` re-exports it), the
exporter and the runtime all raise and catch the same class."""


class PackdError(Exception):
    """Bad input, missing or corrupted files, missing dependencies: the message says what is wrong and what to do."""


class Interrupted(PackdError):
    """The user stopped a long run (Ctrl-C); the message says what was kept and how to go on."""

    exit_code = 130
