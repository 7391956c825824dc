"""Why int8 is slower than fp32 under ONNX Runtime on the CPU, and what an ONNX Runtime-specific int8 would do.

Times the query graph of a bundle (batch 1 and 8, ONNX Runtime CPU, `--threads` intra-op threads) as:
fp32; the bundle's int8 (TensorRT layout: Q/DQ on convolution inputs only, FP16 fallbacks); every
trunk layer int8 in that layout; and the ONNX Runtime layout (Q/DQ on convolution outputs too, so the
CPU can fuse each convolution into one QLinearConv with int8 kernels), with signed and unsigned
activations. ONNX Runtime's profiler says where the time goes (op types after graph optimisation).

    .venv/bin/python benchmarks/int8_cpu_speed.py --checkpoint runs/fewshot/packd_best
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import typer

from packd.evaluation.reports import check_report_path, write_report
from packd_runtime.manifest import read_manifest


def _session(model: onnx.ModelProto, threads: int, profile: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def _feeds(model: onnx.ModelProto, batch: int, prototypes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in model.graph.input:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.name == "images":
            feeds[i.name] = rng.integers(0, 256, (batch, *dims[1:]), dtype=np.uint8)
        else:
            feeds[i.name] = rng.standard_normal((prototypes, *dims[1:])).astype(np.float32)
    return feeds


def _time(session: ort.InferenceSession, feeds: dict[str, np.ndarray], repeats: int) -> float:
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _profile(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int) -> dict[str, float]:
    """Share of kernel time per op type, after ONNX Runtime's graph optimisations (fusions)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(model, threads, str(Path(tmp) / "p"))
        for _ in range(10):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {op: round(t / total, 3) for op, t in per_op.most_common(6)}


def _ort_layout(checkpoint: Path, fp32_bundle: Path, activation: str) -> onnx.ModelProto:
    """Every trunk convolution int8 with Q/DQ on outputs too (fusable into QLinearConv), calibrated on the
    same normal images as the bundle."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from packd.models.checkpoint import read_config
    from packd_export.int8 import FeedReader, int8_layers
    from packd_export.int8_data import bundle_feeds
    from packd_export.normal_frames import NORMAL_IMAGES, normal_frames
    from packd_export.trunk import with_node_names

    frames = normal_frames(read_config(checkpoint), read_manifest(fp32_bundle).frame_hw, NORMAL_IMAGES)
    feeds = bundle_feeds(fp32_bundle, frames)["query"]
    model = with_node_names(onnx.load(fp32_bundle / "query.onnx"))
    signed = activation == "int8"
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, Path(tmp) / "a.onnx")
        quantize_static(str(Path(tmp) / "a.onnx"), str(Path(tmp) / "b.onnx"), FeedReader(feeds),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "ConvTranspose"],
                        nodes_to_quantize=int8_layers(model), per_channel=True,
                        activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True})
        return onnx.load(Path(tmp) / "b.onnx")


def main(checkpoint: Path = Path("runs/fewshot/packd_best"), bundles: Path = Path("runs/fewshot/bundles"),
         threads: int = 2, repeats: int = 50, results: Path = Path("benchmarks/results/int8_cpu_speed")) -> None:
    """Bundles <checkpoint name>_fp32, _int8 and _int8-none come from benchmarks/tables/precision_accuracy.py."""
    check_report_path(results.with_suffix(".json"))
    fp32_bundle = bundles / f"{checkpoint.name}_fp32"
    manifest = read_manifest(fp32_bundle)
    protos = (manifest.prototypes.per_shot if manifest.prototypes else 0) * 2 or 1
    variants = {"fp32": onnx.load(fp32_bundle / "query.onnx"),
                "int8 bundle (TensorRT layout, FP16 fallbacks)": onnx.load(bundles / f"{checkpoint.name}_int8"
                                                                           / "query.onnx"),
                "all int8, TensorRT layout": onnx.load(bundles / f"{checkpoint.name}_int8-none/query.onnx"),
                "all int8, ONNX Runtime layout, s8 activations": _ort_layout(checkpoint, fp32_bundle, "int8"),
                "all int8, ONNX Runtime layout, u8 activations": _ort_layout(checkpoint, fp32_bundle, "uint8")}
    rows = {}
    for name, model in variants.items():
        row = {"nodes": len(model.graph.node),
               "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)}
        for batch in (1, 8):
            row[f"batch{batch}_ms"] = _time(_session(model, threads), _feeds(model, batch, protos), repeats)
        row["time_by_op_batch8"] = _profile(model, _feeds(model, 8, protos), threads)
        rows[name] = row
        print(name, row, flush=True)
    write_report(results.with_suffix(".json"), {"cpu": platform.processor() or platform.machine(),
                                                "threads": threads, "onnxruntime": ort.__version__,
                                                "bundle": str(fp32_bundle), "variants": rows})
    lines = ["| query graph | batch 1 ms | batch 8 ms | Q/DQ nodes | kernel time by op (batch 8) |", "|---" * 5 + "|"]
    for name, r in rows.items():
        ops = ", ".join(f"{op} {100 * share:.0f} %" for op, share in r["time_by_op_batch8"].items())
        lines.append(f"| {name} | {r['batch1_ms']:.2f} | {r['batch8_ms']:.2f} | {r['qdq_nodes']} | {ops} |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
