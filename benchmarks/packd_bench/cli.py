"""`packd-bench BUNDLE_OR_CHECKPOINT`: benchmark every backend available on this machine. The options only: the
work (`packd_bench.benchmark`, which imports torch) is imported when the command runs, so `--help` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from packd.console import run_app

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def main(
    target: Annotated[Path, typer.Argument(
        help="A bundle (benchmarked as is) or a checkpoint (bundles exported per --precisions).")],
    out: Annotated[Path, typer.Option(
        help="Where the results go, a file name without its suffix: OUT.json, OUT.md and OUT.png are written (and "
             "named at the end).")] = Path("benchmarks/results/bench"),
    checkpoint: Annotated[Path | None, typer.Option(
        help="For a bundle TARGET: the checkpoint it was exported from, for the PyTorch rows and the accuracy "
             "reference (checked against the manifest's weight hash).")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    precisions: Annotated[str, typer.Option(help="Bundle precisions to export when TARGET is a checkpoint.")] = (
        "fp32,fp16,int8"),
    iters: Annotated[int, typer.Option(help="Timed calls per backend and batch size.")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 3,
    max_shots: Annotated[int, typer.Option(
        help="Few-shot kinds: changeover timed for k = 1..max-shots support images.")] = 8,
    data: Annotated[Path | None, typer.Option(
        help="Dataset root for real frames.", show_default="the checkpoint's training data")] = None,
    device: Annotated[str, typer.Option(help="PyTorch device: auto, cpu or cuda.")] = "auto",
) -> None:
    """Latency / throughput / changeover / memory / accuracy of PyTorch, ONNX Runtime and TensorRT."""
    from packd_bench.benchmark import benchmark

    benchmark(target, out=out, checkpoint=checkpoint, batch_sizes=batch_sizes, precisions=precisions, iters=iters,
              warmup=warmup, max_shots=max_shots, data=data, device=device)


def run() -> None:
    """Console entry point of `packd-bench`."""
    run_app(app, prog_name="packd-bench")


if __name__ == "__main__":
    run()
