"""What a station runs: its lines (bundle, source, queue) and what they share (records, sinks, the page).

From a TOML file (`packd-station serve --config line.toml`) or, for one line, from flags:

    db = "sqlite:///station/records.db"     # or postgresql://user@host/db
    data = "station"                       # products, normal pools, the token
    http = "127.0.0.1:8321"
    mqtt = "mqtt://127.0.0.1:1883/factory"  # optional: PREFIX/LINE/result per frame
    webhook = "http://127.0.0.1:9000/hook"  # optional
    opcua = "opc.tcp://127.0.0.1:4840"      # optional: nodes a PLC reads
    [[line]]
    name = "bottles"
    bundle = "bundles/packd"
    source = "folder:/srv/camera1"          # or video:FILE|URL|DEVICE|GSTREAMER, or api
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from packd_runtime.errors import PackdError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DEFAULT_DB = "sqlite:///station/records.db"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class LineConfig:
    """One inspection line: a bundle, its frame source, and how many frames may wait for it."""

    name: str
    bundle: Path
    source: str = "api"  # folder:DIR, video:URI, or api (station.submit)
    trusted_keys: tuple[Path, ...] = ()
    backend: str = "auto"  # auto, onnxruntime, tensorrt, or triton:http://HOST:PORT (triton:grpc://...)
    queue: int = 64  # frames waiting; when full, the oldest is dropped and counted
    batch: int = 0  # the most frames scored in one query-graph call; 0: the bundle's limit

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise PackdError(f"line name {self.name!r}: 1-64 letters, digits, '-' or '_', starting with a letter or "
                             "digit (it becomes a URL, an MQTT topic and an OPC UA node)")
        kind = self.source.split(":", 1)[0]
        if kind not in ("folder", "video", "api") or (kind != "api" and ":" not in self.source):
            raise PackdError(f"line {self.name}: source {self.source!r} must be folder:DIR, video:URI or api")
        if self.backend not in ("auto", "onnxruntime", "tensorrt") and not self.backend.startswith("triton:"):
            raise PackdError(f"line {self.name}: backend {self.backend!r} must be auto, onnxruntime, tensorrt or "
                             "triton:http://HOST:PORT")
        if not 1 <= self.queue <= 100_000 or not 0 <= self.batch <= 4096:
            raise PackdError(f"line {self.name}: queue must be 1-100000 and batch 0-4096")


@dataclass(frozen=True)
class StationConfig:
    """The station: its lines and what they share."""

    lines: tuple[LineConfig, ...]
    db: str = DEFAULT_DB
    data: Path = Path("station")
    http: str = "127.0.0.1:8321"
    token: str | None = None  # required to listen beyond loopback; generated into DATA/token when not given
    mqtt: str | None = None
    webhook: str | None = None
    opcua: str | None = None
    retention_days: float = 0.0  # 0: keep records of any age
    retention_mb: float = 0.0  # 0: no size limit
    drift_window: int = 200  # normal scores in the rolling window
    drift_limit: float = 4.0  # |z| of the window's mean against the calibration's that raises the alarm

    def __post_init__(self) -> None:
        if not self.lines:
            raise PackdError("a station needs at least one line")
        names = [line.name for line in self.lines]
        if len(set(names)) != len(names):
            raise PackdError(f"line names must differ: {names}")
        if not self.db.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise PackdError(f"--db {self.db!r}: give sqlite:///PATH or postgresql://USER@HOST/DB")
        host, _ = self.host_port
        if self.token is not None and len(self.token) < 16:
            raise PackdError("the token must be at least 16 characters (packd-station token makes one)")
        if not is_loopback(host) and not self.token:
            raise PackdError(f"listening on {host} (beyond this machine) requires --token: every request that "
                             "changes state must carry it")
        if self.drift_window < 10 or self.drift_limit <= 0:
            raise PackdError("drift_window must be at least 10 and drift_limit positive")

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.http.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
            raise PackdError(f"--http {self.http!r}: give HOST:PORT, e.g. 127.0.0.1:8321")
        return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(path: str | Path) -> StationConfig:
    """A TOML station file -> StationConfig; unknown keys are refused (a typo is never silently ignored)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackdError(f"station file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PackdError(f"cannot read station file {path}: {e}") from None
    base = Path(path).parent
    lines = raw.pop("line", [])
    if not isinstance(lines, list):
        raise PackdError(f"{path}: lines are [[line]] tables")
    known = {f.name for f in fields(StationConfig)} - {"lines"}
    unknown = set(raw) - known
    if unknown:
        raise PackdError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    line_keys = {f.name for f in fields(LineConfig)}
    parsed = []
    for entry in lines:
        bad = set(entry) - line_keys
        if bad or "name" not in entry or "bundle" not in entry:
            raise PackdError(f"{path}: a [[line]] needs name and bundle; unknown keys {sorted(bad)}")
        entry = dict(entry, bundle=base / entry["bundle"],
                     trusted_keys=tuple(base / k for k in entry.get("trusted_keys", ())))
        if entry.get("source", "").startswith("folder:"):
            entry["source"] = "folder:" + str(base / entry["source"][7:])
        parsed.append(LineConfig(**entry))
    if "data" in raw:
        raw["data"] = base / raw["data"]
    try:
        return StationConfig(lines=tuple(parsed), **raw)
    except TypeError as e:
        raise PackdError(f"{path}: {e}") from None
