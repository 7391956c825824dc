"""The station: its lines, their sources, the record, the sinks and OPC UA, started and stopped together.

    with Station(config) as station:          # bundles verified and opened, state restored, sources started
        station.submit("bottles", frame)      # the Python API, for vendor camera SDKs (GenICam and others)
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from packd_runtime.atomic import atomic_file
from packd_runtime.detector import Detector
from packd_runtime.errors import PackdError
from packd_station.config import StationConfig
from packd_station.drift import Drift
from packd_station.line import Line
from packd_station.records import Records
from packd_station.sinks.delivery import Delivery, Sink
from packd_station.sinks.mqtt import MqttSink
from packd_station.sinks.opcua import OpcUaNodes
from packd_station.sinks.webhook import WebhookSink
from packd_station.sources import FolderSource, Source, VideoSource
from packd_station.triton_line import TritonLine

log = logging.getLogger("packd_station")
RETENTION_EVERY_S = 60.0
COUNTS_EVERY_S = 0.5  # OPC UA's counters lag the last verdict by at most this

Listener = Callable[[str, dict[str, Any]], None]  # (event, data): "result" per frame, "line" on state changes


def station_token(config: StationConfig) -> str:
    """The operators' bearer token: --token, else DATA/token (made once, 0600)."""
    if config.token:
        return config.token
    path = config.data / "token"
    if path.exists():
        token = path.read_text().strip()
        if len(token) >= 16:
            return token
    token = secrets.token_urlsafe(24)
    config.data.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        with atomic_file(path) as f:
            f.write(token.encode() + b"\n")
    finally:
        os.umask(old)
    return token


class Station:
    def __init__(self, config: StationConfig):
        self.config = config
        self._stop = threading.Event()
        self.listeners: list[Listener] = []
        self._told_alarm: dict[str, bool] = {}  # the drift state MQTT last heard, per line
        self._uncounted: set[str] = set()  # lines with verdicts OPC UA's counters do not count yet
        for line in config.lines:
            if line.source.startswith("folder:") and not Path(line.source[7:]).is_dir():
                raise PackdError(f"line {line.name}: source folder {line.source[7:]} does not exist")
        self.mqtt: MqttSink | None = None
        self.opcua: OpcUaNodes | None = None
        self.records: Records | None = None
        self.lines: dict[str, Line] = {}
        self.sources: list[Source] = []
        self.deliveries: list[Delivery] = []
        detectors: dict[str, Detector | TritonLine] = {}
        try:  # every bundle (and its signature) checked before anything is written or started
            for lc in config.lines:
                keys = list(lc.trusted_keys) or None
                detectors[lc.name] = (TritonLine(lc.bundle, lc.backend[7:], lc.name, keys)
                                      if lc.backend.startswith("triton:") else
                                      Detector.open(lc.bundle, backend=lc.backend, trusted_keys=keys))
            self.mqtt = MqttSink(config.mqtt) if config.mqtt else None  # connects in the background
            sinks: list[Sink] = [s for s in (self.mqtt, config.webhook and WebhookSink(config.webhook)) if s]
            self.records = Records(config.db, [s.name for s in sinks])
            self.token = station_token(config)
            for lc in config.lines:
                self.lines[lc.name] = Line(lc, detectors.pop(lc.name), self.records, config.data / "lines" / lc.name,
                                           drift=Drift(config.drift_window, config.drift_limit),
                                           on_recorded=self._recorded)
            self.deliveries = [Delivery(s, self.records) for s in sinks]
            if config.opcua:
                self.opcua = OpcUaNodes(config.opcua, list(self.lines))
                for line in self.lines.values():
                    self._tell_opcua(line)
        except BaseException:
            for detector in detectors.values():
                detector.close()
            self.close()
            raise
        self._retention = threading.Thread(target=self._prune, name="retention", daemon=True)
        self._counter = threading.Thread(target=self._count, name="opcua-counts", daemon=True)

    def start(self) -> Station:
        for line in self.lines.values():
            line.start()
            self._start_source(line)
        self._retention.start()
        if self.opcua is not None:
            self._counter.start()
        return self

    def _start_source(self, line: Line) -> None:
        kind, _, where = line.config.source.partition(":")
        if kind == "api":
            return
        if kind == "folder":
            source: Source = FolderSource(Path(where), line.submit, line.corrupt, self.records.sources(line.name))
        else:
            source = VideoSource(where, line.submit, line.corrupt)
        line.source = source
        self.sources.append(source)
        source.start()

    def submit(self, line: str, frame: np.ndarray, source: str = "api") -> None:
        """Hand one uint8 (H, W, 3) RGB frame to a line (never waits: a full queue drops its oldest frame)."""
        if line not in self.lines:
            raise PackdError(f"no line {line!r}; lines: {sorted(self.lines)}")
        self.lines[line].submit(frame, source)

    def _recorded(self, line: Line, records: list[dict[str, Any]]) -> None:
        for d in self.deliveries:
            d.offer(records)
        self._tell_opcua(line, records[-1])
        if self._told_alarm.get(line.name, False) != line.drift.alarm:
            self._tell_drift(line)
        for record in records:
            for listener in list(self.listeners):
                listener("result", record)

    def _tell_opcua(self, line: Line, last: dict[str, Any] | None = None) -> None:
        if self.opcua is None:
            return
        if last is None:
            latest = self.records.results(line.name, limit=1)
            last = latest[0] if latest else None
        values: dict[str, Any] = {}
        if last is None:  # at start and after operator actions; while frames flow, `_count` does it
            values.update(self._counts(line))
        else:
            self._uncounted.add(line.name)
        values.update(product=line.product.name if line.product else "", threshold=line.threshold,
                      alarm=line.drift.alarm, drift_z=line.drift.z())
        if last is not None:
            values.update(verdict=last["verdict"], score=last["score"], source=last["source"], result_id=last["id"])
        self.opcua.update(line.name, **values)

    def _counts(self, line: Line) -> dict[str, int]:
        counts = self.records.counters(line.name)
        return {k: counts[k] for k in ("ok", "defect", "uncalibrated", "dropped")}

    def _count(self) -> None:
        """OPC UA's counters, counted in SQL at most every COUNTS_EVERY_S, not per frame."""
        while not self._stop.wait(COUNTS_EVERY_S):
            for name in list(self._uncounted):
                self._uncounted.discard(name)
                try:
                    self.opcua.update(name, **self._counts(self.lines[name]))
                except Exception as e:  # noqa: BLE001 - counted again next round
                    self._uncounted.add(name)
                    log.warning("OPC UA counters of %s not updated: %s", name, e)

    def _tell_drift(self, line: Line) -> None:
        state = line.drift.state()
        if self._told_alarm.get(line.name, False) == state["alarm"]:
            return
        self._told_alarm[line.name] = state["alarm"]
        for listener in list(self.listeners):
            listener("line", line.status())
        if self.mqtt is not None:
            try:
                self.mqtt.alarm(line.name, {"line": line.name, **state})
            except ConnectionError as e:
                self._told_alarm.pop(line.name)  # told again with the next result
                log.warning("line %s: drift state not sent over MQTT: %s", line.name, e)

    def changed(self, line: Line) -> None:
        """After a changeover or calibration: OPC UA and the page see the new product at once."""
        self._tell_opcua(line)
        for listener in list(self.listeners):
            listener("line", line.status())

    def status(self) -> list[dict[str, Any]]:
        unsent = self.records.unsent()
        sinks = {d.sink.name: {"state": d.state, "unsent": unsent.get(d.sink.name, 0)} for d in self.deliveries}
        out = []
        for line in self.lines.values():
            s = line.status()
            s["counts"] = self.records.counters(line.name)
            s["sinks"] = sinks
            out.append(s)
        return out

    def _prune(self) -> None:
        c = self.config
        while not self._stop.wait(RETENTION_EVERY_S):
            if c.retention_days or c.retention_mb:
                try:
                    gone = self.records.prune(c.retention_days * 86400, c.retention_mb * (1 << 20))
                    if gone:
                        log.info("retention: %d records deleted", gone)
                except Exception as e:  # noqa: BLE001 - retention waits for the next round
                    log.warning("retention failed: %s", e)

    def close(self) -> None:
        """Sources first (no new frames), then the lines finish what is queued, then sinks, OPC UA, the record."""
        self._stop.set()
        if self.records is None:
            return
        for source in self.sources:
            source.stop()
        for line in self.lines.values():
            line.stop()
            line.detector.close()
        for d in self.deliveries:
            d.close()
        if self.mqtt is not None and not self.deliveries:
            self.mqtt.close()
        if self.opcua is not None:
            self.opcua.close()
        self.records.close()

    def __enter__(self) -> Station:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
