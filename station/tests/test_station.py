"""The station in-process: verdicts, changeover and calibration, the queue, folder and video sources, drift, and the
sinks against real servers (mosquitto, an HTTP receiver, an asyncua client)."""

import asyncio
import http.server
import json
import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from servers import free_port, wait_for
from toy_bundle import frames

from packd_runtime.errors import PackdError
from packd_station.config import LineConfig, StationConfig
from packd_station.drift import Calibration, Drift
from packd_station.frame_queue import Frame, FrameQueue
from packd_station.station import Station


def config(tmp_path: Path, bundle: Path, **kw) -> StationConfig:
    line = kw.pop("line", {})
    return StationConfig(lines=(LineConfig("l1", bundle, **line),), db=f"sqlite:///{tmp_path}/r.db",
                         data=tmp_path / "state", **kw)


def ready(station: Station, product: str = "p1") -> float:
    line = station.lines["l1"]
    line.changeover(list(frames(2, seed=1)), product, "tester")
    return line.calibrate(list(frames(8, seed=2)), "tester")["threshold"]


def recorded(station: Station, n: int, timeout: float = 10.0) -> list[dict]:
    return wait_for(lambda: (rows := station.records.results("l1", limit=1000)) and len(rows) >= n and rows,
                    timeout)


def test_frames_judged_by_the_product_with_overlays_for_defects(tmp_path, bundle):
    with Station(config(tmp_path, bundle)) as st:
        st.submit("l1", frames(1)[0], "before.png")
        assert recorded(st, 1)[0]["verdict"] == "uncalibrated"
        line = st.lines["l1"]
        with pytest.raises(PackdError, match="at least 5 normal images"):
            line.calibrate(list(frames(4, seed=2)), "tester")
        t = ready(st)
        st.submit("l1", frames(1, seed=7)[0], "good.png")
        st.submit("l1", frames(1, seed=8, low=0, high=256)[0], "bad.png")
        st.submit("l1", frames(1, seed=9, hw=(64, 64))[0], "big.png")  # any size: fitted to the bundle's 32 px
        rows = {r["source"]: r for r in recorded(st, 4)}
        assert rows["good.png"]["verdict"] == "ok" and rows["good.png"]["threshold"] == pytest.approx(t)
        assert rows["bad.png"]["verdict"] == "defect" and rows["bad.png"]["score"] > t
        assert rows["big.png"]["verdict"] == "ok"
        full = st.records.result(rows["bad.png"]["id"])
        assert full["overlay"][:3] == b"\xff\xd8\xff" and full["frame"][:4] == b"\x89PNG"
        assert st.records.result(rows["good.png"]["id"])["overlay"] is None
        assert rows["good.png"]["product"] == "p1" and rows["good.png"]["bundle"] == line.detector.fingerprint
        trail = st.records.audit_trail("l1")
        assert [a["action"] for a in trail] == ["calibrate", "changeover"]
        assert trail[0]["detail"]["threshold"] == pytest.approx(t) and trail[0]["who"] == "tester"
        with pytest.raises(PackdError, match="uint8"):
            st.submit("l1", frames(1)[0].astype(np.float32))
        with pytest.raises(PackdError, match="no line 'nope'"):
            st.submit("nope", frames(1)[0])


def test_full_queue_drops_the_oldest_and_counts_every_frame(tmp_path, bundle):
    q = FrameQueue(3)
    for i in range(10):
        q.put(Frame(np.zeros((1, 1, 3), np.uint8), str(i), 0.0))
    assert [f.source for f in q.take(8)] == ["7", "8", "9"] and q.take_dropped() == 7
    with Station(config(tmp_path, bundle, line={"queue": 2})) as st:
        ready(st)
        batch = frames(200, seed=3)
        for f in batch:
            st.submit("l1", f)
        line = st.lines["l1"]

        def settled():
            c = st.records.counters("l1")
            return c["recorded"] + c["dropped"] == line.received and not len(line.queue) and c

        c = wait_for(settled)
        assert line.received == 200 and c["dropped"] > 0 and c["recorded"] >= 2


def test_folder_source_skips_corrupt_and_half_written_files_and_never_repeats(tmp_path, bundle):
    camera = tmp_path / "camera"
    camera.mkdir()
    cfg = config(tmp_path, bundle, line={"source": f"folder:{camera}"})
    with Station(cfg) as st:
        ready(st)
        for i, f in enumerate(frames(3, seed=4)):
            cv2.imwrite(str(camera / f"{i}.png"), f[..., ::-1])
        (camera / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        (camera / "notes.txt").write_text("not an image")
        rows = recorded(st, 3)
        assert sorted(r["source"] for r in rows) == ["0.png", "1.png", "2.png"]
        assert wait_for(lambda: st.records.counters("l1")["corrupt"] == 1)
        assert st.status()[0]["source_state"] == "watching"
    with Station(cfg) as st:  # restarted: what was recorded is not inspected again
        cv2.imwrite(str(camera / "3.png"), frames(1, seed=5)[0])
        rows = recorded(st, 4)
        time.sleep(0.5)
        assert sorted(r["source"] for r in st.records.results("l1")) == ["0.png", "1.png", "2.png", "3.png"]


def test_video_file_source_reads_every_frame(tmp_path, bundle):
    video = tmp_path / "belt.avi"
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for f in frames(12, seed=6):
        out.write(f[..., ::-1])
    out.release()
    with Station(config(tmp_path, bundle, line={"source": f"video:{video}"})) as st:
        rows = recorded(st, 12)
        assert sorted(r["source"] for r in rows) == sorted(f"belt.avi#{i}" for i in range(1, 13))
        assert wait_for(lambda: st.status()[0]["source_state"] == "ended")


def test_a_source_that_drops_out_is_reopened(tmp_path, bundle):
    camera = tmp_path / "mount"
    camera.mkdir()
    with Station(config(tmp_path, bundle, line={"source": f"folder:{camera}"})) as st:
        camera.rmdir()
        assert wait_for(lambda: st.status()[0]["source_state"].startswith("down"))
        camera.mkdir()
        cv2.imwrite(str(camera / "back.png"), frames(1)[0])
        assert recorded(st, 1, timeout=15)[0]["source"] == "back.png"


def test_drift_statistic_and_alarm():
    d = Drift(window=50, limit=4.0)
    d.reset(Calibration(mean=10.0, std=1.0, n=10))
    assert not d.add([10.0] * 29) and d.z() is None  # too few scores to judge
    assert not d.add([10.2]) and abs(d.z()) < 1
    assert d.add([13.0] * 50) and d.alarm  # the window moved 3 std: z = 3 / sqrt(1/50 + 1/10) = 8.7
    assert d.z() == pytest.approx(3.0 / math.sqrt(1 / 50 + 1 / 10))
    s = d.state()
    assert s["alarm"] and s["q50"] == 13.0 and s["calibration"]["n"] == 10
    assert d.add([10.0] * 50) and not d.alarm  # back to normal: cleared


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook that fails its first `fail` requests with 503."""

    fail = 0
    got: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.fail > 0:
            Receiver.fail -= 1
            self.send_response(503)
        else:
            Receiver.got.append(json.loads(body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_webhook_retries_until_delivered_in_order(tmp_path, bundle):
    port = free_port()
    Receiver.fail, Receiver.got = 3, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Station(config(tmp_path, bundle, webhook=f"http://127.0.0.1:{port}/hook")) as st:
            ready(st)
            for i, f in enumerate(frames(5, seed=10)):
                st.submit("l1", f, f"{i}.png")
            wait_for(lambda: len(Receiver.got) == 5, timeout=20)
            assert [m["source"] for m in Receiver.got] == [f"{i}.png" for i in range(5)]
            assert set(Receiver.got[0]) >= {"source", "score", "threshold", "verdict", "line", "product"}
            wait_for(lambda: st.records.unsent() == {})  # the acknowledgement written after the answer
    finally:
        server.shutdown()


def subscriber(port: int, topic: str, got: list) -> mqtt.Client:
    """A durable MQTT subscriber (its QoS 1 messages wait in the broker while it is away)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{topic}", clean_session=False)
    c.on_connect = lambda client, *a: client.subscribe(topic, qos=1)
    c.on_message = lambda client, userdata, msg: got.append((msg.topic, json.loads(msg.payload)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def test_mqtt_results_survive_a_broker_outage(tmp_path, bundle, broker):
    broker.conf.write_text(broker.conf.read_text().replace("persistence false", f"persistence true\n"
                                                          f"persistence_location {tmp_path}/"))
    broker.stop()
    broker.start()
    got: list = []
    sub = subscriber(broker.port, "plant/#", got)
    try:
        with Station(config(tmp_path, bundle, mqtt=f"mqtt://127.0.0.1:{broker.port}/plant")) as st:
            ready(st)
            for i, f in enumerate(frames(3, seed=11)):
                st.submit("l1", f, f"a{i}.png")
            wait_for(lambda: len(got) == 3)
            broker.stop()
            for i, f in enumerate(frames(4, seed=12)):
                st.submit("l1", f, f"b{i}.png")
            recorded(st, 7)
            assert wait_for(lambda: st.records.unsent().get("mqtt") == 4)  # inspection went on
            broker.start()
            wait_for(lambda: len(got) >= 7, timeout=30)
            wait_for(lambda: st.records.unsent() == {}, timeout=30)  # acknowledged: at least once, maybe twice
        topics = {t for t, _ in got}
        assert topics == {"plant/l1/result"}
        sources = [m["source"] for _, m in got]
        assert sources[:3] == ["a0.png", "a1.png", "a2.png"] and set(sources[3:]) == {f"b{i}.png" for i in range(4)}
        m = got[0][1]
        assert m["verdict"] in ("ok", "defect") and isinstance(m["score"], float) and m["threshold"] > 0
    finally:
        sub.loop_stop()
        sub.disconnect()


@pytest.mark.slow
def test_opcua_nodes_show_the_latest_verdict_and_counts(tmp_path, bundle):
    from asyncua import Client

    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    with Station(config(tmp_path, bundle, opcua=url)) as st:
        t = ready(st, "bottle")
        for f in frames(3, seed=13):
            st.submit("l1", f, "ok.png")
        st.submit("l1", frames(1, seed=14, low=0, high=256)[0], "bad.png")
        recorded(st, 4)

        async def read() -> dict:
            async with Client(url) as client:
                ns = await client.get_namespace_index("urn:packd:station")
                line = await client.nodes.objects.get_child([f"{ns}:packd", f"{ns}:l1"])
                return {n: await (await line.get_child(f"{ns}:{n}")).read_value()
                        for n in ("verdict", "score", "threshold", "product", "ok", "defect", "alarm", "source")}

        values = wait_for(lambda: (v := asyncio.run(read()))["defect"] == 1 and v, timeout=15)
        assert values["verdict"] == "defect" and values["source"] == "bad.png" and values["ok"] == 3
        assert values["threshold"] == pytest.approx(t) and values["product"] == "bottle"
        assert values["alarm"] is False and values["score"] > t


@pytest.mark.slow
def test_drift_alarm_reaches_the_page_mqtt_opcua_and_the_audit(tmp_path, bundle, broker):
    """Good frames whose scores fall far below the calibration's (a camera gone dark, say) raise the alarm."""
    from asyncua import Client

    got: list = []
    sub = subscriber(broker.port, "plant/+/drift", got)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    try:
        cfg = config(tmp_path, bundle, mqtt=f"mqtt://127.0.0.1:{broker.port}/plant", opcua=url, drift_window=40)
        with Station(cfg) as st:
            line = st.lines["l1"]
            support = frames(2, seed=1)
            line.changeover(list(support), "p1", "tester")
            line.calibrate(list(frames(8, seed=2)), "tester")
            events: list = []
            st.listeners.append(lambda event, data: events.append((event, data)))
            for i in range(40):
                st.submit("l1", support[i % 2], f"{i}.png")  # copies of the supports: score 0
            wait_for(lambda: line.drift.alarm, timeout=15)
            state = line.drift.state()
            assert state["z"] < -4 and state["scores"] == 40 and state["mean"] == 0.0
            _, message = wait_for(lambda: got and got[-1], timeout=15)
            assert message["alarm"] is True and message["line"] == "l1" and message["z"] < -4  # when it rose
            wait_for(lambda: any(e == "line" and d["drift"]["alarm"] for e, d in events))  # the page is told

            async def alarm() -> bool:
                async with Client(url) as client:
                    ns = await client.get_namespace_index("urn:packd:station")
                    node = await client.nodes.objects.get_child([f"{ns}:packd", f"{ns}:l1", f"{ns}:alarm"])
                    return await node.read_value()

            assert wait_for(lambda: asyncio.run(alarm()), timeout=15) is True
            trail = wait_for(lambda: (a := st.records.audit_trail("l1")) and a[0]["action"] == "drift" and a)
            assert trail[0]["detail"]["alarm"] is True and trail[0]["who"] == "station"
            line.calibrate(list(frames(8, seed=2)), "tester")  # a new reference clears it
            assert not line.drift.alarm and line.drift.state()["scores"] == 0
    finally:
        sub.loop_stop()
        sub.disconnect()

