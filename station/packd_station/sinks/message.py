"""The one JSON message per frame every sink sends."""

from __future__ import annotations

from typing import Any

from packd_station.records import FIELDS


def message(record: dict[str, Any]) -> dict[str, Any]:
    """A record's fields, as the records API and the CSV export have them (no pictures)."""
    return {k: record[k] for k in FIELDS}
