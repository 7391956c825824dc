"""`packd` command line: data, train, eval, demo. Bad input exits non-zero with one line saying why."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from packd.errors import PackdError

app = typer.Typer(help="Few-shot industrial anomaly detection: train, evaluate, export.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: synthetic generator and layout converters.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

OFFLINE_TEACHER = "tf_efficientnet_lite0"


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the MVTec-layout dataset into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same images.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated subset of the synthetic categories (default all).")] = None,
    photos: Annotated[bool, typer.Option(help="Also write photo_* categories: scikit-image texture photos with painted defects (needs packd[photos]).")] = False,
    train: Annotated[int, typer.Option(help="train/good images per category.")] = 60,
    test_good: Annotated[int, typer.Option(help="test/good images per category.")] = 20,
    test_defect: Annotated[int, typer.Option(help="test images per defect type.")] = 10,
) -> None:
    """Write a synthetic anomaly-detection dataset in the MVTec AD layout."""
    from packd.synth import Counts, synthesize, synthesize_photos

    counts = Counts(train, test_good, test_defect)
    cats = synthesize(out, seed, size, categories.split(",") if categories else None, counts)
    if photos:
        cats += synthesize_photos(out, seed, size, counts=counts)
    console.print(f"wrote {len(cats)} categories to {out}: {', '.join(cats)}")


@data_app.command("convert-visa")
def data_convert_visa(
    src: Annotated[Path, typer.Argument(help="VisA root (with split_csv/1cls.csv).")],
    out: Annotated[Path, typer.Option(help="Empty folder to write the MVTec-layout copy into.")],
) -> None:
    """Copy VisA into the MVTec AD layout (masks binarised)."""
    from packd.data import convert_visa

    cats = convert_visa(src, out)
    console.print(f"converted {len(cats)} VisA categories to {out}")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset root (MVTec AD / MPDD layout or VisA).")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write (updated every epoch).")],
    model: Annotated[str, typer.Option(help="Model kind: rd.")] = "rd",
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated categories to train on (default: all in DATA).")] = None,
    teacher: Annotated[str, typer.Option(help=f"timm teacher: wide_resnet50_2 (papers), resnet18, {OFFLINE_TEACHER} (weights ship with packd), ...")] = "wide_resnet50_2",
    teacher_weights: Annotated[Optional[Path], typer.Option(help="Local teacher weights (.safetensors or .pth) for air-gapped machines.")] = None,
    random_teacher: Annotated[bool, typer.Option(help="Randomly initialise the teacher (testing only: scores are meaningless).")] = False,
    image_size: Annotated[int, typer.Option(help="Square input side in pixels.")] = 256,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.005,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run found in OUT.")] = True,
) -> None:
    """Train a model; RD trains one model on the listed categories (normally one)."""
    from packd.train import TrainSettings, train_rd

    if model != "rd":
        raise PackdError(f"unknown --model {model!r}; available: rd")
    _check_positive(image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    train_rd(data, categories, out, teacher, teacher_weights, random_teacher, image_size, settings, resume)
    console.print(f"checkpoint written to {out}")


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if v <= 0:
            raise PackdError(f"--{name.replace('_', '-')} must be positive, got {v}")


def _print_report(report: dict) -> None:
    table = Table(title=f"{report['model']} / {report['teacher']} @ {report['image_size']} px")
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
    table.add_column("category")
    for k in keys:
        table.add_column(k, justify="right")
    for cat, m in {**report["categories"], "mean": report["mean"]}.items():
        table.add_row(cat, *(f"{m[k]:.3f}" for k in keys))
    console.print(table)


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder written by `packd train`.")],
    data: Annotated[Path, typer.Option(help="Dataset root with test images and masks.")],
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated categories (default: those the checkpoint was trained on).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report (per category and mean) to this JSON file.")] = None,
    overlays: Annotated[Optional[Path], typer.Option(help="Write PNG overlays (image | map | ground truth) into this folder.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
) -> None:
    """Evaluate a checkpoint: image AUROC, pixel AUROC, AUPRO, F1-max."""
    from packd.evaluate import evaluate

    _check_positive(batch_size=batch_size)
    _print_report(evaluate(checkpoint, data, categories, json_out, overlays, batch_size, device))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, checkpoint, report and overlays.")] = Path("runs/demo"),
    category: Annotated[str, typer.Option(help="Synthetic category to train on.")] = "capsule",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    image_size: Annotated[int, typer.Option(help="Square input side in pixels.")] = 128,
) -> None:
    """The main job on built-in defaults: synthetic data -> train RD (offline teacher) -> evaluate -> overlays."""
    from packd.evaluate import evaluate
    from packd.synth import synthesize
    from packd.train import TrainSettings, train_rd

    console.rule("1/3 synthetic data")
    synthesize(out / "data", seed=0, size=image_size, categories=[category])
    console.rule(f"2/3 train RD on {category!r} ({OFFLINE_TEACHER} teacher, {image_size} px, {epochs} epochs)")
    train_rd(out / "data", category, out / "checkpoint", OFFLINE_TEACHER, image_size=image_size,
             settings=TrainSettings(epochs=epochs, batch_size=8), resume=False)
    console.rule("3/3 evaluate")
    report = evaluate(out / "checkpoint", out / "data", category, out / "report.json", out / "overlays")
    _print_report(report)
    console.print(f"report: {out / 'report.json'}   overlays: {out / 'overlays' / category}")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except PackdError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
