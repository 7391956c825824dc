"""One rule for closing something several threads call: close waits for calls in flight, and every
call after it raises a PackdError (never a KeyError, never a use of freed memory)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from packd_runtime.errors import PackdError


class CallGate:
    """Counts calls in flight; `close()` waits until none is left."""

    def __init__(self, closed_message: str):
        self._idle = threading.Condition()
        self._in_flight, self.closed = 0, False
        self._message = closed_message

    def check_open(self) -> None:
        """Before work that precedes a call (checking its arguments): the closed error first."""
        if self.closed:
            raise PackdError(self._message)

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._idle:
            if self.closed:
                raise PackdError(self._message)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def close(self) -> bool:
        """Refuse new calls and wait for those in flight. True the first time: the caller releases its resources."""
        with self._idle:
            if self.closed:
                return False
            self.closed = True
            self._idle.wait_for(lambda: self._in_flight == 0)
        return True
