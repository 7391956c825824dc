"""Delivery from the outbox: one thread per sink sends the oldest unacknowledged results in order; while its sink
is down it waits with backoff and inspection goes on, so results pile up in the database, never in memory."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from packd_station.records import Records

log = logging.getLogger("packd_station")
BACKOFF_S = (0.5, 1, 2, 5, 10)


class Sink(Protocol):
    name: str

    def send(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Delivery:
    """Sends `sink`'s outbox; `wake()` after new results; `state` is "up", or "down: why"."""

    def __init__(self, sink: Sink, records: Records):
        self.sink, self.records = sink, records
        self.state = "up"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                batch = self.records.pending(self.sink.name)
            except Exception as e:  # noqa: BLE001 - the database itself away: try again
                log.warning("outbox of %s unreadable: %s", self.sink.name, e)
                self._stop.wait(BACKOFF_S[-1])
                continue
            if not batch:
                self._wake.wait(1.0)
                continue
            sent = []
            try:
                for record in batch:
                    self.sink.send(record)
                    sent.append(record["id"])
                if self.state != "up":
                    log.info("sink %s is back: delivering its unsent results", self.sink.name)
                self.state, failures = "up", 0
            except Exception as e:  # noqa: BLE001 - any failure leaves the rest in the outbox
                if self.state == "up":
                    log.warning("sink %s is down (%s): its results wait in the database", self.sink.name, e)
                self.state = f"down: {e}"[:200]
                self._stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
            finally:
                if sent:
                    self.records.delivered(self.sink.name, sent)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.sink.close()
