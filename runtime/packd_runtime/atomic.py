"""Safe writes for everything packd writes: checkpoints, bundles, synthetic categories, reports.

- Atomic: built in a temporary sibling, then renamed into place; readers never see half a result.
- Nothing lost: an existing target is replaced only if packd wrote it (it holds the kind's marker
  file, e.g. a checkpoint's config.json); anything else is refused with one line.
- One writer at a time: a lock file `.NAME.lock` holds the writer's pid; a second writer is
  refused while that process lives, and a stale lock (its process gone) is taken over.
- Crash windows: a kill between "old aside" and "new in" leaves `.NAME.old`; the next writer (or a
  reader, when no writer holds the lock) puts it back. Leftover `.NAME.tmp*` folders of killed
  writes are removed by the next writer.
- A full disk is reported in one line; the previous version stays in place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packd_runtime.errors import PackdError

REPORT_PRODUCER = "packd"  # reports carry {"producer": "packd"}, so only our own are overwritten
_held: dict[Path, tuple[int, int]] = {}  # lock path -> (thread id, depth) for locks this process holds
_held_guard = threading.Lock()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def _old_path(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _disk_full(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left on device" in str(e)


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


def recover(final: str | Path) -> None:
    """Under the lock: undo a write killed between its two renames, remove killed writes' temporaries."""
    final = Path(final)
    old = _old_path(final)
    if not final.exists() and old.is_dir():
        os.replace(old, final)
    for tmp in final.parent.glob(f".{final.name}.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def recover_if_unlocked(final: str | Path) -> None:
    """For readers: recover an interrupted write unless a live writer holds the lock."""
    final = Path(final)
    if final.exists() or not _old_path(final).is_dir():
        return
    try:
        with output_lock(final):
            recover(final)
    except PackdError:
        pass


def check_replaceable(final: str | Path, marker: str, what: str) -> None:
    """Refuse to replace anything packd did not write: `final` may be absent, an empty folder, or a
    folder holding `marker` (the file every `what` of ours has)."""
    final = Path(final)
    if final.is_symlink():
        raise PackdError(f"{final} is a symbolic link: refusing to write a {what} through it")
    if not final.exists():
        return
    if not final.is_dir():
        raise PackdError(f"{final} exists and is not a folder: refusing to replace it with a {what}")
    if any(final.iterdir()) and not (final / marker).is_file():
        raise PackdError(f"{final} exists and is not a {what} written by packd (no {marker}): refusing to "
                         f"replace it; choose another output folder")


@contextmanager
def atomic_dir(final: str | Path, marker: str, what: str) -> Iterator[Path]:
    """Yield a temporary directory next to `final`; on success it replaces `final`, on error it is removed.

    An existing `final` is first renamed aside, then the new one renamed in, then the old one
    deleted: at every moment one complete version exists on disk (see `recover`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        recover(final)
        check_replaceable(final, marker, what)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a bundle must be readable by camera software
        try:
            yield tmp
            if final.exists():
                old = _old_path(final)
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except Exception as e:
            if _disk_full(e):
                raise PackdError(f"disk full while writing {final}: the previous version (if any) is kept; free "
                                 "some space and run the command again") from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Any]:
    """Yield a binary file object; on success it replaces `path`, on error nothing changes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except Exception as e:
        if _disk_full(e):
            raise PackdError(f"disk full while writing {path}: the previous version (if any) is kept") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON to a temporary file, then rename it over `path`."""
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=2).encode())


def check_report_path(path: str | Path) -> None:
    """Before a long run: `path` must be writable as a report, i.e. absent or a report packd wrote."""
    path = Path(path)
    if path.is_dir():
        raise PackdError(f"{path} is a folder: give a file name for the report")
    if path.exists():
        try:
            ours = json.loads(path.read_text()).get("producer") == REPORT_PRODUCER
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise PackdError(f"{path} exists and is not a report written by packd: refusing to overwrite it")
    if path.parent.exists() and not path.parent.is_dir():
        raise PackdError(f"{path.parent} is not a folder")


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write a JSON report marked as ours (`check_report_path` lets only such files be overwritten)."""
    check_report_path(path)
    write_json(path, {"producer": REPORT_PRODUCER, **report})
