"""The one JSON message per frame every sink sends."""

from __future__ import annotations

from typing import Any

MESSAGE_FIELDS = ("id", "time", "line", "source", "product", "bundle", "score", "threshold", "verdict")


def message(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in MESSAGE_FIELDS}
