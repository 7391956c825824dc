"""Records on SQLite and on a real PostgreSQL server, through the one SQLAlchemy Core path."""

import csv
import io
import time

import pytest

from packd_station.records import Records, Verdict


def verdict(i: int, v: str = "ok", overlay: bytes | None = None, line: str = "l1", t: float | None = None):
    return Verdict(time=t or time.time(), line=line, source=f"f{i}.png", product="p", bundle="abc",
                   score=float(i), threshold=10.0, verdict=v, overlay=overlay, frame=overlay)


def test_results_newest_first_search_and_outbox(db_url):
    Records(db_url).add([verdict(99, line="old")])  # recorded before the sinks were configured: never sent
    r = Records(db_url, sinks=["mqtt", "webhook"])
    ids = r.add([verdict(i, "defect" if i == 3 else "ok", b"x" if i == 3 else None) for i in range(5)])
    r.add([verdict(9, line="l2")])
    assert ids == sorted(ids) and len(set(ids)) == 5
    rows = r.results("l1", limit=3)
    assert [row["source"] for row in rows] == ["f4.png", "f3.png", "f2.png"]
    assert rows[1]["has_overlay"] and not rows[0]["has_overlay"]
    assert [row["source"] for row in r.results("l1", before=ids[2])] == ["f1.png", "f0.png"]
    assert [row["source"] for row in r.results("l1", verdict="defect")] == ["f3.png"]
    assert [row["source"] for row in r.results("l1", source="f1")] == ["f1.png"]
    assert r.results("l1", source="%") == []  # a LIKE wildcard is a character, not a pattern
    assert r.unsent() == {"mqtt": 6, "webhook": 6}
    assert [p["id"] for p in r.pending("mqtt", limit=2)] == ids[:2]
    r.delivered("mqtt", ids[1])
    assert r.unsent() == {"mqtt": 4, "webhook": 6}
    assert r.pending("mqtt")[0]["id"] == ids[2]
    r.delivered("mqtt", ids[0])  # an older acknowledgement never moves it back
    assert r.unsent() == {"mqtt": 4, "webhook": 6}
    r.close()
    r = Records(db_url, sinks=["mqtt", "webhook"])  # reopened (a restart): the same outboxes
    assert r.unsent() == {"mqtt": 4, "webhook": 6}
    r.close()


def test_feedback_counts_and_audit(db_url):
    r = Records(db_url)
    ok, bad, bad2 = r.add([verdict(1), verdict(20, "defect", b"png"), verdict(30, "defect", b"png")])
    r.feedback("l1", bad, "false_alarm", "ann")
    r.feedback("l1", ok, "missed_defect", "bob")
    with pytest.raises(ValueError, match="already has"):
        r.feedback("l1", bad, "false_alarm", "ann")
    with pytest.raises(ValueError, match="false alarm applies to a defect"):
        r.feedback("l1", ok, "false_alarm", "ann")
    with pytest.raises(LookupError):
        r.feedback("l2", bad2, "false_alarm", "ann")  # another line's record
    r.count("l1", dropped=2)
    r.count("l1", dropped=1, corrupt=1)
    c = r.counters("l1")
    assert c == {"ok": 1, "defect": 2, "uncalibrated": 0, "recorded": 3, "dropped": 3, "corrupt": 1,
                 "true_defect": 1, "false_alarm": 1, "missed_defect": 1, "true_ok": 0}
    trail = r.audit_trail("l1")
    assert [(a["action"], a["who"], a["detail"]["kind"]) for a in trail] == [
        ("feedback", "bob", "missed_defect"), ("feedback", "ann", "false_alarm")]
    assert {row["id"]: row["feedback"] for row in r.results("l1")}[bad] == "false_alarm"
    r.close()


def test_retention_by_age_and_size_and_csv(db_url):
    r = Records(db_url, sinks=["mqtt"])
    old = time.time() - 3 * 86400
    r.add([verdict(i, t=old) for i in range(3)])
    r.add([verdict(10 + i, "defect", b"z" * 1000) for i in range(4)])
    assert r.prune(max_age_s=2 * 86400) == 3
    assert r.counters("l1")["recorded"] == 4
    assert r.unsent() == {"mqtt": 4}  # the outbox is the results themselves
    assert r.prune(max_bytes=2 * 2200 + 100) == 2  # each defect: 1000 + 1000 bytes + 200
    assert [row["source"] for row in r.results("l1")] == ["f13.png", "f12.png"]
    assert r.unsent() == {"mqtt": 2}
    rows = list(csv.DictReader(io.StringIO("".join(r.csv_rows("l1")))))
    assert [row["source"] for row in rows] == ["f12.png", "f13.png"]
    assert rows[0]["verdict"] == "defect" and float(rows[0]["score"]) == 12.0 and float(rows[0]["threshold"]) == 10
    r.close()
