"""`packd-station serve` as an operator and a PLC meet it: the acceptance interface (changeover, calibrate, results,
MQTT messages), the token, upload limits, bad images, feedback, CSV, and a restart after kill -9."""

import csv
import io
import json
import subprocess
import time
import zlib
from pathlib import Path

import cv2
import pytest
from servers import StationProcess, call, multipart, station_command, wait_for
from test_station import Receiver, subscriber
from toy_bundle import frames

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


SUPPORT = frames(2, seed=1)  # the product's k good images; copies of them score 0, well under any threshold


def png(frame) -> bytes:
    return cv2.imencode(".png", frame[..., ::-1])[1].tobytes()


def upload(url: str, images, auth=AUTH, **fields) -> tuple[int, object]:
    body, kind = multipart([(f"{i}.png", png(f)) for i, f in enumerate(images)], fields)
    return call(url, "POST", body, {**auth, "Content-Type": kind})


def drop(camera: Path, images, prefix: str) -> list[str]:
    names = []
    for i, f in enumerate(images):
        name = f"{prefix}{i:03d}.png"
        tmp = camera / f".{name}"
        tmp.write_bytes(png(f))
        tmp.rename(camera / name)  # as camera software should: complete files appear at once
        names.append(name)
    return names


@pytest.fixture()
def served(tmp_path, bundle, broker):
    camera = tmp_path / "camera"
    camera.mkdir()
    got: list = []
    sub = subscriber(broker.port, "factory/#", got)
    station = StationProcess(["--bundle", str(bundle), "--line", "bottles", "--source", f"folder:{camera}",
                              "--db", f"sqlite:///{tmp_path}/records.db", "--mqtt",
                              f"mqtt://127.0.0.1:{broker.port}/factory", "--token", TOKEN, "--data",
                              str(tmp_path / "state")], tmp_path).start()
    yield station, camera, got
    station.stop()
    sub.loop_stop()
    sub.disconnect()


def test_changeover_calibrate_verdicts_over_http_and_mqtt(served):
    station, camera, got = served
    url = f"{station.url}/api/lines/bottles"
    status, body = upload(f"{url}/changeover", frames(2, seed=1), auth={}, product="cola")
    assert status == 401 and "Bearer" in body["error"]
    status, _ = upload(f"{url}/changeover", frames(2, seed=1), auth={"Authorization": "Bearer wrong-token-xxxxxxx"})
    assert status == 401
    assert call(f"{station.url}/api/lines")[1][0]["product"] is None  # nothing changed
    assert call(f"{station.url}/api/lines")[1][0]["counts"]["recorded"] == 0

    status, body = upload(f"{url}/changeover", SUPPORT, product="cola")
    assert status == 200 and body["product"] == "cola" and body["shots"] == 2
    status, body = upload(f"{url}/calibrate", frames(3, seed=2))
    assert status == 400 and "at least 5 normal images" in body["error"]
    status, body = upload(f"{url}/calibrate", frames(8, seed=2))
    assert status == 200 and body["threshold"] > 0 and body["images"] == 8
    threshold = body["threshold"]

    names = drop(camera, [*SUPPORT, *SUPPORT], "good") + drop(camera, frames(1, seed=4, low=0, high=256), "bad")
    wait_for(lambda: len(got) == 5, timeout=20)
    messages = {m["source"]: m for t, m in got if t == "factory/bottles/result"}
    assert set(messages) == set(names)
    assert messages["bad000.png"]["verdict"] == "defect" and messages["good000.png"]["verdict"] == "ok"
    assert all(m["threshold"] == pytest.approx(threshold) for m in messages.values())

    status, rows = call(f"{url}/results?limit=3")
    assert status == 200 and len(rows) == 3 and rows[0]["id"] > rows[1]["id"] > rows[2]["id"]
    for row in rows:
        m = messages[row["source"]]
        assert (row["score"], row["verdict"]) == (m["score"], m["verdict"])
    bad = call(f"{url}/results?verdict=defect")[1][0]
    status, image = call(f"{station.url}/api/results/{bad['id']}/overlay.jpg")
    assert status == 200 and image[:3] == b"\xff\xd8\xff"

    status, body = call(f"{url}/feedback", "POST", json.dumps({"result": bad["id"], "kind": "false_alarm"}).encode(),
                        {**AUTH, "X-Operator": "ann"})
    assert status == 200 and body["pooled"]
    status, body = call(f"{url}/feedback", "POST", json.dumps({"result": bad["id"], "kind": "false_alarm"}).encode(),
                        AUTH)
    assert status == 409
    counts = call(f"{station.url}/api/lines")[1][0]["counts"]
    assert counts["false_alarm"] == 1 and counts["true_defect"] == 0 and counts["true_ok"] == 4
    status, body = upload(f"{url}/calibrate", [], pool="1")  # again, from the pool the false alarm joined
    assert status == 200 and body["images"] == 2 + 8 + 1  # supports, calibration frames, the false alarm
    assert call(f"{station.url}/api/lines")[1][0]["pool"] == 11  # not added twice
    trail = call(f"{url}/audit")[1]
    assert [a["action"] for a in trail] == ["calibrate", "feedback", "calibrate", "changeover"]
    assert trail[1]["who"] == "ann"
    status, text = call(f"{url}/results.csv")
    rows = list(csv.DictReader(io.StringIO(text.decode())))
    assert status == 200 and [r["source"] for r in rows] == sorted(names, key=lambda n: int(messages[n]["id"]))


def test_bad_uploads_get_one_clear_error_and_change_nothing(served):
    station, _, _ = served
    url = f"{station.url}/api/lines/bottles"
    body, kind = multipart([("x.png", b"\x89PNG\r\n\x1a\nnope")], {"product": "p"})
    status, out = call(f"{url}/changeover", "POST", body, {**AUTH, "Content-Type": kind})
    assert status == 400 and "x.png" in out["error"]
    # a decompression bomb: a 30000 x 30000 PNG (900 MP) of a few kilobytes
    raw = zlib.compress(b"\x00" * (30001 * 10), 9)
    ihdr = (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    chunk = lambda t, d: len(d).to_bytes(4, "big") + t + d + zlib.crc32(t + d).to_bytes(4, "big")  # noqa: E731
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    body, kind = multipart([("bomb.png", bomb)], {"product": "p"})
    status, out = call(f"{url}/changeover", "POST", body, {**AUTH, "Content-Type": kind})
    assert status == 400 and "bomb.png" in out["error"]
    status, out = call(f"{url}/changeover", "POST", b"", {**AUTH, "Content-Type": "multipart/form-data; boundary=x",
                                                          "Content-Length": str(300 << 20)})
    assert status == 413
    status, out = upload(f"{url}/changeover", frames(2), product="../../etc")
    assert status == 400 and "product name" in out["error"]
    status, out = upload(f"{url}/changeover", frames(5), product="p")
    assert status == 400 and "at most 3" in out["error"]
    assert call(f"{station.url}/api/lines/nope/results")[0] == 404
    assert call(f"{url}/results?limit=x")[0] == 400
    assert call(f"{station.url}/api/lines")[1][0]["product"] is None


def test_listening_beyond_loopback_needs_a_token(tmp_path, bundle):
    out = subprocess.run([*station_command(), "serve", "--bundle", str(bundle), "--http", "0.0.0.0:8999", "--db",
                          f"sqlite:///{tmp_path}/r.db"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: listening on 0.0.0.0 (beyond this machine) requires --token: every request that changes state must "
        "carry it"]
    assert not (tmp_path / "r.db").exists()


@pytest.mark.slow
def test_restart_after_kill_keeps_product_records_feedback_and_unsent_results(tmp_path, bundle):
    import http.server
    import threading

    from servers import free_port
    camera = tmp_path / "camera"
    camera.mkdir()
    hook = free_port()  # nothing listens there until after the restart
    args = ["--bundle", str(bundle), "--line", "l1", "--source", f"folder:{camera}", "--db",
            f"sqlite:///{tmp_path}/records.db", "--webhook", f"http://127.0.0.1:{hook}/in", "--token", TOKEN,
            "--data", str(tmp_path / "state")]
    station = StationProcess(args, tmp_path).start()
    url = f"{station.url}/api/lines/l1"
    assert upload(f"{url}/changeover", SUPPORT, product="cola")[0] == 200
    threshold = upload(f"{url}/calibrate", frames(8, seed=2))[1]["threshold"]
    first = drop(camera, [*SUPPORT, SUPPORT[0]], "a") + drop(camera, frames(1, seed=4, low=0, high=256), "bad")
    wait_for(lambda: len(call(f"{url}/results")[1]) == 4, timeout=20)
    bad = call(f"{url}/results?verdict=defect")[1][0]["id"]
    assert call(f"{url}/feedback", "POST", json.dumps({"result": bad, "kind": "false_alarm"}).encode(), AUTH)[0] == 200
    station.kill()  # kill -9: no clean shutdown

    Receiver.fail, Receiver.got = 0, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", hook), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        station = StationProcess(args, tmp_path).start()
        url = f"{station.url}/api/lines/l1"
        line = call(f"{station.url}/api/lines")[1][0]
        assert line["product"] == "cola" and line["threshold"] == pytest.approx(threshold)
        assert line["counts"]["false_alarm"] == 1 and line["counts"]["recorded"] == 4
        wait_for(lambda: len(Receiver.got) == 4, timeout=20)  # sent from the outbox after the restart
        assert sorted(m["source"] for m in Receiver.got) == sorted(first)
        drop(camera, SUPPORT[:1], "after")
        rows = wait_for(lambda: len(r := call(f"{url}/results")[1]) == 5 and r, timeout=20)
        assert rows[0]["source"] == "after000.png" and rows[0]["verdict"] == "ok"  # judged, no changeover needed
        time.sleep(0.5)
        assert len(call(f"{url}/results")[1]) == 5  # the files seen before the crash are not inspected again
    finally:
        station.stop()
        server.shutdown()


@pytest.mark.slow
def test_a_line_with_trusted_keys_serves_only_a_bundle_signed_by_them(tmp_path, bundle):
    import shutil

    from packd_runtime.signing import generate_keys, sign_bundle
    private, public = generate_keys(tmp_path / "keys" / "line")
    signed = tmp_path / "signed"
    shutil.copytree(bundle, signed)
    sign_bundle(signed, private)
    common = ["--line", "l1", "--db", f"sqlite:///{tmp_path}/r.db", "--data", str(tmp_path / "state"), "--key",
              str(public)]
    out = subprocess.run([*station_command(), "serve", "--bundle", str(bundle), *common], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and "error:" in out.stderr and "sign" in out.stderr.lower()
    assert out.stderr.strip().splitlines() == [f"error: {bundle} is not signed (manifest.sig missing): refused, "
                                               "because trusted keys were given"]
    assert not (tmp_path / "r.db").exists() and not (tmp_path / "state").exists()  # checked before anything written
    station = StationProcess(["--bundle", str(signed), *common], tmp_path).start()
    try:
        assert call(f"{station.url}/api/lines")[1][0]["bundle"]
    finally:
        station.stop()
