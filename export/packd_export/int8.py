"""int8 graphs that keep a detector's decisions: calibrated Q/DQ, with the most sensitive layers in FP16.

These detectors score the difference of two feature maps, so a rounding error a classifier shrugs off
can become the score. What measured best (benchmarks/results/precision_accuracy.md): Q/DQ on the inputs
of convolutions only, so the features the FP32 islands compare are never rounded to 8 bits (TensorRT
still fuses the next layer's quantization into a convolution's output); per-channel symmetric weights
and symmetric per-tensor activations, which is what TensorRT executes; and a sensitivity analysis.
Each layer is quantized alone and scored on held-out normal images and copies of them with painted
defects. The most sensitive layers then go back to FP16, a few more at a time, until the graphs meet
their targets.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader
from scipy.stats import spearmanr

from packd.errors import PackdError
from packd_export.fp16 import to_fp16
from packd_export.onnx_export import in_memory_backend
from packd_export.trunk import TRUNK_SEEDS, trunk_nodes, with_node_names
from packd_runtime.bundle_format import MAX_DYNAMIC, PROTOTYPES, SUPPORT
from packd_runtime.manifest import Limits
from packd_runtime.pipeline import Pipeline

CALIBRATIONS = ("minmax", "percentile")
FALLBACK_STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
VALIDATION_BATCH = 8

Feeds = list[dict[str, np.ndarray]]
Graphs = dict[str, onnx.ModelProto]


@dataclass(frozen=True)
class Int8Settings:
    """How int8 graphs are calibrated and how many layers may fall back to FP16.

    fallback: 'auto' (sensitivity analysis, then the fewest FP16 layers that meet the targets), 'none'
    (every trunk convolution int8), or a count of the most sensitive layers to keep in FP16."""

    calibration: str = "minmax"
    percentile: float = 99.99
    fallback: str = "auto"
    min_spearman: float = 0.99
    max_map_error: float = 0.005
    max_fallback_fraction: float = 0.25

    def __post_init__(self):
        if self.calibration not in CALIBRATIONS:
            raise PackdError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if not (self.fallback in ("auto", "none") or (self.fallback.isascii() and self.fallback.isdigit())):
            raise PackdError(f"--fp16-fallback must be auto, none or a number of layers, got {self.fallback!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise PackdError(f"the calibration percentile must be in (50, 100], got {self.percentile}")


@dataclass
class Validation:
    """Held-out images per category: (supports or None, queries: normal ones and painted-defect copies);
    prototypes bounded like the runtime's."""

    sets: list[tuple[np.ndarray | None, np.ndarray]]
    max_prototypes: int = 0
    overlaps_calibration: bool = False


class FeedReader(CalibrationDataReader):
    """Calibration feeds as ONNX Runtime's (and ModelOpt's) data reader: iterated, ranged, rewound."""

    def __init__(self, feeds: Feeds):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def get_first(self) -> dict[str, np.ndarray]:
        return self._feeds[0]

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def int8_layers(model: onnx.ModelProto) -> list[str]:
    """The convolutions int8 may quantize: the trunk's, never an FP32 island's (e.g. the map's blur)."""
    trunk = trunk_nodes(model)
    return [n.name for n in model.graph.node if n.name in trunk and n.op_type in TRUNK_SEEDS]


def check_quantizer() -> None:
    """Before any long work: int8 export needs ONNX Runtime's quantizer with a calibration cache (1.27 or newer, so
    Python 3.11 or newer), not a TypeError after the checkpoint is loaded and the frames read."""
    import inspect

    from onnxruntime import __version__
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise PackdError(f"--precision int8 needs onnxruntime 1.27 or newer (this is {__version__}; Python 3.10 "
                         "stops at 1.23): pip install 'onnxruntime>=1.27' on Python 3.11+, or export fp32 / fp16")


def quantize(model: onnx.ModelProto, feeds: Feeds, settings: Int8Settings, cache: Path, *,
             only: list[str] | None = None, exclude: list[str] = ()) -> onnx.ModelProto:
    """Q/DQ on the inputs of the trunk convolutions (`only` these, or all but `exclude`). The activation
    ranges are calibrated once per graph and cached in `cache`, so each candidate graph reuses them."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise PackdError("int8 calibration needs at least one batch of normal images")
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[settings.calibration]
    keep = [n for n in int8_layers(model) if (only is None or n in only) and n not in exclude]
    if not keep:
        return model
    options = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibTensorRangeSymmetric": True,
               "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose"]}
    if settings.calibration == "percentile":  # a histogram: fold each batch in (batches differ in size; memory)
        options |= {"CalibPercentile": settings.percentile, "CalibStridedMinMax": 1}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ONNX Runtime logs a pre-processing hint per call
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, src)
            quantize_static(str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "ConvTranspose"], nodes_to_quantize=keep,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, calibration_cache_path=cache, extra_options=options)
            return _dequantized_for_convolutions_only(onnx.load(dst), set(keep))
    finally:
        root.setLevel(level)


def _dequantized_for_convolutions_only(model: onnx.ModelProto, quantized: set[str]) -> onnx.ModelProto:
    """ONNX Runtime's quantizer points every reader of a quantized tensor at its dequantized copy; only the
    int8 convolutions may read it. The others (FP32 islands, FP16 fallbacks, residual adds) get the
    original tensor back, so e.g. a teacher feature that feeds both the next layer and the prototype
    distances is compared unrounded."""
    nodes = model.graph.node
    source = {n.output[0]: n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    original = {n.output[0]: source[n.input[0]] for n in nodes
                if n.op_type == "DequantizeLinear" and n.input[0] in source}
    for n in nodes:
        if n.name not in quantized and n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            for i, name in enumerate(n.input):
                if name in original:
                    n.input[i] = original[name]
    return model


def _outputs(graphs: Graphs, validation: Validation) -> list[tuple[np.ndarray, np.ndarray]]:
    """Scores and maps of `graphs` (ONNX Runtime, CPU) on every validation set."""
    backend = in_memory_backend(graphs)
    names = tuple(o.name for o in graphs[SUPPORT].graph.output) if SUPPORT in graphs else ()
    limits = Limits(VALIDATION_BATCH, VALIDATION_BATCH, MAX_DYNAMIC[PROTOTYPES])  # no bound but the kind's own
    pipeline = Pipeline(backend.run, limits, names, validation.max_prototypes)
    try:
        return [pipeline.score(queries, None if supports is None else pipeline.prototypes(supports))
                for supports, queries in validation.sets]
    finally:
        backend.close()


def agreement(reference: list[tuple[np.ndarray, np.ndarray]],
              got: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """How far `got` is from the FP32 `reference`, per validation set then averaged: score rank
    agreement (Spearman) and map error relative to the FP32 map's range."""
    rho, mean_err, max_err = [], [], []
    for (s32, m32), (s, m) in zip(reference, got):
        r = spearmanr(s, s32).statistic if len(s) > 1 and np.ptp(s32) > 0 else 1.0
        rho.append(float(r) if np.isfinite(r) else 0.0)
        span = float(np.ptp(m32)) or 1.0
        mean_err.append(float(np.abs(m - m32).mean()) / span)
        max_err.append(float(np.abs(m - m32).max()) / span)
    return {"spearman": float(np.mean(rho)), "worst_spearman": float(np.min(rho)),
            "map_mean_error": float(np.mean(mean_err)), "map_max_error": float(np.max(max_err))}


def _cost(m: dict[str, float]) -> float:
    """One number to rank layers by: rank loss plus mean map error (both 0 when harmless)."""
    return (1.0 - m["spearman"]) + m["map_mean_error"]


def _meets(m: dict[str, float], s: Int8Settings) -> bool:
    return m["spearman"] >= s.min_spearman and m["map_mean_error"] <= s.max_map_error


def mixed_int8(graphs: Graphs, calibration: dict[str, Feeds], validation: Validation, settings: Int8Settings,
               progress: Callable[[str], None] = lambda _: None) -> tuple[Graphs, dict[str, Any]]:
    """int8 versions of a bundle's graphs (support and query together: prototypes from an int8 support
    graph feed the query graph) and the per-layer report."""
    graphs = {g: with_node_names(onnx.ModelProto.FromString(m.SerializeToString())) for g, m in graphs.items()}
    layers = {g: int8_layers(m) for g, m in graphs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        caches = {g: Path(tmp) / f"{g}.ranges.json" for g in graphs}

        def build(fp16: dict[str, list[str]]) -> Graphs:
            out = {}
            for g, m in graphs.items():
                q = quantize(m, calibration[g], settings, caches[g], exclude=fp16.get(g, []))
                out[g] = to_fp16(q, seeds=fp16[g]) if fp16.get(g) else q
            return out

        reference = _outputs(graphs, validation)
        steps = []

        def attempt(ranked: list[tuple[str, str]], k: int) -> Graphs:
            candidate = build({g: [n for gg, n in ranked[:k] if gg == g] for g in graphs})
            metrics = agreement(reference, _outputs(candidate, validation))
            steps.append({"fp16_layers": k, **metrics, "meets_targets": _meets(metrics, settings)})
            progress(f"int8 with {k} layers in FP16: Spearman {metrics['spearman']:.4f}, mean map error "
                     f"{100 * metrics['map_mean_error']:.2f} % of its range on the validation images")
            return candidate

        sensitivity: dict[tuple[str, str], dict[str, float]] = {}
        candidate = attempt([], 0) if settings.fallback in ("auto", "none", "0") else None
        if candidate is None or (settings.fallback == "auto" and not steps[-1]["meets_targets"]):
            progress(f"int8 sensitivity analysis: {sum(len(v) for v in layers.values())} layers, each quantized alone")
            for g, names in layers.items():
                for name in names:
                    alone = quantize(graphs[g], calibration[g], settings, caches[g], only=[name])
                    sensitivity[g, name] = agreement(reference, _outputs({**graphs, g: alone}, validation))
        ranked = sorted(sensitivity, key=lambda k: -_cost(sensitivity[k]))
        if settings.fallback == "auto":
            cap = int(settings.max_fallback_fraction * len(ranked))
            for k in sorted({k for k in FALLBACK_STEPS if 0 < k <= cap} | {cap} - {0}):
                if steps[-1]["meets_targets"]:
                    break
                candidate = attempt(ranked, k)
        elif candidate is None:
            candidate = attempt(ranked, min(int(settings.fallback), len(ranked)))
        fp16 = {g: [n for gg, n in ranked[:steps[-1]["fp16_layers"]] if gg == g] for g in graphs}
    order = {key: i + 1 for i, key in enumerate(ranked)}
    report = {
        "settings": asdict(settings),
        "validation": {"sets": len(validation.sets), "images": sum(len(q) for _, q in validation.sets),
                       "overlaps_calibration": validation.overlaps_calibration},
        "calibration_batches": {g: len(f) for g, f in calibration.items()},
        "steps": steps,
        "result": steps[-1],
        "graphs": {g: _layer_report(graphs[g], g, layers[g], fp16[g], sensitivity, order, steps[-1])
                   for g in graphs},
    }
    return candidate, report


def _layer_report(model: onnx.ModelProto, graph: str, layers: list[str], fp16: list[str], sensitivity, order,
                  result) -> list[dict]:
    """Every trunk convolution of a graph: its weights' name, precision, sensitivity and why it is FP16."""
    rows, quantizable = [], set(layers)
    for n in model.graph.node:
        if n.name not in quantizable:
            continue
        s = sensitivity.get((graph, n.name))
        row = {"node": n.name, "op": n.op_type, "weights": n.input[1],
               "precision": "fp16" if n.name in fp16 else "int8", "sensitivity_rank": order.get((graph, n.name)),
               "alone": s}
        if n.name in fp16:
            row["why"] = (f"rank {order[graph, n.name]} by sensitivity: quantized alone it moves the map by "
                          f"{100 * s['map_mean_error']:.2f} % of its range (Spearman {s['spearman']:.4f}); the most "
                          f"sensitive layers stay FP16 until the graphs meet the targets "
                          f"({'met' if result['meets_targets'] else 'not met'} with {result['fp16_layers']})")
        rows.append(row)
    return rows
