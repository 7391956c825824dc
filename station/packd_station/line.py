"""One inspection line: frames in through a bounded queue, the query graph in micro-batches, each verdict recorded
(with its overlay for a defect) and told to the page, the sinks, OPC UA and the drift monitor; product changeover and
calibration under one lock, so a frame is always judged by one product's prototypes and threshold."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from packd_runtime.detector import Detector
from packd_runtime.errors import PackdError
from packd_runtime.threshold import check_normal_count, score_range, threshold_from_normal_scores
from packd_station.config import NAME, LineConfig
from packd_station.drift import Calibration, Drift
from packd_station.frame_queue import Frame, FrameQueue
from packd_station.images import decode, encode, fit, overlay
from packd_station.product import Product, ProductStore, check_name
from packd_station.records import Records, Verdict

log = logging.getLogger("packd_station")
RECENT = 32  # frames kept in memory per line for a changeover from recent OK frames

OnRecorded = Callable[["Line", list[dict[str, Any]]], None]


class Line:
    def __init__(self, config: LineConfig, detector: Detector, records: Records, state: Path, *,
                 drift: Drift, on_recorded: OnRecorded):
        self.config, self.detector, self.records = config, detector, records
        self.name = config.name
        self.remote = getattr(detector, "remote", False)  # served by Triton: the prototypes live on the server
        self.store = ProductStore(state)
        self.drift = drift
        self.on_recorded = on_recorded
        self.queue = FrameQueue(config.queue)
        self.batch = min(config.batch or detector.max_batch, detector.max_batch)
        self.received = 0  # since start: frames that reached the queue
        self.recent: OrderedDict[int, np.ndarray] = OrderedDict()  # result id -> frame, verdicts other than defect
        self._recent_lock = threading.Lock()  # the recorder adds, the page's requests read
        self.source: Any = None  # its Source, None for the Python API
        self._lock = threading.RLock()  # changeover / calibration against inspection
        self._stop = threading.Event()
        self.product = self._restore()
        self._judged: queue.Queue = queue.Queue(maxsize=64)  # inspector -> recorder; full: the inspector waits
        self._thread = threading.Thread(target=self._run, name=f"line-{self.name}", daemon=True)
        self._recorder = threading.Thread(target=self._record_loop, name=f"record-{self.name}", daemon=True)

    # ---- state ---------------------------------------------------------------------------------------------

    def _restore(self) -> Product | None:
        """The product saved before a stop or a crash, when it belongs to this bundle; per-category bundles
        start with their category and the bundle's own threshold."""
        det = self.detector
        saved = self.store.load(det.fingerprint, det.few_shot and not self.remote)
        if saved is not None:
            product, prototypes = saved
            if prototypes is not None:
                det.use(prototypes)
            elif self.remote and det.few_shot:  # the server may have restarted too: change over again
                det.prototypes(np.stack(self.store.supports(det.frame_hw)))
            self.drift.reset(product.calibration)
            log.info("line %s: product %s restored (threshold %s)", self.name, product.name, product.threshold)
            return product
        if det.few_shot:
            return None
        categories = det.manifest.checkpoint.get("categories") or []
        name = categories[0] if len(categories) == 1 and NAME.fullmatch(str(categories[0])) else det.manifest.kind
        return Product(name, det.fingerprint, det.threshold, None, time.time())

    @property
    def threshold(self) -> float | None:
        return self.product.threshold if self.product is not None else None

    # ---- frames in -----------------------------------------------------------------------------------------

    def submit(self, frame: np.ndarray, source: str) -> None:
        """Queue a frame (any size: fitted to the bundle's); never waits."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise PackdError(f"line {self.name}: a frame must be a uint8 (H, W, 3) RGB array, got "
                             f"{getattr(frame, 'dtype', type(frame).__name__)} {getattr(frame, 'shape', '')}")
        self.received += 1
        self.queue.put(Frame(fit(frame, self.detector.frame_hw), source, time.time()))

    def corrupt(self, source: str, why: str) -> None:
        self.received += 1
        log.warning("line %s: corrupt frame %s skipped: %s", self.name, source, why)
        self.records.count(self.name, corrupt=1)

    # ---- inspection ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._recorder.start()
        self._thread.start()

    def _run(self) -> None:
        """The inspector: frames from the queue, the query graph, verdicts (and overlays) handed to the recorder."""
        while not self._stop.is_set() or len(self.queue):  # a stop finishes what is queued
            frames = self.queue.take(self.batch)
            dropped = self.queue.take_dropped()
            if dropped:
                self.records.count(self.name, dropped=dropped)
            if frames:
                try:
                    self._judged.put(self.judge(frames))
                except Exception:  # noqa: BLE001 - logged with its traceback; the line goes on
                    log.exception("line %s: %d frames not inspected", self.name, len(frames))
                    self.records.count(self.name, dropped=len(frames))
        self._judged.put(None)

    def judge(self, frames: list[Frame]) -> list[tuple[Frame, Verdict]]:
        """Score and judge a batch: one query-graph call, an overlay for each defect."""
        with self._lock:
            product, det = self.product, self.detector
            scores = maps = None
            if product is not None:
                result = det.detect(np.stack([f.image for f in frames]), threshold=product.threshold
                                    if not det.few_shot else None)
                scores, maps = result.scores, result.maps
        t = product.threshold if product is not None else None
        judged = []
        for i, f in enumerate(frames):
            score = None if scores is None else float(scores[i])
            verdict = "uncalibrated" if score is None or t is None else ("defect" if score > t else "ok")
            pictures = {}
            if verdict == "defect":
                pictures = {"overlay": encode(overlay(f.image, maps[i], score, t), ".jpg"), "frame": encode(f.image)}
            judged.append((f, Verdict(time=f.time, line=self.name, source=f.source, product=product and product.name,
                                      bundle=det.fingerprint, score=score, threshold=t, verdict=verdict, **pictures)))
        return judged

    def _record_loop(self) -> None:
        """The recorder: whatever the inspector has judged since the last round, in one transaction, then told."""
        done = False
        while not done:
            judged = self._judged.get()
            if judged is None:
                return
            while True:  # everything waiting joins this transaction
                try:
                    more = self._judged.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                judged += more
            try:
                self.record(judged)
            except Exception:  # noqa: BLE001 - the database away: these frames are counted as dropped
                log.exception("line %s: %d verdicts not recorded", self.name, len(judged))
                try:
                    self.records.count(self.name, dropped=len(judged))
                except Exception:  # noqa: BLE001
                    log.exception("line %s: the drop not counted either", self.name)

    def record(self, judged: list[tuple[Frame, Verdict]]) -> list[dict[str, Any]]:
        """Record verdicts (one transaction; queued for every sink), then tell the page, sinks, OPC UA and drift."""
        ids = self.records.add([v for _, v in judged])
        with self._recent_lock:
            for i, (f, v) in zip(ids, judged):
                if v.verdict != "defect":
                    self.recent[i] = f.image
            while len(self.recent) > RECENT:
                self.recent.popitem(last=False)
        out = [dict(id=i, time=v.time, line=v.line, source=v.source, product=v.product, bundle=v.bundle,
                    score=v.score, threshold=v.threshold, verdict=v.verdict, has_overlay=v.overlay is not None,
                    feedback=None) for i, (_, v) in zip(ids, judged)]
        ok_scores = [v.score for _, v in judged if v.verdict == "ok"]
        if ok_scores and self.drift.add(ok_scores):  # the alarm switched: recorded before anyone is told
            state = self.drift.state()
            log.warning("line %s: drift alarm %s (z %.2f, limit %g)", self.name, "ON" if state["alarm"] else "off",
                        state["z"] or 0.0, state["limit"])
            self.records.audit(self.name, "drift", "station", **state)
        self.on_recorded(self, out)
        return out

    # ---- operator actions ----------------------------------------------------------------------------------

    def changeover(self, frames: list[np.ndarray], product: str, who: str, pool: bool = True) -> Product:
        """A new product from k normal frames: the support graph once; not calibrated until `calibrate`. The frames
        join the product's normal pool (`pool`; not when they came from it)."""
        det = self.detector
        if not det.few_shot:
            raise PackdError(f"this {det.manifest.kind} bundle is per category: it has no changeover (calibrate it, "
                             "or export a bundle of the new category)")
        check_name(product)
        frames = [fit(f, det.frame_hw) for f in frames]
        with self._lock:
            prototypes = det.prototypes(np.stack(frames))
            new = Product(product, det.fingerprint, None, None, time.time())
            self.store.save(new, prototypes)
            self.store.keep_supports(frames)
            self.product = new
            self.drift.reset(None)
        if pool:
            self.store.add_to_pool(product, frames, "support")
        self.records.audit(self.name, "changeover", who, product=product, shots=len(frames),
                           prototypes=None if prototypes is None else int(prototypes.arrays[0].shape[-2]))
        log.info("line %s: changeover to %s from %d images by %s", self.name, product, len(frames), who)
        return new

    def calibrate(self, frames: list[np.ndarray], who: str, pool: bool = True) -> dict[str, Any]:
        """The product's threshold from normal frames (mean + 3 std of their scores, at least 5), and the drift
        monitor's reference; the frames join the normal pool (`pool`)."""
        det = self.detector
        frames = [fit(f, det.frame_hw) for f in frames]
        check_normal_count(len(frames))
        with self._lock:
            if self.product is None:
                raise PackdError(f"line {self.name} has no product yet: change over first (k good images)")
            scores = det.detect(np.stack(frames)).scores
            t = threshold_from_normal_scores(scores)
            basis = score_range(scores)
            prototypes = det.current_prototypes
            if prototypes is not None:
                prototypes = replace(prototypes, threshold=t, normal_scores=(basis["min"], basis["max"]))
                det.use(prototypes)
            calibration = Calibration.of(scores)
            self.product = replace(self.product, threshold=t, calibration=calibration, changed=time.time())
            self.store.save(self.product, prototypes)
            self.drift.reset(calibration)
        if pool:
            self.store.add_to_pool(self.product.name, frames, "calibration")
        self.records.audit(self.name, "calibrate", who, product=self.product.name, threshold=t, **basis)
        log.info("line %s: %s calibrated by %s: threshold %.6g from %d images", self.name, self.product.name, who,
                 t, len(frames))
        return {"threshold": t, "product": self.product.name, **basis, "mean": calibration.mean,
                "std": calibration.std}

    def pool_frames(self) -> list[np.ndarray]:
        if self.product is None:
            raise PackdError(f"line {self.name} has no product yet")
        return self.store.pool_frames(self.product.name, self.detector.frame_hw)

    def recent_frames(self, ids: list[int]) -> list[np.ndarray]:
        with self._recent_lock:
            missing = [i for i in ids if i not in self.recent]
            if missing:
                raise PackdError(f"frames {missing} are not among line {self.name}'s {RECENT} most recent frames "
                                 "(defects excluded)")
            return [self.recent[i] for i in ids]

    def feedback(self, result_id: int, kind: str, who: str) -> dict[str, Any]:
        """An operator's verdict; a confirmed false alarm's frame joins the product's normal pool."""
        if kind not in ("false_alarm", "missed_defect"):
            raise PackdError(f"feedback kind {kind!r}: false_alarm or missed_defect")
        record = self.records.feedback(self.name, result_id, kind, who)
        pooled = False
        if kind == "false_alarm" and record["frame"] and record["product"]:
            frame = fit(decode(record["frame"], "recorded frame"), self.detector.frame_hw)
            self.store.add_to_pool(record["product"], [frame], f"false-alarm-{result_id}")
            pooled = True
        return {"result": result_id, "kind": kind, "pooled": pooled}

    def status(self) -> dict[str, Any]:
        p = self.product
        return {"name": self.name, "source": self.config.source,
                "source_state": self.source.state if self.source else "api",
                "bundle": self.detector.fingerprint, "kind": self.detector.manifest.kind,
                "few_shot": self.detector.few_shot, "backend": self.detector.backend.name,
                "product": p.name if p else None, "threshold": self.threshold, "queued": len(self.queue),
                "received": self.received, "batch": self.batch, "frame_hw": list(self.detector.frame_hw),
                "max_shots": self.detector.max_shots if self.detector.few_shot else None,
                "pool": len(list(self.store.pool(p.name).glob("*.png"))) if p and self.store.pool(p.name).is_dir()
                else 0, "recent_ok": self._recent_ids(), "drift": self.drift.state()}

    def _recent_ids(self) -> list[int]:
        with self._recent_lock:
            return list(self.recent)[::-1]

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self._recorder.is_alive():
            self._recorder.join(timeout=30)
