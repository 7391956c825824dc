"""`packd-bench BUNDLE_OR_CHECKPOINT`: benchmark every backend available on this machine.

Writes OUT.json (machine, GPU, driver and library versions, every number), OUT.md (tables) and
OUT.png (median latency against batch size).
"""

from __future__ import annotations

import gc
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import torch
import typer
from packd_bench.bench import (
    TorchRunner,
    accuracy,
    machine_info,
    peak_rss_mb,
    peak_rss_reset,
    runtime_overhead,
    time_calls,
)
from packd_runtime import Detector
from packd_runtime.atomic import write_json
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from packd.cli import run_app
from packd.data import list_split
from packd.errors import PackdError

console = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _detect(detector: Detector, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = detector.detect(frames)
    return result.scores, result.maps


def _frames(paths: list[Path], hw: tuple[int, int], n: int) -> np.ndarray:
    imgs = [np.asarray(Image.open(p).convert("RGB").resize(hw[::-1], Image.BILINEAR)) for p in paths]
    return np.stack([imgs[i % len(imgs)] for i in range(n)])


def _inputs(config: dict, hw: tuple[int, int], n: int, shots: int, data: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Real test and normal images of the checkpoint's first category when its data is at hand, else noise."""
    root = Path(data or config["train"]["data"])
    cat = config["train"]["categories"][0]
    try:
        test = [s.path for s in list_split(root, cat, "test")]
        train = [s.path for s in list_split(root, cat, "train")]
        return _frames(test, hw, n), _frames(train, hw, shots)
    except PackdError:
        rng = np.random.default_rng(0)
        console.print(f"[yellow]no images of {cat!r} under {root}: timing random frames")
        return (rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8), rng.integers(0, 256, (shots, *hw, 3), dtype=np.uint8))


def _targets(target: Path, precisions: list[str], out: Path, max_batch: int, max_shots: int):
    """(checkpoint, {precision: bundle}) from a checkpoint (bundles exported next to OUT) or a bundle."""
    from packd_runtime.manifest import read_manifest

    from packd.checkpoint import read_config

    if (target / "manifest.json").is_file():
        manifest = read_manifest(target)
        ckpt = Path(manifest["checkpoint"]["path"])
        if not (ckpt / "config.json").is_file():
            raise PackdError(f"the bundle's checkpoint {ckpt} is not here: PyTorch rows need it")
        return ckpt, {manifest["precision"]: target}
    read_config(target)
    from packd_export.bundle import export_bundle

    bundles = {}
    for p in precisions:
        path = out.parent / f"{out.name}_bundles" / p
        console.print(f"exporting {p} bundle to {path}")
        export_bundle(target, path, precision=p, max_batch=max_batch, max_shots=max_shots)
        bundles[p] = path
    return target, bundles


@app.command()
def main(
    target: Annotated[Path, typer.Argument(help="A bundle (benchmarked as is) or a checkpoint (bundles exported per --precisions).")],
    out: Annotated[Path, typer.Option(help="Result files: OUT.json, OUT.md, OUT.png.")] = Path("benchmarks/results/bench"),
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    precisions: Annotated[str, typer.Option(help="Bundle precisions to export when TARGET is a checkpoint.")] = "fp32,fp16,int8",
    iters: Annotated[int, typer.Option(help="Timed calls per backend and batch size.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 3,
    max_shots: Annotated[int, typer.Option(help="PACKD: changeover timed for k = 1..max-shots support images.")] = 8,
    data: Annotated[Optional[Path], typer.Option(help="Dataset root for real frames.", show_default="the checkpoint's training data")] = None,
    device: Annotated[str, typer.Option(help="PyTorch device: auto, cpu or cuda.")] = "auto",
) -> None:
    """Latency / throughput / changeover / memory / accuracy of PyTorch, ONNX Runtime and TensorRT."""
    from packd.checkpoint import read_config

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise PackdError(f"--batch-sizes must be comma-separated integers, got {batch_sizes!r}") from None
    if min(sizes) < 1 or iters < 1 or warmup < 0 or max_shots < 1:
        raise PackdError("batch sizes, --iters and --max-shots must be positive, --warmup non-negative")
    _pyplot()  # fail before the long run, not after it
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    ckpt, bundles = _targets(target, precisions.split(","), out, max(sizes), max_shots)
    config = read_config(ckpt)
    first = Detector.open(next(iter(bundles.values())), backend="onnxruntime")
    hw, few_shot = first.frame_hw, first.few_shot
    first.close()
    frames, supports = _inputs(config, hw, max(sizes), max_shots, data)
    acc_frames = frames[: min(8, len(frames))]

    runners: list[tuple[str, str, Any]] = [("pytorch", f"eager-fp32-{dev}", lambda: TorchRunner(ckpt, dev, "eager"))]
    if dev.startswith("cuda"):
        for mode in ("fp16", "bf16", "cudagraphs", "compile"):
            runners.append(("pytorch", f"{mode}-cuda", lambda m=mode: TorchRunner(ckpt, dev, m)))
    for p, b in bundles.items():
        runners.append(("runtime", f"onnxruntime-{p}", lambda b=b: Detector.open(b, backend="onnxruntime")))
        runners.append(("runtime", f"tensorrt-{p}", lambda b=b: Detector.open(b, backend="tensorrt", profile=True)))

    results: dict[str, Any] = {"machine": machine_info(), "target": str(target), "kind": config["kind"],
                               "image_size": config["input"]["image_size"], "frame": list(hw), "batch_sizes": sizes,
                               "iters": iters, "warmup": warmup, "backends": {}, "skipped": {}}
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
                name = f"{name}-{'cuda' if runner.backend.cuda else 'cpu'}"
            row: dict[str, Any] = {"batches": {}, "changeover": {}}
            if few_shot:
                set_supports = runner.set_supports if family == "pytorch" else runner.prototypes
                for k in range(1, max_shots + 1):
                    row["changeover"][k] = time_calls(lambda k=k: set_supports(supports[:k]), 1, 5, k)["median_ms"]
                set_supports(supports[:2])
            call = runner if family == "pytorch" else partial(_detect, runner)
            for b in sizes:
                stats = time_calls(lambda b=b: call(frames[:b]), warmup, iters, b)
                if family == "pytorch":
                    stats["gpu_compute_ms"] = runner.compute_ms(frames[:b])
                elif runner.backend.name == "tensorrt":
                    stats |= runner.backend.last_timings()
                row["batches"][b] = stats
            outputs = call(acc_frames)
            if reference is None:
                reference = outputs  # the first row is PyTorch eager FP32
            row["accuracy_vs_pytorch_fp32"] = accuracy(reference, outputs)
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
    write_json(out.with_suffix(".json"), results)
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    console.print(markdown(results))


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"Machine: {m.get('gpu') or m['cpu']} ({m['cpu_count']} CPU threads), torch {m['torch']}, "
             f"onnxruntime {m['onnxruntime']}, TensorRT {m.get('tensorrt')}; {r['kind']} at {r['image_size']} px, "
             f"frames {r['frame'][0]}x{r['frame'][1]} uint8; {r['iters']} timed calls after {r['warmup']} warm-up.", "",
             "| backend | batch | latency median ms | p90 | p99 | min | throughput img/s | GPU compute ms | max map err / range | score rank (Spearman) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["backends"].items():
        acc = row["accuracy_vs_pytorch_fp32"]
        for b, s in row["batches"].items():
            gpu = s.get("gpu_compute_ms") or s.get("compute_ms")
            lines.append(f"| {name} | {b} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {s['min_ms']:.2f} "
                         f"| {s['throughput_img_s']:.1f} | {'%.2f' % gpu if gpu else '-'} | {acc['max_map_err_rel']:.2e} "
                         f"| {acc['score_spearman']:.4f} | {row['peak_rss_mb'] or 0:.0f} |")
    changeover = {n: row["changeover"] for n, row in r["backends"].items() if row["changeover"]}
    if changeover:
        ks = list(next(iter(changeover.values())))
        lines += ["", "Changeover (support graph), median ms:", "",
                  "| backend | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        lines += [f"| {n} | " + " | ".join(f"{v[k]:.1f}" for k in ks) + " |" for n, v in changeover.items()]
    if "runtime_overhead" in r:
        lines += ["", "Runtime overhead (Detector.detect vs the raw ONNX Runtime session call, fp32, median):", "",
                  "| batch | raw ms | Detector ms | overhead ms | overhead % |", "|---|---|---|---|---|"]
        lines += [f"| {b} | {o['raw_median_ms']:.2f} | {o['detector_median_ms']:.2f} | {o['overhead_ms']:.3f} | {o['overhead_pct']:.1f} |"
                  for b, o in r["runtime_overhead"].items()]
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


def run() -> None:
    """Console entry point of `packd-bench`."""
    run_app(app, prog_name="packd-bench")


if __name__ == "__main__":
    run()
