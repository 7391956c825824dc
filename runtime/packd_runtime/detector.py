"""`Detector`: what camera software embeds. numpy + onnxruntime, or tensorrt + cuda-python; never torch.

    with Detector.open("bundles/packd") as det:       # checks the manifest and every file's sha256
        det.prototypes(support_frames)                 # product changeover: the support graph, once
        det.calibrate(normal_frames)                   # optional: threshold from normal images only
        result = det.detect(frame)                     # each frame: the query graph
        result.scores, result.maps, result.labels
"""

from __future__ import annotations

import math
import os
import stat
import threading
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from packd_runtime.atomic import atomic_file
from packd_runtime.backends import Backend, open_backend
from packd_runtime.bundle_format import THRESHOLD_SLACK, fingerprint, verify_files
from packd_runtime.cuda_arrays import array_interface
from packd_runtime.errors import PackdError
from packd_runtime.gate import CallGate
from packd_runtime.manifest import Manifest, read_manifest
from packd_runtime.pipeline import Pipeline, batch_size
from packd_runtime.signing import verify_signature
from packd_runtime.threshold import check_normal_count, score_range, threshold_from_normal_scores

PROTOTYPES_FILE_LIMIT = 1 << 28  # 256 MiB of arrays: a full bank of 8 shots x 4 rotations at 448 px is far below


def _check_members(z: zipfile.ZipFile, max_bytes: int) -> None:
    """Every member is a .npy whose header (read, not its data) names a plain dtype and a shape whose size, and
    the size the zip says it unpacks to, stay within `max_bytes` in all."""
    total = 0
    for info in z.infolist():
        if not info.filename.endswith(".npy") or info.file_size > max_bytes:
            raise ValueError(f"member {info.filename!r} is not a small .npy array")
        with z.open(info) as member:
            version = np.lib.format.read_magic(member)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(member))
        if dtype.hasobject:
            raise ValueError(f"member {info.filename!r} holds Python objects")
        total += max(math.prod(shape) * dtype.itemsize, info.file_size)
        if total > max_bytes:
            raise ValueError(f"its arrays would take more than {max_bytes} bytes: refused before reading them")


@dataclass(frozen=True)
class Prototypes:
    """The support graph's output for one product: one float32 array (n, C_i) per prototype input,
    tagged with the fingerprint of the bundle that made them. Checked against a detector before use."""

    arrays: tuple[np.ndarray, ...]
    fingerprint: str
    shots: int
    threshold: float | None = None  # this product's, once calibrated; None: judged by no threshold yet
    normal_scores: tuple[float, float] | None = None  # the lowest and highest score its threshold came from

    def save(self, path: str | Path) -> None:
        """Write an .npz (no pickles) atomically."""
        low, high = self.normal_scores or (np.nan, np.nan)
        with atomic_file(path) as f:
            np.savez(f, fingerprint=np.array(self.fingerprint), shots=np.array(self.shots),
                     threshold=np.array(np.nan if self.threshold is None else float(self.threshold)),
                     normal_scores=np.array([low, high], np.float64),
                     **{f"stage_{i + 1}": a for i, a in enumerate(self.arrays)})

    @classmethod
    def load(cls, path: str | Path, max_bytes: int = PROTOTYPES_FILE_LIMIT) -> Prototypes:
        """Read an .npz written by `save` (pickles are never loaded); a damaged file, or one whose arrays would
        take more than `max_bytes` (checked from the headers, before any array is read), is refused, as is anything
        but a regular file of at most `max_bytes` (a device or a pipe is never read)."""
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # before opening: opening a pipe waits for a writer
                raise ValueError("not a regular file")
            with open(path, "rb") as f, _loaded(f, max_bytes) as z:
                stages = sorted((k for k in z.files if k.startswith("stage_")), key=lambda k: int(k[6:]))
                if not stages or {"fingerprint", "shots"} - set(z.files):
                    raise ValueError(f"holds {sorted(z.files)}, not prototypes")
                arrays = tuple(z[k] for k in stages)
                fp, shots = z["fingerprint"], z["shots"]
                if fp.dtype.kind != "U" or fp.ndim or shots.dtype.kind not in ("i", "u") or shots.ndim:
                    raise ValueError("fingerprint or shot count of the wrong type")
                t = z["threshold"] if "threshold" in z.files else np.array(np.nan)  # files saved before thresholds
                if t.dtype.kind != "f" or t.ndim or np.isinf(t):
                    raise ValueError("threshold of the wrong type")
                basis = z["normal_scores"] if "normal_scores" in z.files else np.full(2, np.nan)
                if basis.dtype.kind != "f" or basis.shape != (2,):
                    raise ValueError("normal scores of the wrong type")
                scores = None if np.isnan(basis).any() else (float(basis[0]), float(basis[1]))
                return cls(arrays, str(fp), int(shots), None if np.isnan(t) else float(t), scores)
        except FileNotFoundError:
            raise PackdError(f"prototypes file not found: {path}") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise PackdError(f"corrupted prototypes file {path}: {e}") from None


@contextmanager
def _loaded(f: Any, max_bytes: int) -> Iterator[Any]:
    """np.load of an open regular file of at most `max_bytes` whose zip members were checked first (the same open
    file throughout: what was checked is what is read)."""
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"{st.st_size} bytes, more than {max_bytes}: refused before reading it")
    with zipfile.ZipFile(f) as z:
        _check_members(z, max_bytes)
    f.seek(0)
    with np.load(f, allow_pickle=False) as z:
        yield z


NO_THRESHOLD = ("no threshold for this product yet: a new product is never judged by another product's threshold; "
                "call calibrate(normal_frames) after the changeover, or pass threshold=")


@dataclass(frozen=True)
class Result:
    """Per image: score and anomaly map at the model's input size; with a threshold, the label (score >
    threshold) and, when asked, pixel masks. After a changeover a few-shot product has no threshold until
    `calibrate`: `threshold` is None then and `labels` raises a PackdError saying so."""

    scores: np.ndarray
    maps: np.ndarray
    threshold: float | None
    flagged: np.ndarray | None = None
    masks: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """score > threshold, per image."""
        if self.flagged is None:
            raise PackdError(NO_THRESHOLD)
        return self.flagged


class Detector:
    """A loaded bundle on one backend. Safe to call from several camera threads at once; `close()` waits
    for calls in flight, and any call after it raises a PackdError."""

    def __init__(self, bundle: Path, manifest: Manifest, backend: Backend, reason: str):
        self.bundle, self.manifest, self.backend, self.reason = bundle, manifest, backend, reason
        self._threshold = manifest.threshold  # per-category kinds: their category's; few-shot: unused
        self.fingerprint = fingerprint(manifest)
        self.few_shot = manifest.few_shot
        self.frame_hw = manifest.frame_hw
        self.tiling = manifest.tiling.tiling if manifest.tiling is not None else None  # None: whole frames
        if self.tiling is not None:
            self.tiling.stitch_plan  # noqa: B018  built now, not on the first frame
        self.memory = manifest.memory  # a tiled few-shot bundle's: "shared" or "position"; else None
        self.pipeline = Pipeline.of(manifest, backend.run)
        self.max_batch = manifest.limits.batch
        self.max_shots = manifest.limits.shots
        self.max_prototypes = manifest.limits.prototypes
        self.prototype_names = list(manifest.prototype_names)
        self._proto_channels = list(manifest.prototype_channels)
        self._proto_lead = (manifest.positions,) if manifest.positions else ()  # a per-position memory's axis
        self._current: Prototypes | None = None
        self._lock = threading.Lock()
        self._gate = CallGate("this detector is closed: open the bundle again")

    @classmethod
    def open(cls, bundle: str | Path, backend: str = "auto", device: int = 0, build: bool = False,
             profile: bool = False, trusted_keys: Iterable[str | Path] | str | Path | None = None) -> Detector:
        """Verify the bundle and pick a backend: TensorRT when engines for this GPU and TensorRT
        version are in the bundle (or `build=True` and the builder is here: build and cache them),
        else ONNX Runtime (CUDA provider if present, else CPU). `detector.reason` says why.
        `profile=True` makes the TensorRT backend time H2D, compute and D2H with CUDA events.
        `trusted_keys`: public key files (`packd-export keygen`); when given, the bundle must carry a signature
        by one of them over this very manifest (so every file hash, the threshold and the limits), and only
        the engines that signature vouched for are loaded."""
        bundle = Path(bundle)
        manifest = read_manifest(bundle)
        trusted_engines = None
        if trusted_keys is not None:
            if build:
                raise PackdError("build=True cannot be combined with trusted_keys: engines built now are not "
                                 "signed; build them with packd-export build, then sign the bundle")
            keys = [trusted_keys] if isinstance(trusted_keys, (str, Path, bytes, int)) else list(trusted_keys)
            if not all(isinstance(k, (str, Path)) for k in keys):
                raise PackdError("trusted_keys must be public key files: a path or a list of paths, got "
                                 f"{type(trusted_keys).__name__} {trusted_keys!r:.40}")
            trusted_engines = verify_signature(bundle, manifest, keys)
        verified = verify_files(bundle, manifest)  # the bytes hashed are the bytes loaded
        chosen, manifest, reason = open_backend(bundle, manifest, backend, device, build=build, profile=profile,
                                                trusted_engines=trusted_engines, verified=verified)
        return cls(bundle, manifest, chosen, reason)

    # ---- input checks ---------------------------------------------------------------------

    def _frames(self, images: Any, what: str) -> Any:
        """(H,W,3) or (B,H,W,3) uint8 in the bundle's frame size; device arrays pass unchanged."""
        cai = getattr(images, "__cuda_array_interface__", None)
        if cai is None:
            try:
                images = np.asarray(images)
            except (ValueError, TypeError) as e:  # ragged nested lists, objects numpy cannot take
                raise PackdError(f"{what} must be a uint8 RGB array, got {type(images).__name__} numpy cannot "
                                 f"convert ({str(e).splitlines()[0][:120]})") from None
        shape, dtype = array_interface(images, what) if cai is not None else (images.shape, images.dtype)
        if len(shape) == 3:
            if cai is not None:
                raise PackdError(f"{what}: device arrays must be batched (B,H,W,3), got shape {shape}")
            images, shape = images[None], (1, *shape)
        h, w = self.frame_hw
        if len(shape) != 4:
            raise PackdError(f"{what} must be (B,{h},{w},3) or ({h},{w},3) uint8 RGB, got shape {shape}")
        if shape[-1] != 3:
            raise PackdError(f"{what} must have 3 channels (RGB, last axis), got {shape[-1]}")
        if tuple(shape[1:3]) != (h, w):
            raise PackdError(f"{what} must be {h}x{w} frames (this bundle's input size), got {shape[1]}x{shape[2]}")
        if dtype != np.uint8:
            raise PackdError(f"{what} must be uint8 RGB 0-255, got dtype {dtype}")
        if shape[0] == 0:
            raise PackdError(f"{what} is an empty batch")
        if cai is not None and self.tiling is not None:
            raise PackdError(f"{what}: this bundle tiles its frames on the host: pass numpy arrays")
        if cai is not None and self.backend.device == "cpu":
            raise PackdError(f"{what}: device arrays need a GPU backend (TensorRT, or onnxruntime-gpu's CUDA "
                             f"provider); this detector runs {self.backend.name} on the CPU: pass numpy arrays")
        if cai is not None and shape[0] > self.max_batch and not hasattr(images, "__getitem__"):
            raise PackdError(f"{what}: a device array of {shape[0]} frames, more than this bundle's batch of "
                             f"{self.max_batch}, must support slicing (cupy, torch, numba do)")
        return images if cai is not None else np.ascontiguousarray(images)

    # ---- the two graphs -------------------------------------------------------------------

    def prototypes(self, images: Any) -> Prototypes:
        """Product changeover: run the support graph on k normal frames; the result becomes the
        detector's current prototypes and is returned (save it to skip this next time)."""
        if not self.few_shot:
            raise PackdError(f"this {self.manifest.kind} bundle has no support graph: it needs no prototypes")
        images = self._frames(images, "support images")
        k = batch_size(images)
        if self.tiling is None and k > self.max_shots:
            raise PackdError(f"{k} support images, but this bundle was built for at most {self.max_shots}")
        with self._gate.call():
            arrays = self.pipeline.prototypes(images)
        protos = Prototypes(tuple(arrays), self.fingerprint, k)
        self.use(protos)
        return protos

    @property
    def threshold(self) -> float | None:
        """The threshold `detect` applies: a few-shot bundle's is the current product's, None until `calibrate`
        (the manifest's default was computed on the training categories, never on this product)."""
        if not self.few_shot:
            return self._threshold
        current = self._current
        return current.threshold if current is not None else None

    @property
    def current_prototypes(self) -> Prototypes | None:
        """The current product's prototypes, with its threshold once calibrated: what to save for a restart."""
        return self._current

    def use(self, prototypes: Prototypes) -> None:
        """Make saved prototypes current (e.g. at start-up), with the threshold they were saved with; refuses
        prototypes of another model."""
        self._check_prototypes(prototypes)
        with self._lock:
            self._current = prototypes

    def _check_prototypes(self, prototypes: Any) -> None:
        """Only prototypes this bundle could have made: same fingerprint, float32 (n, C_i), finite."""
        if not isinstance(prototypes, Prototypes):
            raise PackdError(f"expected Prototypes, got {type(prototypes).__name__}")
        if prototypes.fingerprint != self.fingerprint:
            raise PackdError("these prototypes were made by another model (bundle fingerprint "
                             f"{prototypes.fingerprint} != {self.fingerprint}): compute them again with this bundle")
        if len(prototypes.arrays) != len(self._proto_channels):
            raise PackdError(f"expected {len(self._proto_channels)} prototype arrays, got {len(prototypes.arrays)}")
        lead = self._proto_lead
        n = {a.shape[-2] for a in prototypes.arrays if isinstance(a, np.ndarray) and a.ndim == len(lead) + 2}
        for a, c in zip(prototypes.arrays, self._proto_channels):
            if not isinstance(a, np.ndarray) or a.dtype != np.float32:
                raise PackdError(f"prototype arrays must be float32, got {getattr(a, 'dtype', type(a).__name__)}")
            if a.ndim != len(lead) + 2 or a.shape[:-2] != lead or a.shape[-1] != c or len(n) != 1:
                shape = "(positions, n, C) with positions = " + str(lead[0]) + ", " if lead else "(n, C) with "
                raise PackdError(f"prototype arrays must be {shape}one n and C = {self._proto_channels}, got "
                                 f"{[x.shape for x in prototypes.arrays]}")
            if not 1 <= a.shape[-2] <= self.max_prototypes:
                raise PackdError(f"{a.shape[-2]} prototypes, but this bundle takes 1 to {self.max_prototypes}")
            if not np.isfinite(a).all():
                raise PackdError("the prototypes hold NaN or infinite values: refused")
        t = prototypes.threshold
        if t is None:
            return
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not np.isfinite(t):
            raise PackdError(f"the prototypes carry a threshold that is not a finite number ({t!r:.40}): refused")
        basis = prototypes.normal_scores
        if basis is None:
            raise PackdError("the prototypes carry a threshold without the normal scores it came from (saved by an "
                             "older packd, or made by hand): calibrate this product again")
        low, high = (float(v) for v in basis)
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low <= high) or t < 0 or not (
                low / THRESHOLD_SLACK <= t <= high * THRESHOLD_SLACK):
            raise PackdError(f"the prototypes' threshold {t} is more than {THRESHOLD_SLACK:g}x outside the scores of "
                             f"the normal frames it came from ({low:.4g} to {high:.4g}), or negative: edited by "
                             "hand? calibrate this product again")

    def detect(self, images: Any, prototypes: Prototypes | None = None, threshold: float | None = None,
               masks: bool = False) -> Result:
        """Score one frame or a batch of any size (split to the engine's maximum batch)."""
        images = self._frames(images, "images")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(
                threshold, (int, float, np.integer, np.floating))):
            raise PackdError(f"threshold must be a number, got {type(threshold).__name__} {threshold!r:.40}")
        try:
            finite = threshold is None or np.isfinite(float(threshold))
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise PackdError(f"threshold must be a finite number, got {threshold!r:.40}")
        arrays = None
        t = self._threshold
        if self.few_shot:
            protos = prototypes or self._current
            if protos is None:
                raise PackdError(f"this {self.manifest.kind} bundle needs prototypes first: call "
                                 "detector.prototypes(support_images) at product changeover "
                                 "(or detector.use(Prototypes.load(path)))")
            if prototypes is not None:
                self._check_prototypes(prototypes)
            arrays = protos.arrays
            t = protos.threshold
        t = float(threshold) if threshold is not None else t
        if masks and t is None:
            raise PackdError(NO_THRESHOLD)

        with self._gate.call():
            scores, maps = self.pipeline.score(images, arrays)
        if not np.isfinite(scores).all():
            raise PackdError("the model gave non-finite scores: this bundle or these prototypes are broken")
        if t is None:
            return Result(scores, maps, None)
        return Result(scores, maps, t, scores > t, maps > t if masks else None)

    def calibrate(self, normal_images: Any, prototypes: Prototypes | None = None) -> float:
        """The threshold from at least 5 normal images only (mean + 3 std of their scores), returned. It becomes the
        detector's (per-category kinds) or the current product's (few-shot kinds: the current prototypes carry
        it, so saving them keeps it); for `prototypes` other than the current ones it is only returned."""
        used = prototypes or self._current  # fixed now: a changeover may come (a per-category bundle's: None)
        self._gate.check_open()
        normal_images = self._frames(normal_images, "normal images")
        check_normal_count(batch_size(normal_images))  # before scoring them
        scores = self.detect(normal_images, used).scores
        t = threshold_from_normal_scores(scores)
        basis = score_range(scores)
        with self._lock:
            if not self.few_shot:
                self._threshold = t
            elif self._current is used:  # only onto the prototypes it was computed with
                self._current = replace(used, threshold=t, normal_scores=(basis["min"], basis["max"]))
        return t

    def close(self) -> None:
        """Wait for calls in flight, then release the backend's sessions, engines, contexts, buffers and
        streams. Later calls raise a PackdError; closing twice is harmless."""
        if self._gate.close():
            self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

