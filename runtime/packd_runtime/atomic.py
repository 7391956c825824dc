"""Safe writes for everything packd writes: checkpoints, bundles, synthetic categories, reports.

- Atomic: built in a temporary sibling, then renamed into place; readers never see half a result.
- Nothing lost: an existing target is replaced only if packd wrote it (it holds the kind's marker
  file, e.g. a checkpoint's config.json); anything else is refused with one line.
- One writer at a time: `packd_runtime.locks.output_lock`.
- Crash windows: a kill between "old aside" and "new in" leaves `.NAME.old`; the next writer (or a
  reader, when no writer holds the lock) puts it back. Leftover `.NAME.tmp*` folders of killed
  writes are removed by the next writer.
- A full disk is reported in one line; the previous version stays in place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packd_runtime.errors import PackdError
from packd_runtime.files import read_json
from packd_runtime.locks import output_lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _old_path(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def _disk_full(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left on device" in str(e)


def recover(final: str | Path) -> None:
    """Under the lock: undo a write killed between its two renames, remove killed writes' temporaries."""
    final = Path(final)
    old = _old_path(final)
    if not final.exists() and old.is_dir():
        os.replace(old, final)
    for tmp in _temporaries(final):
        shutil.rmtree(tmp, ignore_errors=True)


def _temporaries(final: Path) -> list[Path]:
    """Folders `atomic_dir` made for `final` (`.NAME.tmp` + mkdtemp's 8 characters), the name matched literally:
    never a pattern, never a user's `.NAME.tmp_backup`."""
    own = re.compile(re.escape(f".{final.name}.tmp") + r"[a-z0-9_]{8}")
    if not final.parent.is_dir():
        return []
    return [final.parent / n for n in os.listdir(final.parent)
            if own.fullmatch(n) and (final.parent / n).is_dir() and not (final.parent / n).is_symlink()]


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


@dataclass(frozen=True)
class Marker:
    """The file every output of one kind holds (a checkpoint's config.json, a bundle's manifest.json), and the
    test that a file of that name is packd's own: a name alone proves nothing (a Hugging Face model folder has a
    config.json, a web app a manifest.json)."""

    name: str
    what: str
    ours: Callable[[Path], bool]


def json_marker(name: str, what: str, fields: Mapping[str, type]) -> Marker:
    """A marker that is packd's when it parses as a JSON object with these fields of these types."""

    def ours(path: Path) -> bool:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(isinstance(data.get(k), t) and not isinstance(data.get(k), bool)
                                              for k, t in fields.items())

    return Marker(name, what, ours)


def text_marker(name: str, what: str, prefix: str) -> Marker:
    """A marker that is packd's when its text starts with `prefix` (what packd writes into it)."""

    def ours(path: Path) -> bool:
        try:
            return path.read_text(errors="replace").startswith(prefix)
        except OSError:
            return False

    return Marker(name, what, ours)


def read_output(folder: str | Path, marker: Marker) -> tuple[Path, Any]:
    """The JSON marker of a folder packd wrote (a checkpoint's config, a bundle's manifest) and its path, after
    putting back a write killed between its renames; one line when the folder or the file is missing."""
    folder = Path(folder)
    recover_if_unlocked(folder)
    path = folder / marker.name
    if not folder.is_dir():
        raise PackdError(f"{marker.what} folder not found: {folder}")
    return path, read_json(path, f"{folder} is not a packd {marker.what}: {marker.name} missing")


def check_writable(target: str | Path) -> None:
    """Before any work: one line when `target` (a file or folder packd is about to write) could not be written,
    because the nearest folder on its path that exists, or `target` itself when it is a folder to replace, does
    not take changes (read-only permissions, a read-only file system, the immutable attribute)."""
    target = Path(target).absolute()
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise PackdError(f"{folder} is not a folder: cannot write {target}")
    for place in (folder, target) if target.is_dir() and not target.is_symlink() else (folder,):
        if not os.access(place, os.W_OK | os.X_OK):
            raise PackdError(f"cannot write {target}: {place} is read-only; choose another output folder or make "
                             "it writable")


def check_replaceable(final: str | Path, marker: Marker) -> None:
    """Refuse to replace anything packd did not provably write, and a place that cannot be written: `final` may
    be absent, an empty folder, or a folder holding `marker` as packd writes it."""
    final, what = Path(final), marker.what
    if final.is_symlink():
        raise PackdError(f"{final} is a symbolic link: refusing to write a {what} through it")
    check_writable(final)
    if not final.exists():
        return
    if not final.is_dir():
        raise PackdError(f"{final} exists and is not a folder: refusing to replace it with a {what}")
    if not any(final.iterdir()):
        return
    found = final / marker.name
    if not found.is_file() or found.is_symlink() or not marker.ours(found):
        why = f"no {marker.name}" if not found.exists() else f"its {marker.name} is not packd's"
        raise PackdError(f"{final} exists and is not a {what} written by packd ({why}): refusing to replace it; "
                         "choose another output folder")


@contextmanager
def atomic_dir(final: str | Path, marker: Marker) -> Iterator[Path]:
    """Yield a temporary directory next to `final`; on success it replaces `final`, on error it is removed.

    An existing `final` is first renamed aside, then the new one renamed in, then the old one
    deleted: at every moment one complete version exists on disk (see `recover`)."""
    final = Path(final)
    check_writable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(final):
        recover(final)
        check_replaceable(final, marker)
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
    check_writable(path)
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
