"""Generic file helpers: a file's sha256, JSON files packd wrote, paths as native libraries take them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from packd_runtime.errors import PackdError


def sha256(path: str | Path) -> str:
    """The file's sha256 as 64 hex digits, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def native_path(path: str | Path) -> str:
    """`path` as native libraries (ONNX Runtime, TensorRT) take it, UTF-8 text; one line when a name in it holds
    bytes that are not UTF-8 (Python keeps them as surrogates, which those libraries cannot encode)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PackdError(f"{os.fsencode(text).decode('utf-8', 'backslashreplace')}: a folder or file name in this path "
                         "is not UTF-8, which ONNX Runtime and TensorRT cannot open: rename it") from None
    return text


def read_json(path: Path, missing: str) -> Any:
    """A JSON file packd wrote, or a one-line PackdError: `missing` when absent, 'corrupted' when unreadable."""
    if not path.is_file() or path.is_symlink():
        raise PackdError(missing)
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, numbers too long, nesting too deep
        raise PackdError(f"corrupted {path}: {type(e).__name__}: {str(e)[:200]}") from None
