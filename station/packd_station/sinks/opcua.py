"""OPC UA (asyncua): a server whose nodes a PLC or SCADA reads, one object per line under Objects/packd:

    verdict (String), score, threshold (Double, NaN while none), product (String), ok, defect, uncalibrated,
    dropped (Int64 counters), alarm (Boolean: drift), drift_z (Double), source (String), result_id (Int64)

Nodes are read-only to clients. The server runs its own event loop in a thread; updates from the inspection thread
are coalesced (the PLC sees the latest state, never a queue)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from typing import Any
from urllib.parse import urlsplit

from asyncua import Server, ua

from packd_runtime.errors import PackdError

NAMESPACE = "urn:packd:station"
NODES: dict[str, tuple[Any, ua.VariantType]] = {
    "verdict": ("", ua.VariantType.String), "score": (math.nan, ua.VariantType.Double),
    "threshold": (math.nan, ua.VariantType.Double), "product": ("", ua.VariantType.String),
    "source": ("", ua.VariantType.String), "result_id": (0, ua.VariantType.Int64),
    "ok": (0, ua.VariantType.Int64), "defect": (0, ua.VariantType.Int64), "uncalibrated": (0, ua.VariantType.Int64),
    "dropped": (0, ua.VariantType.Int64), "alarm": (False, ua.VariantType.Boolean),
    "drift_z": (math.nan, ua.VariantType.Double),
}
log = logging.getLogger("packd_station")
for noisy in ("asyncua", "asyncua.server"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


class OpcUaNodes:
    """`opc.tcp://HOST:PORT`: started at once; `update(line, **values)` from any thread."""

    def __init__(self, url: str, lines: list[str]):
        u = urlsplit(url)
        if u.scheme != "opc.tcp" or not u.hostname or not u.port:
            raise PackdError(f"--opcua {url!r}: give opc.tcp://HOST:PORT")
        self.url, self.lines = url, lines
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._nodes: dict[str, dict[str, Any]] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._flush_pending = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="opcua", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            future.result(timeout=30)
        except Exception as e:  # noqa: BLE001 - a port in use, a bad address: one line
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise PackdError(f"cannot start the OPC UA server at {url}: {e}") from None

    async def _start(self) -> None:
        self.server = Server()
        await self.server.init()
        self.server.set_endpoint(self.url)
        self.server.set_server_name("packd station")
        self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await self.server.register_namespace(NAMESPACE)
        root = await self.server.nodes.objects.add_folder(idx, "packd")
        for line in self.lines:
            obj = await root.add_object(idx, line)
            self._nodes[line] = {name: await obj.add_variable(idx, name, ua.Variant(value, vtype))
                                 for name, (value, vtype) in NODES.items()}
        await self.server.start()

    def update(self, line: str, **values: Any) -> None:
        """Set some of a line's nodes (None: NaN for doubles, '' for strings); returns at once."""
        with self._lock:
            self._latest.setdefault(line, {}).update(values)
            if self._flush_pending:
                return
            self._flush_pending = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._flush()))

    async def _flush(self) -> None:
        with self._lock:
            latest, self._latest, self._flush_pending = self._latest, {}, False
        for line, values in latest.items():
            for name, value in values.items():
                default, vtype = NODES[name]
                value = default if value is None else (float(value) if vtype == ua.VariantType.Double else value)
                try:
                    await self._nodes[line][name].write_value(ua.Variant(value, vtype))
                except Exception as e:  # noqa: BLE001 - a bad value never stops inspection
                    log.warning("OPC UA node %s/%s not updated: %s", line, name, e)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
