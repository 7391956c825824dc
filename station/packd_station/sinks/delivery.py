"""Delivery: one thread per sink sends results in order. While the sink keeps up, results come straight from the
recorder in memory (already committed, and in the outbox); after an outage or a restart, or when it falls behind,
from the outbox in the database until that is empty. Inspection never waits for a sink, and a sink that is down
only makes the outbox grow, in the database, never in memory."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Protocol

from packd_station.records import Records

log = logging.getLogger("packd_station")
BACKOFF_S = (0.5, 1, 2, 5, 10)
MEMORY = 1024  # results held for a live sink; more, and it catches up from the database
MARK_EVERY_S = 0.25


class Undelivered(Exception):
    """A sink took the first `sent` results of a batch, in order, and not the rest (why: the message)."""

    def __init__(self, sent: int, why: str):
        super().__init__(why)
        self.sent = sent


class Sink(Protocol):
    name: str

    def send_many(self, records: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class Delivery:
    """Sends `sink`'s results; `offer(records)` after each recorded batch; `state` is "up", or "down: why"."""

    def __init__(self, sink: Sink, records: Records):
        self.sink, self.records = sink, records
        self.state = "up"
        self._live: deque[dict[str, Any]] = deque()
        self._from_db = True  # until the outbox has been read empty once
        self._sent_up_to = 0  # the highest result id sent from the database: memory skips what it already sent
        self._acked = self._marked = 0  # the highest result id acknowledged, and written as such
        self._marked_at = 0.0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)
        self._thread.start()

    def offer(self, records: list[dict[str, Any]]) -> None:
        with self._cond:
            if len(self._live) + len(records) > MEMORY:
                self._live.clear()
                self._from_db = True  # behind: the outbox has them all
            else:
                self._live.extend(records)
            self._cond.notify()

    def _next(self) -> tuple[list[dict[str, Any]], bool]:
        """The next results to send and whether they came from the database; waits for some."""
        with self._cond:
            if not self._from_db:
                if not self._live:
                    self._cond.wait(1.0)
                batch = [r for r in self._live if r["id"] > self._sent_up_to]
                self._live.clear()
                return batch, False
            self._live.clear()  # the outbox holds these too
        batch = self.records.pending(self.sink.name, limit=500)
        if not batch:
            with self._cond:
                self._from_db = False
            return [], True
        return batch, True

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                batch, from_db = self._next()
            except Exception as e:  # noqa: BLE001 - the database itself away: try again
                log.warning("outbox of %s unreadable: %s", self.sink.name, e)
                self._stop.wait(BACKOFF_S[-1])
                continue
            if not batch:
                self._delivered([])  # idle: the last acknowledgement written
                continue
            try:
                self.sink.send_many(batch)
            except Exception as e:  # noqa: BLE001 - any failure leaves what was not taken in the outbox
                self._delivered(batch[:e.sent] if isinstance(e, Undelivered) else [])
                if self.state == "up":
                    log.warning("sink %s is down (%s): its results wait in the database", self.sink.name, e)
                self.state = f"down: {e}"[:200]
                with self._cond:
                    self._from_db = True
                self._stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
                continue
            if self.state != "up":
                log.info("sink %s is back: its unsent results delivered from the database", self.sink.name)
            self.state, failures = "up", 0
            if from_db:
                self._sent_up_to = max(self._sent_up_to, batch[-1]["id"])
            self._delivered(batch, now=from_db)

    def _delivered(self, batch: list[dict[str, Any]], now: bool = True) -> None:
        """Acknowledged up to the batch's last id: written at once after an outage, else at most every MARK_EVERY_S
        (a crash in between sends those again: at least once, never lost)."""
        if batch:
            self._acked = batch[-1]["id"]
        if self._acked <= self._marked or not now and time.monotonic() - self._marked_at < MARK_EVERY_S:
            return
        try:
            self.records.delivered(self.sink.name, self._acked)
            self._marked, self._marked_at = self._acked, time.monotonic()
        except Exception as e:  # noqa: BLE001 - still unacknowledged: sent again later
            log.warning("sink %s: its progress not recorded: %s", self.sink.name, e)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self._thread.join(timeout=10)
        self._delivered([])
        self.sink.close()
