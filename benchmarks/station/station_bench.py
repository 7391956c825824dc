"""The line station's cost and capacity on the demo's bundles, in the torch-free station (results in
benchmarks/results/station.{json,md}):

- overhead per frame: a PNG frame decoded, queued, inspected, recorded (SQLite WAL) and published to a real
  mosquitto, one frame at a time, against `Detector.detect` alone at batch 1 on the same frames;
- frames per second sustained from a watched folder and from a video file (MJPG AVI);
- what micro-batching gains when frames queue (batch 1 against the bundle's limit);
- a soak: frames submitted faster than they are inspected, resident memory sampled, database size per 1,000
  frames, and every frame accounted for (received = recorded + dropped, counted).

    .venv/bin/python benchmarks/station/station_bench.py            # after `make demo`; --soak 10000 by default
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import typer

from packd_runtime import Detector
from packd_station.config import LineConfig, StationConfig
from packd_station.frame_queue import Frame, FrameQueue
from packd_station.images import decode
from packd_station.records import Records, Verdict
from packd_station.sinks.mqtt import MqttSink
from packd_station.station import Station

app = typer.Typer(add_completion=False)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen | None, str | None]:
    broker = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if broker is None:
        return None, None
    port = free_port()
    (folder / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([broker, "-c", str(folder / "m.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, f"mqtt://127.0.0.1:{port}/bench"


def frames_of(data: Path, hw: tuple[int, int]) -> list[bytes]:
    """PNG bytes of one category's normal frames, at the bundle's frame size."""
    files = sorted(data.glob("train/good/*.png"))
    out = []
    for f in files:
        image = cv2.imread(str(f))
        out.append(cv2.imencode(".png", cv2.resize(image, (hw[1], hw[0])))[1].tobytes())
    return out


class Counter:
    """Counts recorded frames through the station's listener; `wait(n)` until n are in."""

    def __init__(self, station: Station):
        self.n, self.cond = 0, threading.Condition()
        station.listeners.append(self)

    def __call__(self, event: str, data: dict) -> None:
        if event == "result":
            with self.cond:
                self.n += 1
                self.cond.notify_all()

    def wait(self, n: int, timeout: float = 600) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.n >= n, timeout):
                raise TimeoutError(f"{self.n} of {n} frames recorded")


def station(bundle: Path, folder: Path, mqtt: str | None, name: str, setup: list[bytes], start: bool = True,
            **line) -> Station:
    """A one-line station, changed over (4 frames) and calibrated (16 others) before its source starts."""
    cfg = StationConfig(lines=(LineConfig("bench", bundle, **line),), db=f"sqlite:///{folder}/{name}.db",
                        data=folder / f"state-{name}", mqtt=mqtt)
    st = Station(cfg)
    bench = st.lines["bench"]
    if bench.detector.few_shot:
        bench.changeover([decode(p, "s") for p in setup[:4]], "bench", "bench")
    bench.calibrate([decode(p, "n") for p in setup[4:20]], "bench")
    return st.start() if start else st


def sustained(st: Station, frames: int) -> float:
    """Frames per second from starting the station's source until `frames` are recorded."""
    t = time.perf_counter()
    st.start()
    while st.records.counters("bench")["recorded"] < frames:
        time.sleep(0.02)
    fps = frames / (time.perf_counter() - t)
    st.close()
    return fps


@app.command()
def main(bundle: Path = Path("runs/demo/bundle_knn"), data: Path = Path("runs/demo/data/tiles"), frames: int = 300,
         stream: int = 1000, soak: int = 10_000, rounds: int = 5,
         out: Path = Path("benchmarks/results/station.json"), render: bool = False) -> None:
    """Run every measurement and write OUT (JSON) and its Markdown table beside it; --render: only the table."""
    if render:
        out.with_suffix(".md").write_text(markdown(json.loads(out.read_text())))
        return
    tmp = Path(tempfile.mkdtemp(prefix="packd-station-bench-"))
    broker, mqtt = start_broker(tmp)
    results: dict = {"bundle": str(bundle), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                     "python": platform.python_version(), "mqtt": mqtt is not None}
    try:
        with Detector.open(bundle) as det:
            hw, batch = det.frame_hw, det.max_batch
        everything = frames_of(data, hw)
        setup, pngs = everything[:20], everything[20:]  # changeover + calibration; the rest flows past
        if len(pngs) < 10:
            raise SystemExit(f"{data} has {len(pngs) + 20} normal training frames: at least 30 are needed")
        images = [decode(p, "f") for p in pngs]
        shots = np.stack([decode(p, "s") for p in setup[:4]])
        results.update(frame_hw=list(hw), max_batch=batch)

        # the overhead per frame: a camera thread decodes PNG frames and submits them at batch 1; the station
        # queues, inspects, records (SQLite WAL) and publishes (mosquitto) each; its time per frame against detect
        # alone, measured right before it, in `rounds` alternating rounds (this machine's speed drifts); once more
        # without MQTT, to see what publishing costs
        with Detector.open(bundle) as det:
            if det.few_shot:
                det.prototypes(shots)
            for image in images[:20]:
                det.detect(image)
            for label, broker_url in (("", mqtt), ("_without_mqtt", None)):
                rows = []
                for r in range(rounds):
                    t = time.perf_counter()
                    for i in range(frames):
                        det.detect(images[i % len(images)])
                    detect_ms = 1e3 * (time.perf_counter() - t) / frames
                    st = station(bundle, tmp, broker_url, f"overhead{label}{r}", setup, batch=1, queue=frames + 20)
                    count = Counter(st)
                    for i in range(20):
                        st.submit("bench", decode(pngs[i % len(pngs)], "f"), f"warm{i}.png")
                    count.wait(20)
                    t = time.perf_counter()
                    for i in range(frames):
                        st.submit("bench", decode(pngs[i % len(pngs)], "f"), f"{i}.png")
                    count.wait(frames + 20)
                    station_ms = 1e3 * (time.perf_counter() - t) / frames
                    assert st.records.counters("bench")["dropped"] == 0
                    st.close()
                    rows.append({"detect_ms": detect_ms, "station_ms": station_ms,
                                 "overhead_pct": 100 * (station_ms - detect_ms) / detect_ms})
                results[f"overhead{label}"] = {"rounds": rows, "median_overhead_pct": float(np.median(
                    [r["overhead_pct"] for r in rows])), "median_overhead_ms": float(np.median(
                        [r["station_ms"] - r["detect_ms"] for r in rows]))}

        # the same costs one by one, in CPU time (steadier than wall time here): PNG decode, one verdict recorded
        # in its own transaction, one result published with its acknowledgement awaited, a frame handed across
        # threads through the queue
        cpu = {"decode": lambda i: decode(pngs[i % len(pngs)], "f")}
        records = Records(f"sqlite:///{tmp}/components.db", ["mqtt"])
        verdict = Verdict(time=time.time(), line="bench", source="0.png", product="p", bundle="b", score=1.0,
                          threshold=2.0, verdict="ok")
        cpu["record"] = lambda i: records.add([verdict])
        if mqtt:
            sink = MqttSink(mqtt, client_id="bench-components")
            sink.connected.wait(10)
            row = {"id": 1, **{k: getattr(verdict, k) for k in ("time", "line", "source", "product", "bundle", "score",
                                                                "threshold", "verdict")}}
            cpu["publish"] = lambda i: sink.send_many([row])
        handoff, taken, stop = FrameQueue(4), threading.Event(), threading.Event()
        frame = Frame(images[0], "0.png", 0.0)

        def taker() -> None:
            while not stop.is_set():
                if handoff.take(1, timeout=0.2):
                    taken.set()

        threading.Thread(target=taker, daemon=True).start()

        def across(i: int) -> None:
            taken.clear()
            handoff.put(frame)
            taken.wait(1.0)
        cpu["queue handoff to the inspector"] = across
        results["component_cpu_ms"] = {}
        for name, step in cpu.items():
            for i in range(20):
                step(i)
            t = time.process_time()
            for i in range(frames):
                step(i)
            results["component_cpu_ms"][name] = 1e3 * (time.process_time() - t) / frames
        with Detector.open(bundle) as det:
            if det.few_shot:
                det.prototypes(shots)
            t = time.process_time()
            for i in range(frames):
                det.detect(images[i % len(images)])
            results["component_cpu_ms"]["detect (ONNX Runtime, all its threads)"] = \
                1e3 * (time.process_time() - t) / frames
        stop.set()
        if mqtt:
            sink.close()
        records.close()

        # latency: one frame at a time, from submit to recorded (what a PLC waits for)
        st = station(bundle, tmp, mqtt, "latency", setup, batch=1)
        count = Counter(st)
        latency = []
        for i in range(frames + 20):
            t = time.perf_counter()
            st.submit("bench", decode(pngs[i % len(pngs)], "f"), f"{i}.png")
            count.wait(i + 1)
            if i >= 20:
                latency.append(1e3 * (time.perf_counter() - t))
        st.close()
        results["latency_ms_median"] = float(np.median(latency))
        results["latency_ms_p99"] = float(np.percentile(latency, 99))

        # sustained: a folder of frames, and a video file
        camera = tmp / "camera"
        camera.mkdir()
        for i in range(stream):
            (camera / f"{i:06d}.png").write_bytes(pngs[i % len(pngs)])
        time.sleep(0.3)
        results["folder_fps"] = sustained(station(bundle, tmp, mqtt, "folder", setup, start=False,
                                                  source=f"folder:{camera}", queue=stream), stream)
        video = tmp / "belt.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (hw[1], hw[0]))
        for i in range(stream):
            writer.write(cv2.cvtColor(images[i % len(images)], cv2.COLOR_RGB2BGR))
        writer.release()
        results["video_fps"] = sustained(station(bundle, tmp, mqtt, "video", setup, start=False,
                                                 source=f"video:{video}", queue=stream), stream)

        # micro-batching: the same queued frames, one per call against the bundle's limit
        for b in (1, batch):
            st = station(bundle, tmp, None, f"batch{b}", setup, batch=b, queue=stream)
            decoded = [images[i % len(images)] for i in range(stream)]
            count = Counter(st)
            t = time.perf_counter()
            for i, image in enumerate(decoded):
                st.submit("bench", image, f"{i}")
            count.wait(stream)
            results[f"queued_fps_batch{b}"] = stream / (time.perf_counter() - t)
            st.close()

        # soak: a camera at about the rate the line sustains, in bursts of 32 frames that overrun its 64-frame
        # queue now and then; memory every 1,000 frames, database size, every frame accounted for
        st = station(bundle, tmp, mqtt, "soak", setup, queue=64)
        line = st.lines["bench"]
        rss = []
        rate = results[f"queued_fps_batch{batch}"]
        start = time.perf_counter()
        for i in range(soak):
            st.submit("bench", images[i % len(images)], f"{i}.png")
            if i % 32 == 31:
                time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
            if i % 1000 == 999:
                rss.append(rss_mib())
        while len(line.queue):
            time.sleep(0.05)
        time.sleep(0.5)
        c = st.records.counters("bench")
        results["soak"] = {
            "frames": soak, "received": line.received, "recorded": c["recorded"], "dropped": c["dropped"],
            "corrupt": c["corrupt"], "accounted": line.received == c["recorded"] + c["dropped"] + c["corrupt"],
            "seconds": time.perf_counter() - start, "rss_mib_every_1000": [round(r, 1) for r in rss],
            "rss_growth_mib_after_first_1000": round(rss[-1] - rss[0], 1),
            "db_kib_per_1000_recorded": round(sum(p.stat().st_size for p in tmp.glob("soak.db*")) / 1024
                                              / max(c["recorded"], 1) * 1000, 1),
            "defects": c["defect"]}
        st.close()
    finally:
        if broker is not None:
            broker.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    """The results as the docs show them."""
    o, n, c, s = r["overhead"], r["overhead_without_mqtt"], r["component_cpu_ms"], r["soak"]

    def spread(rows: list[dict]) -> str:
        pct = [x["overhead_pct"] for x in rows]
        return f"rounds {min(pct):+.0f} to {max(pct):+.0f} %"

    detect = float(np.median([x["detect_ms"] for x in o["rounds"]]))
    detect_cpu = c["detect (ONNX Runtime, all its threads)"]
    parts = ("decode", "record", "publish", "queue handoff to the inspector")
    own = sum(c[k] for k in parts)
    b, rss = r["max_batch"], s["rss_mib_every_1000"]
    batched = r[f"queued_fps_batch{b}"]
    rows = [
        ("`Detector.detect` alone, batch 1", f"{detect:.2f} ms per frame (median of {len(o['rounds'])} rounds)"),
        ("station at batch 1: PNG decode, queue, inspect, record, publish",
         f"{detect + o['median_overhead_ms']:.2f} ms per frame: overhead {o['median_overhead_ms']:.2f} ms, "
         f"{o['median_overhead_pct']:.0f} % ({spread(o['rounds'])})"),
        ("the same without MQTT", f"overhead {n['median_overhead_ms']:.2f} ms, {n['median_overhead_pct']:.0f} % "
                                  f"({spread(n['rounds'])})"),
        ("the station's own work, CPU time per frame",
         " + ".join(f"{k.split()[0]} {c[k]:.2f}" for k in parts) + f" = {own:.2f} ms, against {detect_cpu:.2f} ms "
         f"of CPU for detect (both cores): {100 * own / detect_cpu:.1f} %"),
        ("latency, submit to recorded, one frame at a time",
         f"median {r['latency_ms_median']:.1f} ms, 99th percentile {r['latency_ms_p99']:.1f} ms"),
        ("sustained from a watched folder (PNG files)", f"{r['folder_fps']:.0f} frames/s"),
        ("sustained from a video file (MJPG AVI)", f"{r['video_fps']:.0f} frames/s"),
        ("queued frames, one per query-graph call", f"{r['queued_fps_batch1']:.0f} frames/s"),
        (f"queued frames, micro-batches up to {b}",
         f"{batched:.0f} frames/s ({batched / r['queued_fps_batch1'] - 1:+.0%})"),
        (f"soak: {s['frames']:,} frames in bursts of 32 at about that rate, 64-frame queue",
         f"{s['recorded']:,} recorded + {s['dropped']:,} dropped (counted) + {s['corrupt']} corrupt = "
         f"{s['received']:,} received: " + ("every frame accounted for" if s["accounted"] else "FRAMES MISSING")),
        ("soak: resident memory every 1,000 frames",
         f"{min(rss):.0f} to {max(rss):.0f} MiB; last minus first {s['rss_growth_mib_after_first_1000']:+.1f} MiB"),
        ("soak: database size", f"{s['db_kib_per_1000_recorded']:.0f} KiB per 1,000 records ({s['defects']} defects; "
                                "a defect's overlay and frame add tens of KiB)"),
    ]
    head = (f"`benchmarks/station/station_bench.py` on the demo's `{Path(r['bundle']).name}` bundle "
            f"({r['frame_hw'][0]} px frames, batch limit {b}), {r['machine']}, Python {r['python']}, ONNX Runtime on "
            f"the CPU, SQLite records, {'a real mosquitto broker' if r['mqtt'] else 'no MQTT broker'}. Wall times "
            "are medians over alternating rounds, with their spread: this machine is shared and its speed drifts.\n\n")
    return head + "| what | result |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


if __name__ == "__main__":
    app()
