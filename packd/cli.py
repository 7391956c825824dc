"""`packd` command line: data, train, eval. Bad input exits with code 2 and one line saying why.

`packd train`'s settings options are generated from `RunConfig` and every registered kind's settings
dataclass: their help, bounds and defaults (per kind, presets included) are written once, there.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from packd.console import run_app
from packd.errors import PackdError
from packd.evaluation.tiling_options import (
    MAP_SCALE_HELP,
    MEMORY_HELP,
    OVERLAP_HELP,
    ROI_HELP,
    TILE_HELP,
    parse_frame_size,
    parse_roi,
    tile_options,
    untiled_warning,
)
from packd.methods import METHODS
from packd.models.score_settings import BORDER_HELP, PROTOTYPE_SCORE_HELP, STAGE_WEIGHTS_HELP, scoring_overrides
from packd.training.settings import (
    CACHE_HELP,
    DEFAULT_CACHE_GB,
    DEVICE_HELP,
    RunConfig,
    check_cache_gb,
    cli_fields,
    default_of,
)

app = typer.Typer(help="Few-shot industrial anomaly detection: data, training, evaluation.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None, add_completion=False)
data_app = typer.Typer(help="Datasets: synthetic generator and layout converters.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the MVTec-layout dataset into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same images.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    categories: Annotated[str | None, typer.Option(
        help="Comma-separated subset of the synthetic categories (default all).")] = None,
    photos: Annotated[bool, typer.Option(
        help="Also write photo_* categories: scikit-image texture photos with painted defects "
             "(needs the [photos] extra).")] = False,
    train: Annotated[int, typer.Option(help="train/good images per category.")] = 60,
    test_good: Annotated[int, typer.Option(help="test/good images per category.")] = 20,
    test_defect: Annotated[int, typer.Option(help="test images per defect type.")] = 10,
    defect_window: Annotated[int, typer.Option(
        help="Size each defect to a random square of this many pixels instead of the whole image: small defects "
             "on large frames, as on a line camera (e.g. --size 512 --defect-window 128).",
        show_default="0: sized to the image")] = 0,
) -> None:
    """Write a synthetic anomaly-detection dataset in the MVTec AD layout."""
    from packd.data.synth import Counts, synthesize, synthesize_photos

    counts = Counts(train=train, test_good=test_good, test_defect=test_defect)
    cats = synthesize(out, seed=seed, size=size, categories=categories.split(",") if categories else None,
                      counts=counts, defect_window=defect_window)
    if photos:
        cats += synthesize_photos(out, seed=seed, size=size, counts=counts, defect_window=defect_window)
    console.print(f"wrote {len(cats)} categories to {out}: {', '.join(cats)}")


@data_app.command("convert-visa")
def data_convert_visa(
    src: Annotated[Path, typer.Argument(help="VisA root (with split_csv/1cls.csv).")],
    out: Annotated[Path, typer.Option(help="Empty folder to write the MVTec-layout copy into.")],
) -> None:
    """Copy VisA into the MVTec AD layout (masks binarised)."""
    from packd.data.datasets import convert_visa

    cats = convert_visa(src, out)
    console.print(f"converted {len(cats)} VisA categories to {out}")


def _cli_type(cls: type, name: str) -> Any:
    tp = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def setting_options() -> dict[str, tuple[Any, str, str]]:
    """name -> (type, help, default text) for every settings field that is a `packd train` option.

    A field of several kinds (e.g. orth_weight) is one option; its help names the kinds and its
    default text gives each kind's default, presets named 'default' included."""
    options: dict[str, tuple[Any, str, str]] = {}
    for f in cli_fields(RunConfig):
        base = default_of(f)
        special = [f"{k}: {m.presets['default'][f.name]}" for k, m in METHODS.items()
                   if f.name in m.presets.get("default", {})]
        options[f.name] = (_cli_type(RunConfig, f.name), f.metadata["help"], "; ".join([str(base), *special]))
    owners: dict[str, list[tuple[str, Any, str]]] = {}
    for kind, m in METHODS.items():
        for f in cli_fields(m.settings):
            owners.setdefault(f.name, []).append((kind, default_of(f), f.metadata["help"]))
    for name, entries in owners.items():
        kinds = [k for k, _, _ in entries]
        defaults = "; ".join(f"{k}: {d}" for k, d, _ in entries) if len(entries) > 1 else str(entries[0][1])
        help_text = f"{', '.join(kinds)}: {entries[0][2]}"
        options[name] = (_cli_type(METHODS[kinds[0]].settings, name), help_text, defaults)
    return options


def train(**options: Any) -> None:
    """Train a model: RD or MemKD on the listed categories (normally one), PACKD meta-trained on many."""
    from packd.training import distributed
    from packd.training.train import configure
    from packd.training.train import train as run_training

    kind, deprecated, data, out = options.pop("kind"), options.pop("model"), options.pop("data"), options.pop("out")
    if deprecated is not None:
        if kind is not None and kind != deprecated:
            raise PackdError(f"--model {deprecated} and --kind {kind} disagree: give --kind only")
        err_console.print("--model is deprecated and goes in the next release: use --kind", markup=False)
        kind = kind or deprecated
    kind = kind or "rd"
    categories, preset, resume = options.pop("categories"), options.pop("preset"), options.pop("resume")
    tile, cache_gb = options.pop("tile"), options.pop("teacher_cache_gb")
    check_cache_gb(cache_gb)
    run, settings = configure(kind, preset, **options)
    try:
        run_training(kind, data=data, out=out, categories=categories, run=run, settings=settings, resume=resume,
                     tile=tile or 0, teacher_cache_gb=cache_gb)
        if distributed.is_main():
            console.print(f"checkpoint written to {out}")
    finally:
        distributed.shutdown()  # under torchrun: leave the process group before the process ends


def _train_signature() -> inspect.Signature:
    kw = inspect.Parameter.KEYWORD_ONLY
    kinds = "; ".join(f"{k} ({m.summary})" for k, m in METHODS.items())
    params = [
        inspect.Parameter("data", kw, annotation=Annotated[Path, typer.Option(
            help="Dataset root (MVTec AD / MPDD layout or VisA).")]),
        inspect.Parameter("out", kw, annotation=Annotated[Path, typer.Option(
            help="Checkpoint folder to write (updated every epoch).")]),
        inspect.Parameter("kind", kw, default=None, annotation=Annotated[str | None, typer.Option(
            help=f"The kind to train: {kinds}.", show_default="rd")]),
        inspect.Parameter("model", kw, default=None, annotation=Annotated[str | None, typer.Option(
            help="Deprecated name of --kind (kept for one release).", hidden=True)]),
        inspect.Parameter("categories", kw, default=None, annotation=Annotated[str | None, typer.Option(
            help="Comma-separated categories to train on (default: all in DATA). For few-shot kinds: the "
                 "meta-training categories, never the targets.")]),
        inspect.Parameter("preset", kw, default=None, annotation=Annotated[str | None, typer.Option(
            help="'paper': the paper's settings (WRN50, 256 px, the paper's epochs); explicit options win.")]),
        inspect.Parameter("resume", kw, default=True, annotation=Annotated[bool, typer.Option(
            help="Continue an interrupted run found in OUT.")]),
        inspect.Parameter("tile", kw, default=None, annotation=Annotated[int | None, typer.Option(
            help="Line-resolution frames: train on random crops of this many pixels of the training images (new "
                 "each epoch), each resized to --image-size, as a tiled bundle sees its tiles; export and evaluate "
                 "with the same --tile.", show_default="the whole image", min=1)]),
        inspect.Parameter("teacher_cache_gb", kw, default=DEFAULT_CACHE_GB, annotation=Annotated[float, typer.Option(
            help=CACHE_HELP, min=0)]),
    ]
    for name, (tp, help_text, default) in setting_options().items():
        params.append(inspect.Parameter(name, kw, default=None, annotation=Annotated[tp | None, typer.Option(
            help=help_text, show_default=default)]))
    return inspect.Signature(params)


train.__signature__ = _train_signature()
app.command("train")(train)


def _print_fewshot(report: dict) -> None:
    table = Table(title=f"{report['kind']} {report['shots']}-shot, {report['runs']} support sets (mean ± std)")
    keys = ("image_auroc", "pixel_auroc", "aupro")
    table.add_column("category")
    for k in keys:
        table.add_column(k, justify="right")
    for cat, m in {**report["categories"], "mean": report}.items():
        table.add_row(cat, *(f"{m['mean'][k]:.3f} ± {m['std'][k]:.3f}" for k in keys))
    console.print(table)


def _warn(text: str) -> None:
    err_console.print(text, markup=False, soft_wrap=True)


def _print_report(report: dict) -> None:
    table = Table(title=f"{report['kind']} / {report['teacher']} @ {report['image_size']} px")
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
    data: Annotated[Path, typer.Option(
        help="Dataset root with test images and masks (any dataset: cross-dataset works).")],
    categories: Annotated[str | None, typer.Option(
        help="Comma-separated categories.",
        show_default="few-shot kinds: every category in DATA not meta-trained on; others: those trained on "
                     "that DATA has, else all")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the report (per category and mean) to this JSON file.")] = None,
    overlays: Annotated[Path | None, typer.Option(
        help="Write PNG overlays (image | map | ground truth) into this folder (full-shot evaluation).")] = None,
    shots: Annotated[int | None, typer.Option(
        help="Few-shot protocol: k normal support images per run, drawn from train/good (required for "
             "few-shot kinds).", min=1)] = None,
    runs: Annotated[int, typer.Option(
        help="Few-shot protocol: support sets per category (mean and std over them).", min=1)] = 10,
    seed: Annotated[int, typer.Option(
        help="Few-shot protocol: seed of the support draws (same seed, same sets for every model).")] = 0,
    supports_from: Annotated[Path | None, typer.Option(
        help="Few-shot protocol: reuse the support sets (and so k) saved in an earlier --json report.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.", min=1)] = 16,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    stage_weights: Annotated[str | None, typer.Option(help=STAGE_WEIGHTS_HELP)] = None,
    border: Annotated[int | None, typer.Option(help=BORDER_HELP)] = None,
    prototype_score: Annotated[float | None, typer.Option(help=PROTOTYPE_SCORE_HELP)] = None,
    prototypes: Annotated[str, typer.Option(
        help="Few-shot diagnostic: score each category with its own prototypes, the next category's (other) "
             "or zeros (zero). If the prototypes matter, other and zero score worse.")] = "own",
    tile: Annotated[int | None, typer.Option(
        help=TILE_HELP + " As a bundle exported with the same options computes (few-shot kinds: the --memory "
             "given, bounded as a bundle of the default --max-shots bounds it); metrics on the stitched maps.",
        show_default="no tiling: the whole image resized")] = None,
    frame_size: Annotated[str | None, typer.Option(
        help="With --tile: the frame size HxW images are resized to first.",
        show_default="each category's own (one size per category)")] = None,
    overlap: Annotated[int, typer.Option(help=OVERLAP_HELP)] = 0,
    roi: Annotated[list[str] | None, typer.Option(help=ROI_HELP, show_default="the whole frame")] = None,
    map_scale: Annotated[float | None, typer.Option(
        help=MAP_SCALE_HELP, show_default="the model's input size over --tile")] = None,
    memory: Annotated[str, typer.Option(help=MEMORY_HELP)] = "shared",
) -> None:
    """Evaluate a checkpoint: image AUROC, pixel AUROC, AUPRO (and F1-max), per category and mean."""
    from packd.evaluation.evaluate import evaluate, evaluation_categories
    from packd.evaluation.fewshot import evaluate_fewshot
    from packd.models.loading import load_scorer
    from packd.training.settings import check_device

    check_device(device)
    if tile is None and frame_size:
        raise PackdError("--frame-size describes a tiled evaluation: add --tile S")
    tiling = tile_options(tile, overlap, tuple(parse_roi(r) for r in roi or ()), map_scale,
                          parse_frame_size(frame_size), memory)
    scoring = scoring_overrides(stage_weights=stage_weights, border=border, prototype_score=prototype_score)
    if shots is None and supports_from is None:
        if prototypes != "own":
            raise PackdError("--prototypes other/zero is a few-shot diagnostic: give --shots K")
        _print_report(evaluate(checkpoint, data, categories, json_path=json_out, overlays=overlays,
                               batch_size=batch_size, device=device, scoring=scoring, tile=tiling, warn=_warn))
        return
    scorer, config = load_scorer(checkpoint, scoring)
    if warning := untiled_warning(config, tiling):
        _warn(warning)
    cats = evaluation_categories(config, data, categories, scorer.few_shot)
    meta = {"checkpoint": str(checkpoint), "kind": config["kind"], "teacher": config["teacher"]["name"],
            "image_size": scorer.spec.image_size}
    report = evaluate_fewshot(scorer, data, cats, shots=shots, runs=runs, seed=seed, json_path=json_out,
                              supports_from=supports_from, batch_size=batch_size, device=device, meta=meta,
                              swap=prototypes, tile=tiling)
    _print_fewshot(report)


def main() -> None:
    """Console entry point of `packd`."""
    run_app(app, prog_name="packd")


if __name__ == "__main__":
    main()
