"""JSON reports (evaluation, benchmarks, int8, the demo): marked as packd's, so that only a report packd wrote is
ever overwritten, and checked before a long run rather than after it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packd_runtime.atomic import check_writable, write_json
from packd_runtime.errors import PackdError

REPORT_PRODUCER = "packd"  # reports carry {"producer": "packd"}, so only our own are overwritten


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
    check_writable(path)


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write a JSON report marked as ours (`check_report_path` lets only such files be overwritten)."""
    check_report_path(path)
    write_json(path, {"producer": REPORT_PRODUCER, **report})
