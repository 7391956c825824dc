"""A line whose graphs run on a Triton server (the line model of `packd-export triton`), for lines sharing one GPU
server. The bundle's manifest here says which model the server must run (its fingerprint, checked by the client and
the server); frames travel to the server, where the product's prototypes live; the station keeps everything else
(records, threshold, product, supports for a restart)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from packd_runtime.bundle_format import fingerprint
from packd_runtime.detector import Result
from packd_runtime.errors import PackdError
from packd_runtime.manifest import read_manifest
from packd_runtime.signing import verify_signature


@dataclass(frozen=True)
class ServerBackend:
    name: str


class TritonLine:
    """The part of `Detector` a line uses, served by Triton: changeover (`prototypes`) and `detect` on this line's
    name. tritonclient's clients belong to the thread that made them (its HTTP client runs on gevent): each thread
    that calls gets its own, checked against the bundle's fingerprint like the first."""

    remote = True

    def __init__(self, bundle: Path, url: str, line: str, trusted_keys: list[Path] | None = None):
        from packd_runtime.triton.client import TritonDetector

        u = urlsplit(url)
        if u.scheme not in ("http", "grpc") or not u.hostname or not u.port:
            raise PackdError(f"line {line}: backend triton:{url} must be triton:http://HOST:PORT or "
                             "triton:grpc://HOST:PORT")
        self.manifest = read_manifest(bundle)
        if trusted_keys:
            verify_signature(bundle, self.manifest, trusted_keys)
        self.fingerprint = fingerprint(self.manifest)
        self._connect = lambda: TritonDetector(u.netloc, protocol=u.scheme, fingerprint=self.fingerprint)
        self._local = threading.local()
        self._client()  # the server and its model checked now, before the line starts
        self.line = line
        self.few_shot = self.manifest.few_shot
        self.frame_hw = self.manifest.frame_hw
        self.tiling = None
        self.max_batch = self.manifest.limits.batch
        self.max_shots = self.manifest.limits.shots
        self.threshold = None if self.few_shot else self.manifest.threshold
        self.current_prototypes = None  # on the server
        self.backend = ServerBackend(f"triton {url}")

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect()
        return client

    def prototypes(self, images: np.ndarray) -> None:
        """Changeover on the server: it makes and keeps this line's prototypes."""
        self._client().changeover(self.line, images)

    def detect(self, images: np.ndarray, threshold: float | None = None) -> Result:
        """Scores and maps from the server (the station applies its own threshold)."""
        result = self._client().detect(self.line, images)
        return Result(result.scores, result.maps, None)

    def close(self) -> None:
        """This thread's client (the others go with their threads)."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
