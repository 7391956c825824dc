"""The line model Triton's Python backend runs (`packd-export triton` writes the repository around it).

Each production line's state stays in this process: its prototypes (few-shot kinds) and its
threshold. A changeover sends the line's k support frames once; after it, frames travel alone and
are scored with that line's prototypes. Requests carry per item a line name, an action and a frame:
- `changeover`: the frames are the line's supports; its prototypes are replaced, its threshold reset
  to the bundle's; the supports' own scores come back;
- `calibrate`: the frames are normal; the line's threshold becomes mean + 3 std of their scores;
- `detect`: the frames are scored with the line's prototypes and threshold.
- `stage`: the frames are kept for the same line's next `changeover` or `calibrate` that carries the same
  `stage` request parameter, so a changeover or calibration larger than the server's batch is one operation
  (the client sends all but the last part as `stage`).
Requests of one line that Triton's dynamic batcher hands over together are scored in one call. A
bad request (unknown line, unknown action, a line name that is not UTF-8, a line or action that changes
within one request, another bundle's fingerprint) gets its own error and nothing else changes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from packd_runtime.bundle_format import MAPS, SCORES
from packd_runtime.detector import Detector, Prototypes, Result
from packd_runtime.errors import PackdError
from packd_runtime.threshold import check_normal_count, score_range, threshold_from_normal_scores

ACTIONS = ("detect", "changeover", "calibrate", "stage")
STAGE = "stage"  # request parameter: the token that ties staged frames to their changeover or calibration
STAGE_LIMIT = 4096  # frames one staged operation may hold
LINE, ACTION, FRAMES = "line", "action", "frames"  # the line model's inputs, per item
LABELS, THRESHOLD, FINGERPRINT = "labels", "threshold", "fingerprint"  # its outputs besides the query graph's
LINE_OUTPUTS = (SCORES, MAPS, LABELS, THRESHOLD, FINGERPRINT)
TRUSTED_KEYS = "trusted_keys"  # config parameter: comma-separated public key files the bundle must be signed by


@dataclass
class Line:
    prototypes: Prototypes | None
    threshold: float | None  # None after a few-shot changeover, until the line is calibrated


class LineServer:
    """Per-line state around one Detector; what the Triton model calls, testable without Triton."""

    def __init__(self, detector: Detector):
        self.detector = detector
        self.lines: dict[str, Line] = {}
        self.staged: dict[tuple[str, str], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def stage(self, name: str, token: str, frames: np.ndarray) -> None:
        """Keep frames for the line's next changeover or calibration with the same token."""
        with self._lock:
            parts = self.staged.setdefault((name, token), [])
            if sum(len(p) for p in parts) + len(frames) > STAGE_LIMIT:
                del self.staged[(name, token)]
                raise PackdError(f"more than {STAGE_LIMIT} frames staged for one operation on line {name!r}: dropped")
            parts.append(frames)

    def take_staged(self, name: str, token: str | None) -> list[np.ndarray]:
        """The frames staged under `token` for the line, removed (none without a token)."""
        if not token:
            return []
        with self._lock:
            return self.staged.pop((name, token), [])

    def _line(self, name: str) -> Line:
        with self._lock:
            line = self.lines.get(name)
        if line is None and self.detector.few_shot:
            raise PackdError(f"line {name!r} has no prototypes: send a changeover with its support frames first")
        return line or Line(None, self.detector.threshold)

    def run(self, name: str, action: str, frames: np.ndarray) -> Result:
        """One action for one line; returns the frames' results with the line's (new) threshold."""
        if action == "changeover":  # a new product: no threshold until it is calibrated (few-shot kinds)
            protos = self.detector.prototypes(frames) if self.detector.few_shot else None
            line = Line(protos, None if self.detector.few_shot else self.detector.threshold)
        elif action == "calibrate":
            line = self._line(name)
            check_normal_count(len(frames))  # before scoring them
            scores = self.detector.detect(frames, line.prototypes).scores
            t, basis = threshold_from_normal_scores(scores), score_range(scores)
            low_high = (basis["min"], basis["max"])
            protos = line.prototypes and replace(line.prototypes, threshold=t, normal_scores=low_high)
            line = Line(protos, t)
        elif action == "detect":
            line = self._line(name)
            return self._detect(frames, line)
        else:
            raise PackdError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
        with self._lock:
            self.lines[name] = line
        return self._detect(frames, line)

    def _detect(self, frames: np.ndarray, line: Line) -> Result:
        """The frames scored with the line's prototypes, judged by the line's threshold only (none: no labels)."""
        if line.prototypes is not None:  # they carry the line's threshold, once calibrated
            return self.detector.detect(frames, line.prototypes)
        return self.detector.detect(frames, threshold=line.threshold)


def _text(values: np.ndarray, what: str) -> str:
    """The one line name or action of a request (Triton sends one per item), UTF-8."""
    try:
        items = {v.decode() if isinstance(v, bytes) else str(v) for v in values.ravel()}
    except UnicodeDecodeError:
        raise PackdError(f"the {what} is not UTF-8 text") from None
    if len(items) != 1:
        raise PackdError(f"one request, one {what}: got {sorted(items)}")
    return items.pop()


def _staged(n: int, hw: tuple[int, int]) -> Result:
    """What a `stage` request gets back: nothing scored yet, no threshold."""
    return Result(np.zeros(n, np.float32), np.zeros((n, *hw), np.float32), None)


def _last(result: Result, n: int) -> Result:
    """The last n frames' part of a result (staged frames came first)."""
    cut = slice(len(result.scores) - n, None)
    return Result(result.scores[cut], result.maps[cut], result.threshold,
                  None if result.flagged is None else result.flagged[cut])


class TritonPythonModel:
    """Triton's Python-backend interface (initialize / execute / finalize) around `LineServer`."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        bundle = Path(args["model_repository"]) / args["model_version"] / "bundle"
        keys = [k for k in params.get(TRUSTED_KEYS, "").split(",") if k] or None  # public key files, as paths
        self.server = LineServer(Detector.open(bundle, backend=params.get("runtime_backend", "auto"),
                                               trusted_keys=keys))
        self.fingerprint = self.server.detector.fingerprint
        if params.get(FINGERPRINT, self.fingerprint) != self.fingerprint:
            raise PackdError(f"the config's fingerprint {params['fingerprint']} is not the bundle's {self.fingerprint}")

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb

        parsed, tokens = [], []
        for request in requests:
            try:
                params = json.loads(request.parameters() or "{}")
                expected = params.get(FINGERPRINT, self.fingerprint)
                if expected != self.fingerprint:
                    raise PackdError(f"the client expects model {expected}, this server runs {self.fingerprint}: "
                                     "its prototypes and thresholds do not apply here")
                line = _text(pb.get_input_tensor_by_name(request, LINE).as_numpy(), LINE)
                action = _text(pb.get_input_tensor_by_name(request, ACTION).as_numpy(), ACTION)
                parsed.append((line, action, pb.get_input_tensor_by_name(request, FRAMES).as_numpy()))
                tokens.append(str(params.get(STAGE) or ""))
            except Exception as e:  # a bad request is answered alone, whatever went wrong with it
                parsed.append(e if isinstance(e, PackdError) else PackdError(f"bad request: {type(e).__name__}"))
                tokens.append("")
        responses: list = [None] * len(requests)
        # consecutive detect requests of one line: one call; anything else alone, in arrival order
        def batch_key(i: int) -> tuple[str, str]:
            ok = not isinstance(parsed[i], Exception) and parsed[i][1] == "detect"
            return (parsed[i][0], "detect") if ok else ("", str(i))

        for _, group in groupby(range(len(requests)), key=batch_key):
            group = list(group)
            if isinstance(parsed[group[0]], Exception):
                responses[group[0]] = pb.InferenceResponse(error=pb.TritonError(str(parsed[group[0]])))
                continue
            line, action = parsed[group[0]][:2]
            frames = [parsed[i][2] for i in group]
            try:
                if action == "stage":
                    self.server.stage(line, tokens[group[0]], frames[0])
                    result = _staged(len(frames[0]), self.server.detector.manifest.map_hw)
                else:
                    staged = self.server.take_staged(line, tokens[group[0]]) if action != "detect" else []
                    result = self.server.run(line, action, np.concatenate([*staged, *frames]))
                    result = _last(result, sum(len(f) for f in frames))  # the replies cover this request's frames
            except Exception as e:  # this group's requests get the error; the other groups are served
                message = str(e) if isinstance(e, PackdError) else f"{action} failed: {type(e).__name__}: {e}"
                for i in group:
                    responses[i] = pb.InferenceResponse(error=pb.TritonError(message))
                continue
            start = 0
            for i, f in zip(group, frames):
                part = slice(start, start + len(f))
                start += len(f)
                n = len(f)
                responses[i] = pb.InferenceResponse([
                    pb.Tensor(SCORES, result.scores[part].reshape(n, 1).astype(np.float32)),
                    pb.Tensor(MAPS, result.maps[part].astype(np.float32)),
                    pb.Tensor(LABELS, (result.flagged[part] if result.flagged is not None
                                       else np.zeros(n, bool)).reshape(n, 1)),
                    pb.Tensor(THRESHOLD, np.full((n, 1), np.nan if result.threshold is None else result.threshold,
                                                 np.float32)),  # NaN: this line has no threshold yet
                    pb.Tensor(FINGERPRINT, np.full((n, 1), self.fingerprint.encode(), dtype=object)),
                ])
        return responses

    def finalize(self) -> None:
        self.server.detector.close()
