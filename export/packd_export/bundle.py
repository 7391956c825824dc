"""`packd-export CHECKPOINT`: a checkpoint to a bundle (the format: `packd_runtime.bundle_format`), as a short pipeline:
load and check the model -> export its graphs to ONNX -> change their precision -> write graphs and manifest
atomically -> build TensorRT engines where possible.

Written atomically: everything goes to a temporary directory that is renamed into place, so exporting over an
existing bundle never leaves half of one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

import packd
from packd.errors import PackdError
from packd.evaluation.reports import check_report_path, write_report
from packd.evaluation.tiling_options import DEFAULT_MAX_SHOTS, TileOptions, untiled_warning
from packd.models.loading import load_scorer
from packd.models.scoring import Scorer
from packd_export.fp16 import to_fp16
from packd_export.graphs import GraphSpec, graph_specs
from packd_export.int8 import Int8Settings, check_quantizer, mixed_int8
from packd_export.int8_data import calibration_feeds, sample_tiles, validation_sets
from packd_export.normal_frames import NORMAL_IMAGES, VALIDATION_IMAGES, normal_frames
from packd_export.onnx_export import check_onnx, export_onnx, graph_io, in_memory_backend
from packd_export.threshold import THRESHOLD_SHOTS, bundle_threshold, check_threshold_images
from packd_export.trt_compat import check_tensorrt_compat
from packd_runtime.atomic import atomic_dir, check_replaceable, write_json
from packd_runtime.bundle_format import BUNDLE, MANIFEST, MAX_DYNAMIC, MAX_SIDE, SUPPORT, graph_file
from packd_runtime.files import sha256
from packd_runtime.manifest import Graph, Limits, Manifest, PrototypeSpec
from packd_runtime.pipeline import Pipeline

PRECISIONS = ("fp32", "fp16", "int8")


def _example(scorer: Scorer, gspec: GraphSpec, frame_hw: tuple[int, int],
             positions: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs to trace with: 2 frames (+ 6 random prototypes per tensor for a few-shot query graph; per
    position, 6 for each of `positions`, and the 2 tiles' positions)."""
    images = torch.randint(0, 256, (2, *frame_hw, 3), dtype=torch.uint8)
    if gspec.name == SUPPORT or not scorer.few_shot:
        return (images,)
    lead = (positions,) if positions else ()
    index = (torch.tensor([0, positions - 1], dtype=torch.int64),) if positions else ()
    return (images, *(torch.randn(*lead, 6, c) for c in scorer.model.prototype_channels), *index)


def _checked_scorer(checkpoint: str | Path, scoring: dict[str, Any] | None) -> tuple[Scorer, dict[str, Any]]:
    """The checkpoint's scorer, refused when its weights are not finite (a diverged training)."""
    scorer, config = load_scorer(checkpoint, scoring)
    broken = [k for k, v in scorer.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise PackdError(f"{checkpoint} has non-finite weights ({', '.join(broken[:3])}): its training diverged; "
                         "retrain it (e.g. with a lower --lr)")
    return scorer, config


def _limits(scorer: Scorer, max_batch: int, max_shots: int) -> Limits:
    """The largest batch, shot count and prototype count the graphs are exported (and engines built) for."""
    if not scorer.few_shot:
        return Limits(max_batch)
    return Limits(max_batch, max_shots, scorer.prototype_limit(max_shots))


def _prototype_spec(scorer: Scorer) -> PrototypeSpec:
    """What the runtime needs of a few-shot kind's prototypes: count per shot, channels, the bank bound."""
    return PrototypeSpec(scorer.model.prototypes_per_shot(scorer.spec.image_size),
                         tuple(scorer.model.prototype_channels), scorer.max_prototypes)


def _with_precision(protos: dict[str, onnx.ModelProto], precision: str, *, scorer: Scorer, limits: Limits,
                    loaded: dict[str, Any], int8: Int8Settings,
                    progress) -> tuple[dict[str, onnx.ModelProto], dict[str, Any] | None]:
    """fp32 graphs as they are, fp16 (FP16 trunk), or int8 (calibrated on the feeds the fp32 graphs get while the
    pipeline scores normal images; FP16 fallbacks) with its report."""
    if precision == "fp16":
        return {g: to_fp16(p) for g, p in protos.items()}, None
    if precision == "int8":
        backend = in_memory_backend(protos)
        try:
            pipeline = Pipeline(backend.run, limits, scorer.prototype_names if scorer.few_shot else (),
                                scorer.max_prototypes)
            calibration = calibration_feeds(pipeline, {c: f[:NORMAL_IMAGES] for c, f in loaded.items()})
        finally:
            backend.close()
        validation = validation_sets(loaded, scorer.few_shot, scorer.max_prototypes)
        return mixed_int8(protos, calibration, validation, int8, progress)
    return protos, None


def _int8_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records of an int8 export: calibration, the layers kept in FP16, the validation."""
    return {"calibration": report["settings"]["calibration"],
            "fp16_layers": {g: [r["weights"] for r in rows if r["precision"] == "fp16"]
                            for g, rows in report["graphs"].items()},
            "validation": report["result"]}


def export_bundle(checkpoint: str | Path, out: str | Path, *, precision: str = "fp32", max_batch: int = 32,
                  max_shots: int = DEFAULT_MAX_SHOTS, frame_size: tuple[int, int] | None = None, opset: int = 18,
                  calibration_data: str | Path | None = None, engines: str = "auto",
                  scoring: dict[str, Any] | None = None, int8: Int8Settings | None = None,
                  report: str | Path | None = None, progress=lambda _: None,
                  tiles: TileOptions | None = None, warn: Callable[[str], None] = lambda _: None) -> Manifest:
    """Export a checkpoint to a bundle. engines: 'auto' (build when TensorRT and a GPU are here),
    'never', or 'require' (fail without them); `scoring` overrides the checkpoint's scoring settings
    (the manifest records the ones the graphs compute); `int8` says how int8 is calibrated and mixed, and
    `report` where its per-layer report goes. `frame_size`: the camera frames the graphs take (resized inside).
    With `tiles` (whose frame size is the camera's), the graphs take tiles of the frames and the manifest records
    the tiling and its memory (see `packd_runtime.tiling`). `warn` gets what the user should know (a checkpoint
    trained on tiles exported whole). Returns the manifest."""
    from packd_runtime.tensorrt.build import build_bundle_engines, why_no_tensorrt

    if precision not in PRECISIONS:
        raise PackdError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not 1 <= max_batch <= MAX_DYNAMIC["batch"] or not 1 <= max_shots <= MAX_DYNAMIC["shots"]:
        raise PackdError(f"--max-batch must be 1 to {MAX_DYNAMIC['batch']} and --max-shots 1 to "
                         f"{MAX_DYNAMIC['shots']}, got {max_batch} and {max_shots}")
    if precision != "int8" and (report is not None or (int8 is not None and int8 != Int8Settings())):
        raise PackdError("--report, --calibration and --fp16-fallback describe an int8 export: add --precision int8")
    if precision == "int8":
        check_quantizer()
    if report is not None:
        if Path(report).resolve() == Path(out).resolve() or Path(out).resolve() in Path(report).resolve().parents:
            raise PackdError(f"--report {report} would be written into the bundle --out {out}: choose another file")
        check_report_path(report)
    if tiles is not None:
        if tiles.frame_size is None:
            raise PackdError("--tile needs --frame-size HxW, the camera's full frame")
        frame_size = tiles.frame_size
    if frame_size is not None and not all(1 <= side <= MAX_SIDE for side in frame_size):
        raise PackdError(f"--frame-size must be 1 to {MAX_SIDE} pixels a side, got {frame_size[0]}x{frame_size[1]}")
    if tiles is not None and tiles.memory == "position" and precision == "int8":
        raise PackdError("--memory position is not offered in int8 yet: export it in fp32 or fp16, or int8 with "
                         "--memory shared")
    if engines == "require" and (reason := why_no_tensorrt()):
        raise PackdError(f"engines were required but cannot be built here: {reason}")
    check_replaceable(out, BUNDLE)
    scorer, config = _checked_scorer(checkpoint, scoring)
    if warning := untiled_warning(config, tiles):
        warn(warning)
    limits = _limits(scorer, max_batch, max_shots)
    frame_hw = tuple(frame_size or (scorer.spec.image_size, scorer.spec.image_size))
    tiling = tiles.spec(scorer.spec.image_size, scorer.few_shot) if tiles is not None else None
    graph_hw = (tiling.tiling.tile,) * 2 if tiling else frame_hw  # a tiled bundle's graphs take tiles
    per_category = NORMAL_IMAGES + (VALIDATION_IMAGES if precision == "int8" else 0)
    if tiling:  # whole camera frames in memory: at most about 256 MB of them per category
        per_category = max(THRESHOLD_SHOTS + 1, min(per_category, (1 << 28) // (3 * frame_hw[0] * frame_hw[1])))
    loaded = normal_frames(config, frame_hw, per_category, calibration_data and Path(calibration_data))
    check_threshold_images(loaded, scorer.few_shot)
    progress(f"{sum(len(f) for f in loaded.values())} normal {frame_hw[0]}x{frame_hw[1]} frames of {len(loaded)} "
             f"training categories read; exporting the graphs to ONNX")
    positions = tiling.tiling.count if tiling and tiling.per_position else 0
    protos = {g.name: export_onnx(g, _example(scorer, g, graph_hw, positions), limits, opset)
              for g in graph_specs(scorer, per_position=bool(positions))}
    graph_loaded = loaded  # what int8 calibrates and validates on: the graphs' inputs, so tiles when tiled
    if tiling and precision == "int8":
        graph_loaded = {c: sample_tiles(tiling.tiling, f, NORMAL_IMAGES + VALIDATION_IMAGES)
                        for c, f in loaded.items()}
    protos, int8_report = _with_precision(protos, precision, scorer=scorer, limits=limits, loaded=graph_loaded,
                                          int8=int8 or Int8Settings(), progress=progress)
    prototype_names = tuple(scorer.prototype_names) if scorer.few_shot else ()
    with atomic_dir(out, BUNDLE) as tmp:
        graphs = _write_graphs(tmp, protos)
        threshold, basis = bundle_threshold(tmp, graphs, {c: f[:NORMAL_IMAGES] for c, f in loaded.items()},
                                            limits=limits, prototype_names=prototype_names,
                                            max_count=scorer.max_prototypes, tiling=tiling, progress=progress)
        manifest = Manifest(
            kind=config["kind"], image_size=scorer.spec.image_size, frame_hw=frame_hw, mean=tuple(scorer.spec.mean),
            std=tuple(scorer.spec.std), precision=precision, opset=opset, graphs=graphs, limits=limits,
            threshold=threshold, normal_scores=basis,
            files={spec.file: sha256(tmp / spec.file) for spec in graphs.values()}, teacher=config["teacher"],
            settings=config["settings"],
            versions={"packd": packd.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                      "onnxruntime": onnxruntime.__version__},
            checkpoint={"name": Path(checkpoint).resolve().name,
                        "model_sha256": sha256(Path(checkpoint) / "model.safetensors"),
                        "categories": config["train"]["categories"]},
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            prototypes=_prototype_spec(scorer) if SUPPORT in graphs else None,
            int8=_int8_summary(int8_report) if int8_report else None, tiling=tiling).checked()
        write_json(tmp / MANIFEST, manifest.to_dict())
    if int8_report and report is not None:
        write_report(report, {"bundle": str(out), "kind": config["kind"], **int8_report})
    if engines != "never" and why_no_tensorrt() is None:
        manifest = build_bundle_engines(out)
    return manifest


def _write_graphs(folder: Path, protos: dict[str, onnx.ModelProto]) -> dict[str, Graph]:
    """Check each graph (ONNX checker, TensorRT's parser rules) and save it; per graph its file and I/O."""
    graphs: dict[str, Graph] = {}
    for name, proto in protos.items():
        proto = check_onnx(proto)
        problems = check_tensorrt_compat(proto)
        if problems:
            raise PackdError(f"{name} graph would not parse in TensorRT: " + "; ".join(problems[:5]))
        onnx.save(proto, folder / graph_file(name))
        graphs[name] = graph_io(proto, graph_file(name))
    return graphs
