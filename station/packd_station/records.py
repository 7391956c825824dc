"""The record of every frame, operator verdict and action: one SQLAlchemy Core path for SQLite (WAL, the embedded
default) and PostgreSQL. What each sink has been sent lives here too: sinks take results in id order, so a sink's
outbox is every result above the highest id it acknowledged (one row per sink, not one per result and sink), and a
sink that is down, or a crash, loses nothing."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from packd_runtime.errors import PackdError

META = sa.MetaData()
RESULTS = sa.Table(
    "results", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("line", sa.String(64), nullable=False),
    sa.Column("source", sa.String(512), nullable=False),
    sa.Column("product", sa.String(128)),
    sa.Column("bundle", sa.String(64), nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("verdict", sa.String(16), nullable=False),  # ok, defect, uncalibrated
    sa.Column("overlay", sa.LargeBinary),  # JPEG, defects only
    sa.Column("frame", sa.LargeBinary),  # PNG, defects only: a confirmed false alarm joins the normal pool from it
    sa.Index("results_line_id", "line", "id"),
    sa.Index("results_time", "time"),
)
SENT = sa.Table(  # per sink: every result up to this id was acknowledged, in order
    "sent", META,
    sa.Column("sink", sa.String(32), primary_key=True),
    sa.Column("up_to", sa.Integer, nullable=False),
)
FEEDBACK = sa.Table(
    "feedback", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("line", sa.String(64), nullable=False),
    sa.Column("result_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # false_alarm, missed_defect
    sa.Column("who", sa.String(64), nullable=False),
    sa.UniqueConstraint("result_id", name="feedback_once"),
)
AUDIT = sa.Table(
    "audit", META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("line", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),  # changeover, calibrate, feedback, drift, settings, ...
    sa.Column("who", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON
)
COUNTS = sa.Table(  # frames that never became a result: dropped from a full queue, or corrupt
    "counts", META,
    sa.Column("line", sa.String(64), primary_key=True),
    sa.Column("dropped", sa.Integer, nullable=False, default=0),
    sa.Column("corrupt", sa.Integer, nullable=False, default=0),
)
FIELDS = ("id", "time", "line", "source", "product", "bundle", "score", "threshold", "verdict")
VERDICTS = ("ok", "defect", "uncalibrated")


@dataclass(frozen=True)
class Verdict:
    """One frame's result, before it is recorded."""

    time: float
    line: str
    source: str
    product: str | None
    bundle: str
    score: float | None
    threshold: float | None
    verdict: str
    overlay: bytes | None = None
    frame: bytes | None = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the page) never wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; a crash loses no committed WAL frame
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def engine_for(url: str) -> sa.Engine:
    """An engine for sqlite:///PATH (folders made, WAL) or postgresql://... (psycopg 3), tables created."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    try:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=4)
        META.create_all(engine)
    except ModuleNotFoundError as e:
        raise PackdError(f"--db {url.split('@')[-1]}: {e.name} is not installed: pip install "
                         "'packd-station[postgres]'") from None
    except sa.exc.SQLAlchemyError as e:
        raise PackdError(f"cannot open the records database: {str(e.orig if hasattr(e, 'orig') else e).strip()}"
                         "".splitlines()[0][:200]) from None
    return engine


class Records:
    """Results, outbox, feedback, audit and counts of one station's lines."""

    def __init__(self, url: str, sinks: Iterable[str] = ()):
        self.engine = engine_for(url)
        self.sinks = tuple(sinks)
        with self.engine.begin() as c:  # a sink new to this record starts from now, not from its whole history
            known = set(c.execute(sa.select(SENT.c.sink)).scalars())
            last = c.execute(sa.select(sa.func.coalesce(sa.func.max(RESULTS.c.id), 0))).scalar_one()
            for sink in set(self.sinks) - known:
                c.execute(SENT.insert().values(sink=sink, up_to=last))

    def add(self, verdicts: list[Verdict]) -> list[int]:
        """Record a batch of results in one transaction (every sink's outbox with it); their ids, in order."""
        if not verdicts:
            return []
        with self.engine.begin() as c:
            rows = c.execute(RESULTS.insert().returning(RESULTS.c.id, sort_by_parameter_order=True),
                             [v.__dict__ for v in verdicts])
            return [row.id for row in rows]

    def count(self, line: str, dropped: int = 0, corrupt: int = 0) -> None:
        """Add to a line's dropped and corrupt frame counts."""
        with self.engine.begin() as c:
            done = c.execute(COUNTS.update().where(COUNTS.c.line == line).values(
                dropped=COUNTS.c.dropped + dropped, corrupt=COUNTS.c.corrupt + corrupt)).rowcount
            if not done:
                c.execute(COUNTS.insert().values(line=line, dropped=dropped, corrupt=corrupt))

    def results(self, line: str, limit: int = 50, before: int | None = None, verdict: str | None = None,
                source: str | None = None) -> list[dict]:
        """The latest records of a line, newest first (with `before`, older than that id); `source`: a substring."""
        q = sa.select(*(RESULTS.c[f] for f in FIELDS), (RESULTS.c.overlay.is_not(None)).label("has_overlay"),
                      FEEDBACK.c.kind.label("feedback")).select_from(
            RESULTS.outerjoin(FEEDBACK, FEEDBACK.c.result_id == RESULTS.c.id)).where(RESULTS.c.line == line)
        if before is not None:
            q = q.where(RESULTS.c.id < before)
        if verdict is not None:
            q = q.where(RESULTS.c.verdict == verdict)
        if source:
            q = q.where(RESULTS.c.source.contains(source, autoescape=True))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q.order_by(RESULTS.c.id.desc()).limit(limit))]

    def result(self, result_id: int) -> dict | None:
        """One record with its overlay and frame bytes."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(RESULTS).where(RESULTS.c.id == result_id)).first()
        return dict(row._mapping) if row else None

    def sources(self, line: str) -> set[str]:
        """Every source a line has recorded (a folder source skips them after a restart)."""
        with self.engine.connect() as c:
            return set(c.execute(sa.select(RESULTS.c.source).where(RESULTS.c.line == line)).scalars())

    def pending(self, sink: str, limit: int = 100) -> list[dict]:
        """The oldest results a sink has not acknowledged, in id order."""
        mark = sa.select(SENT.c.up_to).where(SENT.c.sink == sink).scalar_subquery()
        q = sa.select(*(RESULTS.c[f] for f in FIELDS)).where(RESULTS.c.id > mark).order_by(RESULTS.c.id).limit(limit)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def delivered(self, sink: str, up_to: int) -> None:
        """A sink acknowledged every result up to this id."""
        with self.engine.begin() as c:
            c.execute(SENT.update().where(SENT.c.sink == sink, SENT.c.up_to < up_to).values(up_to=up_to))

    def unsent(self) -> dict[str, int]:
        """Results each sink has not acknowledged (sinks with none left out)."""
        q = sa.select(SENT.c.sink, sa.func.count(RESULTS.c.id)).join(RESULTS, RESULTS.c.id > SENT.c.up_to).where(
            SENT.c.sink.in_(self.sinks)).group_by(SENT.c.sink)
        with self.engine.connect() as c:
            return {sink: n for sink, n in c.execute(q).all() if n}

    def feedback(self, line: str, result_id: int, kind: str, who: str) -> dict:
        """An operator's verdict on a record of `line` (false_alarm on a defect, missed_defect on an ok), once;
        audited. Returns the record."""
        with self.engine.begin() as c:
            row = c.execute(sa.select(RESULTS.c.verdict, RESULTS.c.line).where(RESULTS.c.id == result_id)).first()
            if row is None or row.line != line:
                raise LookupError(f"line {line} has no record {result_id}")
            expected = {"false_alarm": "defect", "missed_defect": "ok"}[kind]
            if row.verdict != expected:
                raise ValueError(f"{kind.replace('_', ' ')} applies to a {expected} verdict; record {result_id} "
                                 f"is {row.verdict}")
            if c.execute(sa.select(FEEDBACK.c.id).where(FEEDBACK.c.result_id == result_id)).first():
                raise ValueError(f"record {result_id} already has the operator's verdict")
            now = time.time()
            c.execute(FEEDBACK.insert().values(time=now, line=line, result_id=result_id, kind=kind, who=who))
            c.execute(AUDIT.insert().values(time=now, line=line, action="feedback", who=who,
                                            detail=json.dumps({"result": result_id, "kind": kind})))
        return self.result(result_id)

    def audit(self, line: str, action: str, who: str, **detail: Any) -> None:
        with self.engine.begin() as c:
            c.execute(AUDIT.insert().values(time=time.time(), line=line, action=action, who=who,
                                            detail=json.dumps(detail, default=str)))

    def audit_trail(self, line: str, limit: int = 100) -> list[dict]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(AUDIT).where(AUDIT.c.line == line).order_by(AUDIT.c.id.desc()).limit(limit))
            return [dict(r._mapping, detail=json.loads(r.detail)) for r in rows]

    def counters(self, line: str) -> dict[str, int]:
        """Frames per verdict, dropped and corrupt; and the confusion counts the operator's verdicts imply (a
        verdict nobody marked is taken as right)."""
        with self.engine.connect() as c:
            per = dict(c.execute(sa.select(RESULTS.c.verdict, sa.func.count()).where(RESULTS.c.line == line)
                                 .group_by(RESULTS.c.verdict)).all())
            marks = dict(c.execute(sa.select(FEEDBACK.c.kind, sa.func.count()).where(FEEDBACK.c.line == line)
                                   .group_by(FEEDBACK.c.kind)).all())
            lost = c.execute(sa.select(COUNTS.c.dropped, COUNTS.c.corrupt).where(COUNTS.c.line == line)).first()
        ok, defect = per.get("ok", 0), per.get("defect", 0)
        fp, fn = marks.get("false_alarm", 0), marks.get("missed_defect", 0)
        return {"ok": ok, "defect": defect, "uncalibrated": per.get("uncalibrated", 0),
                "recorded": sum(per.values()), "dropped": lost.dropped if lost else 0,
                "corrupt": lost.corrupt if lost else 0,
                "true_defect": defect - fp, "false_alarm": fp, "missed_defect": fn, "true_ok": ok - fn}

    def prune(self, max_age_s: float = 0.0, max_bytes: float = 0.0) -> int:
        """Retention: delete records older than `max_age_s`, then the oldest until the records' bytes (overlays,
        frames and about 200 bytes a row) are within `max_bytes`; returns how many went (unsent ones too: a sink down
        longer than the retention loses the oldest). Feedback and audit stay."""
        gone = 0
        with self.engine.begin() as c:
            if max_age_s > 0:
                gone += c.execute(RESULTS.delete().where(RESULTS.c.time < time.time() - max_age_s)).rowcount
            if max_bytes > 0:
                size = sa.func.coalesce(sa.func.length(RESULTS.c.overlay), 0) + sa.func.coalesce(
                    sa.func.length(RESULTS.c.frame), 0) + 200
                total = c.execute(sa.select(sa.func.coalesce(sa.func.sum(size), 0))).scalar_one()
                while total > max_bytes:
                    oldest = c.execute(sa.select(RESULTS.c.id, size.label("n")).order_by(RESULTS.c.id).limit(500)).all()
                    if not oldest:
                        break
                    cut, freed = [], 0
                    for row in oldest:
                        if total - freed <= max_bytes:
                            break
                        cut.append(row.id)
                        freed += row.n
                    c.execute(RESULTS.delete().where(RESULTS.c.id.in_(cut)))
                    gone += len(cut)
                    total -= freed
        return gone

    def csv_rows(self, line: str) -> Iterator[str]:
        """A line's records as CSV text, oldest first, streamed in chunks."""
        buf = io.StringIO()
        out = csv.writer(buf)
        out.writerow(FIELDS)
        last = 0
        with self.engine.connect() as c:
            while True:
                rows = c.execute(sa.select(*(RESULTS.c[f] for f in FIELDS)).where(
                    RESULTS.c.line == line, RESULTS.c.id > last).order_by(RESULTS.c.id).limit(5000)).all()
                out.writerows(rows)
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
                if not rows:
                    return
                last = rows[-1].id

    def close(self) -> None:
        self.engine.dispose()
