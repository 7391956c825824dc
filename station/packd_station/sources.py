"""Frame sources: a watched folder (files written by any camera software), OpenCV's VideoCapture (a video file,
USB, RTSP, a GStreamer pipeline), and the Python API (`Station.submit`). Each runs in a thread of its own and hands
frames to a callback that never blocks; a source that drops out is reopened with backoff and logged."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from packd_runtime.errors import PackdError
from packd_station.images import read

log = logging.getLogger("packd_station")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
SETTLE_S = 0.2  # a file unchanged this long is complete (cameras write files in more than one go)
BACKOFF_S = (0.5, 1, 2, 5, 10, 30)

OnFrame = Callable[[np.ndarray, str], None]  # (uint8 RGB frame, source name)
OnCorrupt = Callable[[str, str], None]  # (source name, why)


class Source:
    """A thread that reads frames until stopped."""

    def __init__(self, name: str, on_frame: OnFrame, on_corrupt: OnCorrupt):
        self.name, self.on_frame, self.on_corrupt = name, on_frame, on_corrupt
        self.stopping = threading.Event()
        self.state = "starting"
        self.thread = threading.Thread(target=self._run, name=f"source-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.run_once():
                    return
                failures = 0
            except Exception as e:  # noqa: BLE001 - a source that fails is logged and reopened, never fatal
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                self.state = f"down: {e}"[:200]
                log.warning("source %s dropped out (%s); reopening in %s s", self.name, e, delay)
                failures += 1
                self.stopping.wait(delay)

    def run_once(self) -> bool:
        """Read until stopped (True: the source has ended for good) or raise to be reopened."""
        raise NotImplementedError


class FolderSource(Source):
    """New image files in a folder, oldest first, each once (`seen`: names already recorded, after a restart)."""

    def __init__(self, folder: Path, on_frame: OnFrame, on_corrupt: OnCorrupt, seen: set[str], poll_s: float = 0.1):
        super().__init__(f"folder:{folder}", on_frame, on_corrupt)
        self.folder, self.seen, self.poll_s = Path(folder), set(seen), poll_s

    def run_once(self) -> bool:
        if not self.folder.is_dir():
            raise PackdError(f"{self.folder} is not a folder (unmounted?)")
        self.state = "watching"
        while not self.stopping.is_set():
            now = time.time()
            fresh = []
            with os.scandir(self.folder) as entries:
                for e in entries:
                    if e.name in self.seen or e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                        continue
                    if Path(e.name).suffix.lower() not in IMAGE_SUFFIXES:
                        continue
                    st = e.stat(follow_symlinks=False)
                    if now - st.st_mtime >= SETTLE_S:
                        fresh.append((st.st_mtime_ns, e.name))
            for _, name in sorted(fresh):
                self.seen.add(name)
                try:
                    frame = read(self.folder / name)
                except (OSError, PackdError) as e:
                    self.on_corrupt(name, str(e))
                    continue
                self.on_frame(frame, name)
            if not self.folder.is_dir():
                raise PackdError(f"{self.folder} went away")
            self.stopping.wait(self.poll_s)
        return True


class VideoSource(Source):
    """OpenCV VideoCapture: a video file ends at its last frame; a live stream (USB index, rtsp://, a GStreamer
    pipeline) that stops delivering is reopened with backoff."""

    def __init__(self, uri: str, on_frame: OnFrame, on_corrupt: OnCorrupt):
        super().__init__(f"video:{uri}", on_frame, on_corrupt)
        self.uri = uri
        self.is_file = Path(uri).is_file()
        self.frames = 0

    def _open(self) -> cv2.VideoCapture:
        if self.uri.isdigit():
            return cv2.VideoCapture(int(self.uri))
        if "!" in self.uri:  # a GStreamer pipeline ends in appsink
            return cv2.VideoCapture(self.uri, cv2.CAP_GSTREAMER)
        return cv2.VideoCapture(self.uri)

    def run_once(self) -> bool:
        cap = self._open()
        try:
            if not cap.isOpened():
                raise PackdError(f"cannot open {self.uri}")
            self.state = "streaming"
            while not self.stopping.is_set():
                ok, bgr = cap.read()
                if not ok:
                    if self.is_file:
                        self.state = "ended"
                        log.info("video %s ended after %d frames", self.uri, self.frames)
                        return True
                    raise PackdError(f"{self.uri} stopped delivering frames")
                self.frames += 1
                name = f"{Path(self.uri).name if self.is_file else self.uri}#{self.frames}"
                if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
                    self.on_corrupt(name, f"frame of shape {getattr(bgr, 'shape', None)}")
                    continue
                self.on_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), name)
            return True
        finally:
            cap.release()
