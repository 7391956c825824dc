"""One writer at a time for every output packd writes: the operating system's exclusive lock (`flock`) on a lock
file `.NAME.lock` beside the output. The kernel releases it when its process ends, however it ends, so a lock is
never stale; the file holds the writer's pid only to name it in the refusal. POSIX (Linux, Jetson, macOS)."""

from __future__ import annotations

import fcntl
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


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote, for the message ('another process' while it has not written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def _acquire(lock: Path, final: str | Path) -> int:
    """An open descriptor of `lock` holding its exclusive flock, or a PackdError naming the holder. A holder
    unlinks the file as it finishes; a lock taken on a file that is no longer at `lock` is dropped and taken again,
    so two writers never hold locks on two different files of the same name."""
    for _ in range(100):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise PackdError(f"{final} is being written by {holder} (lock {lock}); wait for it to finish") from None
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)
    raise PackdError(f"cannot take the lock {lock}")


@contextmanager
def output_lock(final: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of `.NAME.lock` while writing `final`; re-entrant in one thread, refused with one
    line when another process or thread holds it."""
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
    fd = _acquire(lock, final)
    with _held_guard:
        _held[lock] = (me, 1)
    try:
        yield
    finally:
        with _held_guard:
            del _held[lock]
        lock.unlink(missing_ok=True)  # still holding it: a writer that opened this file sees it is gone and retries
        os.close(fd)
