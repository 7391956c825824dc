"""One writer at a time for every output packd writes: a lock file `.NAME.lock` beside the output holds the writer's
pid; a second writer is refused while that process lives, and a stale lock (its process gone) is taken over."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from packd_runtime.errors import PackdError

_held: dict[Path, tuple[int, int]] = {}  # lock path -> (thread id, depth) for locks this process holds
_held_guard = threading.Lock()


def _lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def output_lock(final: str | Path) -> Iterator[None]:
    """Hold `.NAME.lock` (with this process's pid) while writing `final`; re-entrant in one thread."""
    lock = _lock_path(Path(final).absolute())
    me = threading.get_ident()
    with _held_guard:
        holder = _held.get(lock)
        if holder is not None:
            if holder[0] != me:
                raise PackdError(f"{final} is being written by another thread of this process")
            _held[lock] = (me, holder[1] + 1)
    if holder is not None:
        try:
            yield
        finally:
            with _held_guard:
                _held[lock] = (me, _held[lock][1] - 1)
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise PackdError(f"{final} is being written by process {pid} (lock {lock}); wait for it to "
                                 f"finish, or delete the lock file if that process is not packd") from None
            lock.unlink(missing_ok=True)  # stale: its writer is gone
    else:
        raise PackdError(f"cannot take the lock {lock}")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    with _held_guard:
        _held[lock] = (me, 1)
    try:
        yield
    finally:
        with _held_guard:
            del _held[lock]
        lock.unlink(missing_ok=True)
