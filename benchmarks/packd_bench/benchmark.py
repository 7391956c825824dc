"""What `packd-bench` runs: every backend available on this machine, timed on one bundle or checkpoint.

Writes OUT.json (machine, GPU, driver and library versions, every number), OUT.md (tables) and
OUT.png (median latency against batch size).
"""

from __future__ import annotations

import gc
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from packd.data.datasets import list_categories, list_split
from packd.data.preprocess import load_frames
from packd.errors import PackdError
from packd.evaluation.reports import check_report_path, write_report
from packd.models.checkpoint import read_config
from packd_bench.bench import (
    TorchRunner,
    accuracy,
    gpu_compute_stats,
    machine_info,
    peak_rss_reset,
    runtime_overhead,
    time_calls,
)
from packd_bench.timing import peak_rss_mb
from packd_runtime import Detector
from packd_runtime.bundle_format import MANIFEST
from packd_runtime.manifest import read_manifest

console = Console()


def _detect(detector: Detector, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = detector.detect(frames)
    return result.scores, result.maps


def _inputs(data: Path | None, category: str | None, hw: tuple[int, int], n: int, shots: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Real test and normal frames of one category when a dataset is at hand, else noise."""
    try:
        if data is None:
            raise PackdError("no dataset given")
        cat = category or list_categories(data)[0]
        test = [s.path for s in list_split(data, cat, "test")]
        train = [s.path for s in list_split(data, cat, "train")]
        frames, supports = load_frames(test, hw), load_frames(train, hw)
        return (np.stack([frames[i % len(frames)] for i in range(n)]),
                np.stack([supports[i % len(supports)] for i in range(shots)]))
    except PackdError as e:
        rng = np.random.default_rng(0)
        console.print(f"timing random frames ({e})")
        return (rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8),
                rng.integers(0, 256, (shots, *hw, 3), dtype=np.uint8))


def _targets(target: Path, checkpoint: Path | None, precisions: list[str], out: Path, max_batch: int,
             max_shots: int) -> tuple[Path | None, dict[str, Path]]:
    """(checkpoint or None, {precision: bundle}) from a bundle (benchmarked as is) or a checkpoint
    (bundles exported next to OUT)."""
    if (target / MANIFEST).is_file():
        manifest = read_manifest(target)
        if checkpoint is not None:
            from packd_runtime.files import sha256

            if sha256(checkpoint / "model.safetensors") != manifest.checkpoint["model_sha256"]:
                raise PackdError(f"{checkpoint} is not the checkpoint {target} was exported from")
        return checkpoint, {manifest.precision: target}
    read_config(target)
    from packd_export.bundle import export_bundle

    bundles = {}
    for p in precisions:
        path = out.parent / f"{out.name}_bundles" / p
        console.print(f"exporting {p} bundle to {path}")
        export_bundle(target, path, precision=p, max_batch=max_batch, max_shots=max_shots)
        bundles[p] = path
    return target, bundles


def benchmark(target: Path, *, out: Path, checkpoint: Path | None, batch_sizes: str, precisions: str, iters: int,
              warmup: int, max_shots: int, data: Path | None, device: str) -> None:
    """Latency / throughput / changeover / memory / accuracy of PyTorch, ONNX Runtime and TensorRT; writes OUT.json,
    OUT.md and OUT.png and prints the tables."""
    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise PackdError(f"--batch-sizes must be comma-separated integers, got {batch_sizes!r}") from None
    if min(sizes) < 1 or iters < 1 or warmup < 0 or max_shots < 1:
        raise PackdError("batch sizes, --iters and --max-shots must be positive, --warmup non-negative")
    _pyplot()  # fail before the long run, not after it
    check_report_path(out.with_suffix(".json"))
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    ckpt, bundles = _targets(target, checkpoint, precisions.split(","), out, max(sizes), max_shots)
    config = read_config(ckpt) if ckpt else None
    with Detector.open(next(iter(bundles.values())), backend="onnxruntime") as first:
        hw, few_shot, kind, size = first.frame_hw, first.few_shot, first.manifest.kind, first.manifest.image_size
    category = config["train"]["categories"][0] if config else None
    frames, supports = _inputs(data or (Path(config["train"]["data"]) if config else None), category, hw,
                               max(sizes), max_shots)
    acc_frames = frames[: min(8, len(frames))]

    runners: list[tuple[str, str, Any]] = []
    results: dict[str, Any] = {"machine": machine_info(), "target": str(target), "kind": kind,
                               "image_size": size, "frame": list(hw), "batch_sizes": sizes,
                               "iters": iters, "warmup": warmup, "backends": {}, "skipped": {}}
    if ckpt is not None:
        runners.append(("pytorch", f"eager-fp32-{dev}", lambda: TorchRunner(ckpt, dev, "eager")))
        if dev.startswith("cuda"):
            for mode in ("fp16", "bf16", "cudagraphs", "compile"):
                runners.append(("pytorch", f"{mode}-cuda", lambda m=mode: TorchRunner(ckpt, dev, m)))
    else:
        results["skipped"]["pytorch"] = "no checkpoint (pass --checkpoint for the PyTorch rows)"
    for p, b in bundles.items():
        runners.append(("runtime", f"onnxruntime-{p}", lambda b=b: Detector.open(b, backend="onnxruntime")))
        runners.append(("runtime", f"tensorrt-{p}", lambda b=b: Detector.open(b, backend="tensorrt", profile=True)))
    results["reference"] = runners[0][1]
    reference = None
    with Progress(console=console) as bar:
        task = bar.add_task("backends", total=len(runners))
        for family, name, make in runners:
            bar.update(task, description=name)
            gc.collect()
            peak_rss_reset()
            try:
                runner = make()
            except PackdError as e:
                results["skipped"][name] = str(e)
                bar.advance(task)
                continue
            if family == "runtime" and runner.backend.name == "onnxruntime":
                name = f"{name}-{runner.backend.device.split(':')[0]}"
            row: dict[str, Any] = {"batches": {}, "changeover": {}}
            if few_shot:
                set_supports = runner.set_supports if family == "pytorch" else runner.prototypes
                for k in range(1, max_shots + 1):
                    stats = time_calls(lambda k=k, f=set_supports: f(supports[:k]), warmup=1, iters=5, images=k)
                    row["changeover"][k] = stats["median_ms"]
                set_supports(supports[:2])
            call = runner if family == "pytorch" else partial(_detect, runner)
            for b in sizes:
                gpu: list[float] = []
                if family == "pytorch":
                    stats = time_calls(lambda b=b, f=call: f(frames[:b]), warmup=warmup, iters=iters, images=b)
                    gpu = runner.compute_samples(frames[:b], iters)
                else:  # every timed call's GPU compute (all its chunks), where the backend measures it
                    def timed(b=b, f=call, g=gpu, backend=runner.backend):
                        return _with_gpu_time(f, frames[:b], backend, g)

                    stats = time_calls(timed, warmup=warmup, iters=iters, images=b)
                    gpu = gpu[warmup:]
                if gpu:
                    stats |= gpu_compute_stats(gpu)
                row["batches"][b] = stats
            outputs = call(acc_frames)
            if reference is None:
                reference = outputs  # the first row: PyTorch eager FP32 when a checkpoint is given
            row["accuracy_vs_reference"] = accuracy(reference, outputs)
            row["peak_rss_mb"] = peak_rss_mb()
            if dev.startswith("cuda") and family == "pytorch":
                row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            results["backends"][name] = row
            if family == "runtime":
                runner.close()
            del runner
            bar.advance(task)
    fp32 = bundles.get("fp32")
    if fp32 is not None:
        results["runtime_overhead"] = {b: runtime_overhead(fp32, frames[:b], supports[:2] if few_shot else None, iters)
                                       for b in sorted({1, min(8, max(sizes))})}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_report(out.with_suffix(".json"), results)
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    console.print(markdown(results), markup=False)
    console.print(f"results written to {', '.join(str(out.with_suffix(x)) for x in ('.json', '.md', '.png'))}",
                  markup=False, soft_wrap=True)


def _with_gpu_time(call: Any, frames: np.ndarray, backend: Any, samples: list[float]) -> Any:
    out = call(frames)
    timed = backend.timings()
    if timed.get("calls"):
        samples.append(timed["compute_ms"])
    return out


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    head = ("| backend | batch | latency median ms | p90 | p99 | min | throughput img/s | GPU compute median ms "
            "| max map err / range | score rank (Spearman) | peak RSS MB |")
    lines = [f"Machine: {m.get('gpu') or m['cpu']} ({m['cpu_count']} CPU threads), torch {m['torch']}, "
             f"onnxruntime {m['onnxruntime']}, TensorRT {m.get('tensorrt')}; {r['kind']} at {r['image_size']} px, "
             f"frames {r['frame'][0]}x{r['frame'][1]} uint8; {r['iters']} timed calls after {r['warmup']} warm-up; "
             f"accuracy against {r['reference']}.", "", head, "|---" * 11 + "|"]
    for name, row in r["backends"].items():
        acc = row["accuracy_vs_reference"]
        for b, s in row["batches"].items():
            gpu = s.get("gpu_compute_median_ms")
            lines.append(f"| {name} | {b} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} "
                         f"| {s['min_ms']:.2f} | {s['throughput_img_s']:.1f} | {f'{gpu:.2f}' if gpu else '-'} "
                         f"| {acc['max_map_err_rel']:.2e} | {acc['score_spearman']:.4f} "
                         f"| {row['peak_rss_mb'] or 0:.0f} |")
    changeover = {n: row["changeover"] for n, row in r["backends"].items() if row["changeover"]}
    if changeover:
        ks = list(next(iter(changeover.values())))
        lines += ["", "Changeover (support graph), median ms:", "",
                  "| backend | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        lines += [f"| {n} | " + " | ".join(f"{v[k]:.1f}" for k in ks) + " |" for n, v in changeover.items()]
    if "runtime_overhead" in r:
        lines += ["", "Runtime overhead (Detector.detect vs its backend's bare query-graph call, fp32, median):", "",
                  "| batch | backend ms | Detector ms | overhead ms | overhead % |", "|---|---|---|---|---|"]
        lines += [f"| {b} | {o['raw_median_ms']:.2f} | {o['detector_median_ms']:.2f} | {o['overhead_ms']:.3f} "
                  f"| {o['overhead_pct']:.1f} |" for b, o in r["runtime_overhead"].items()]
    if r["skipped"]:
        lines += ["", "Not available here: " + "; ".join(f"{k}: {v}" for k, v in r["skipped"].items())]
    return "\n".join(lines) + "\n"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PackdError("the latency plot needs matplotlib: pip install 'packd[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(r: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in r["backends"].items():
        bs = [int(b) for b in row["batches"]]
        ax.plot(bs, [row["batches"][b]["median_ms"] for b in row["batches"]], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("median latency per call (ms)")
    ax.set_title(f"{r['kind']} @ {r['image_size']} px on {r['machine'].get('gpu') or r['machine']['cpu']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
