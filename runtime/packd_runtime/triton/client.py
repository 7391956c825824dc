"""A client for the line model of a Triton server, with `Detector`'s verbs per production line.

    client = TritonDetector("localhost:8000", fingerprint=manifest_fingerprint)   # or protocol="grpc"
    client.changeover("line-3", support_frames)       # once per product: prototypes stay in the server
    client.calibrate("line-3", normal_frames)         # optional: the line's threshold
    result = client.detect("line-3", frames)          # frames travel alone

Needs `pip install 'packd-runtime[triton]'` (tritonclient); no torch. Refuses a server whose model is
not the one the caller expects (the bundle fingerprint in the model's config), and the server refuses
requests that expect another model.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from packd_runtime.bundle_format import MAPS, SCORES
from packd_runtime.detector import Result
from packd_runtime.errors import PackdError
from packd_runtime.triton.line_model import ACTION, FINGERPRINT, FRAMES, LABELS, LINE, LINE_OUTPUTS, STAGE, THRESHOLD

MODEL = "packd"


def _client_module(protocol: str):
    try:
        if protocol == "http":
            import tritonclient.http as module
        elif protocol == "grpc":
            import tritonclient.grpc as module
        else:
            raise PackdError(f"protocol must be http or grpc, got {protocol!r}")
    except ImportError:
        raise PackdError("the Triton client needs tritonclient: pip install 'packd-runtime[triton]'") from None
    return module


class TritonDetector:
    """One line model on one Triton server. tritonclient's clients are not made for sharing between
    threads: give each camera thread its own TritonDetector (they share the server's line state)."""

    def __init__(self, url: str, *, protocol: str = "http", model: str = MODEL, fingerprint: str | None = None,
                 timeout_s: float = 60.0):
        self._module = _client_module(protocol)
        self.protocol, self.model = protocol, model
        kwargs = {"network_timeout": timeout_s} if protocol == "http" else {}
        self._client = self._module.InferenceServerClient(url, **kwargs)
        try:
            config = (self._client.get_model_config(model, as_json=True)["config"] if protocol == "grpc"
                      else self._client.get_model_config(model))
        except Exception as e:  # tritonclient raises its own InferenceServerException, or socket errors
            raise PackdError(f"no model {model!r} at {url}: {e}") from None
        params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        self.fingerprint = params.get(FINGERPRINT)
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise PackdError(f"the server at {url} runs model {self.fingerprint}, not {fingerprint}: refused")
        dims = {i["name"]: [int(d) for d in i["dims"]] for i in config["input"]}
        self.frame_shape = tuple(dims[FRAMES])
        self.max_batch = int(config.get("max_batch_size", 0))

    def _call(self, line: str, action: str, frames: Any) -> Result:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != self.frame_shape or not len(frames):
            raise PackdError(f"frames must be uint8 (N, {', '.join(map(str, self.frame_shape))}), "
                             f"got {frames.dtype} {frames.shape}")
        step = self.max_batch or len(frames)
        chunks = [frames[i:i + step] for i in range(0, len(frames), step)]
        if action == "detect" or len(chunks) == 1:
            parts = [self._infer(line, action, c) for c in chunks]
        else:  # one changeover or calibration, however large: all but the last part staged on the server first
            token = uuid.uuid4().hex
            for c in chunks[:-1]:
                self._infer(line, "stage", c, token)
            parts = [self._infer(line, action, chunks[-1], token)]
        scores = np.concatenate([p[SCORES].ravel() for p in parts])
        maps = np.concatenate([p[MAPS] for p in parts])
        labels = np.concatenate([p[LABELS].ravel() for p in parts])
        threshold = float(parts[-1][THRESHOLD].ravel()[0])
        if np.isnan(threshold):  # the line has no threshold yet (a few-shot changeover, not yet calibrated)
            return Result(scores, maps, None)
        return Result(scores, maps, threshold, labels)

    def _infer(self, line: str, action: str, frames: np.ndarray, token: str | None = None) -> dict[str, np.ndarray]:
        m, n = self._module, len(frames)
        names = np.full((n, 1), line.encode(), dtype=object)
        actions = np.full((n, 1), action.encode(), dtype=object)
        inputs = [m.InferInput(LINE, [n, 1], "BYTES"), m.InferInput(ACTION, [n, 1], "BYTES"),
                  m.InferInput(FRAMES, list(frames.shape), "UINT8")]
        for tensor, data in zip(inputs, (names, actions, frames)):
            tensor.set_data_from_numpy(data)
        outputs = [m.InferRequestedOutput(o) for o in LINE_OUTPUTS]
        try:
            result = self._client.infer(self.model, inputs, outputs=outputs,
                                        parameters={FINGERPRINT: self.fingerprint, **({STAGE: token} if token else {})})
        except Exception as e:  # the server's error, one line
            message = e.message() if callable(getattr(e, "message", None)) else str(e)
            raise PackdError(f"{action} on line {line!r}: {message}") from None
        fp = result.as_numpy(FINGERPRINT).ravel()[0]
        if (fp.decode() if isinstance(fp, bytes) else str(fp)) != self.fingerprint:
            raise PackdError("the server answered with another model's fingerprint: refused")
        return {k: result.as_numpy(k) for k in LINE_OUTPUTS if k != FINGERPRINT}

    def changeover(self, line: str, supports: Any) -> float | None:
        """Product changeover for `line`: the server makes and keeps its prototypes; returns the line's threshold,
        None for few-shot kinds until `calibrate` (a new product is never judged by another's threshold)."""
        return self._call(line, "changeover", supports).threshold

    prototypes = changeover

    def calibrate(self, line: str, normal_frames: Any) -> float:
        """Set `line`'s threshold from normal frames only (mean + 3 std of their scores); returns it."""
        return self._call(line, "calibrate", normal_frames).threshold

    def detect(self, line: str, frames: Any) -> Result:
        """Scores, maps and labels of frames (N,H,W,3) or one frame (H,W,3) with `line`'s prototypes."""
        return self._call(line, "detect", frames)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
