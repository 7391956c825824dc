"""`packd` command line: data, train, eval, demo. Bad input exits non-zero with one line saying why."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

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


PRESETS = {  # --preset paper: the papers' settings (too slow to train on a CPU)
    "packd": dict(teacher="wide_resnet50_2", image_size=256, lr=5e-4, epochs=100, batch_size=32, prototypes=20, tau=0.05),
    "rd": dict(teacher="wide_resnet50_2", image_size=256, lr=0.005, epochs=200, batch_size=16),
    "memkd": dict(teacher="wide_resnet50_2", image_size=256, lr=0.005, epochs=200, batch_size=16, slots=50),
}
DEFAULTS = dict(teacher="wide_resnet50_2", image_size=256, lr=None, epochs=20, batch_size=16, prototypes=20, tau=0.05, slots=50)


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset root (MVTec AD / MPDD layout or VisA).")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write (updated every epoch).")],
    model: Annotated[str, typer.Option(help="Model kind: rd, memkd (per category) or packd (meta-trained few-shot).")] = "rd",
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated categories to train on (default: all in DATA). For packd: the meta-training categories, never the targets.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="'paper': the paper's settings (WRN50, 256 px, 100 epochs for packd); explicit options still win.")] = None,
    teacher: Annotated[Optional[str], typer.Option(help=f"timm teacher [default: wide_resnet50_2]: wide_resnet50_2 (papers), resnet18, {OFFLINE_TEACHER} (weights ship with packd), ...")] = None,
    teacher_weights: Annotated[Optional[Path], typer.Option(help="Local teacher weights (.safetensors or .pth) for air-gapped machines.")] = None,
    random_teacher: Annotated[bool, typer.Option(help="Randomly initialise the teacher (testing only: scores are meaningless).")] = False,
    image_size: Annotated[Optional[int], typer.Option(help="Square input side in pixels.", show_default="256")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.", show_default="20")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch; for packd the queries per batch, split over --categories-per-batch.", show_default="16")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.", show_default="0.005 for rd/memkd, 5e-4 for packd")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run found in OUT.")] = True,
    shots: Annotated[int, typer.Option(help="packd: support images per query in meta-training.")] = 2,
    prototypes: Annotated[Optional[int], typer.Option(help="packd: prototypes L per support image and stage.", show_default="20")] = None,
    rotations: Annotated[int, typer.Option(help="packd: support rotations (1-4: 0/90/180/270 degrees), in training and at test time.")] = 4,
    categories_per_batch: Annotated[int, typer.Option(help="packd: categories per batch (the contrastive negatives come from the others).")] = 4,
    cds_weight: Annotated[float, typer.Option(help="packd: contrastive distillation weight lambda1 (0 = PEIM only).")] = 0.5,
    orth_weight: Annotated[float, typer.Option(help="packd: prototype orthogonality weight lambda2.")] = 0.5,
    tau: Annotated[Optional[float], typer.Option(help="packd: contrastive temperature.", show_default="0.05")] = None,
    slots: Annotated[Optional[int], typer.Option(help="memkd: memory slots L per decoder stage.", show_default="50")] = None,
    exemplars: Annotated[int, typer.Option(help="memkd: normal exemplar images for normality embedding learning.")] = 16,
) -> None:
    """Train a model: RD or MemKD on the listed categories (normally one), PACKD meta-trained on many."""
    from packd.train import (
        MemKDSettings,
        PACKDSettings,
        TrainSettings,
        train_memkd,
        train_packd,
        train_rd,
    )

    if model not in PRESETS:
        raise PackdError(f"unknown --model {model!r}; available: {', '.join(PRESETS)}")
    if preset not in (None, "paper"):
        raise PackdError(f"unknown --preset {preset!r}; available: paper")
    given = dict(teacher=teacher, image_size=image_size, lr=lr, epochs=epochs, batch_size=batch_size,
                 prototypes=prototypes, tau=tau, slots=slots)
    base = {**DEFAULTS, "lr": 5e-4 if model == "packd" else 0.005, **(PRESETS[model] if preset else {})}
    o = {k: v if v is not None else base[k] for k, v in given.items()}
    _check_positive(image_size=o["image_size"], epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"])
    settings = TrainSettings(epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"], seed=seed, device=device)
    common = (data, categories, out, o["teacher"], teacher_weights, random_teacher, o["image_size"], settings)
    if model == "rd":
        train_rd(*common, resume=resume)
    elif model == "memkd":
        train_memkd(*common, memkd=MemKDSettings(slots=o["slots"], exemplars=exemplars), resume=resume)
    else:
        per_batch = max(1, categories_per_batch)
        packd = PACKDSettings(shots=shots, n_prototypes=o["prototypes"], rotations=rotations,
                              queries=max(1, o["batch_size"] // per_batch), categories_per_batch=per_batch,
                              cds_weight=cds_weight, orth_weight=orth_weight, tau=o["tau"])
        train_packd(*common, packd=packd, resume=resume)
    console.print(f"checkpoint written to {out}")


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if v <= 0:
            raise PackdError(f"--{name.replace('_', '-')} must be positive, got {v}")


def _print_fewshot(report: dict) -> None:
    table = Table(title=f"{report['model']} {report['shots']}-shot, {report['runs']} support sets (mean ± std)")
    keys = ("image_auroc", "pixel_auroc", "aupro")
    table.add_column("category")
    for k in keys:
        table.add_column(k, justify="right")
    for cat, m in {**report["categories"], "mean": report}.items():
        table.add_row(cat, *(f"{m['mean'][k]:.3f} ± {m['std'][k]:.3f}" for k in keys))
    console.print(table)


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
    data: Annotated[Path, typer.Option(help="Dataset root with test images and masks (any dataset: cross-dataset works).")],
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated categories.", show_default="rd/memkd: those trained on; packd: every category in DATA it was not trained on")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report (per category and mean) to this JSON file.")] = None,
    overlays: Annotated[Optional[Path], typer.Option(help="Write PNG overlays (image | map | ground truth) into this folder (full-shot evaluation).")] = None,
    shots: Annotated[Optional[int], typer.Option(help="Few-shot protocol: k normal support images per run, drawn from train/good (required for packd).")] = None,
    runs: Annotated[int, typer.Option(help="Few-shot protocol: support sets per category (mean and std over them).")] = 10,
    seed: Annotated[int, typer.Option(help="Few-shot protocol: seed of the support draws (same seed, same sets for every model).")] = 0,
    supports_from: Annotated[Optional[Path], typer.Option(help="Few-shot protocol: reuse the support sets saved in an earlier --json report.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
) -> None:
    """Evaluate a checkpoint: image AUROC, pixel AUROC, AUPRO (and F1-max), per category and mean."""
    from packd.data import list_categories
    from packd.evaluate import evaluate
    from packd.fewshot import evaluate_fewshot
    from packd.models import Scorer, load_model
    from packd.preprocess import InputSpec

    _check_positive(batch_size=batch_size)
    if shots is None and supports_from is None:
        _print_report(evaluate(checkpoint, data, categories, json_out, overlays, batch_size, device))
        return
    model, config = load_model(checkpoint)
    if not categories and config["kind"] == "packd":
        trained = set(config["train"].get("categories", []))
        categories = [c for c in list_categories(data) if c not in trained]
        if not categories:
            raise PackdError(f"every category in {data} was used in meta-training; pass --categories")
    spec = InputSpec.from_dict(config["input"])
    report = evaluate_fewshot(Scorer(model, spec.image_size), spec, data, categories or config["train"]["categories"],
                              shots or 0, runs, seed, json_out, supports_from, batch_size, device,
                              meta={"checkpoint": str(checkpoint), "model": config["kind"],
                                    "teacher": config["teacher"]["name"], "image_size": spec.image_size})
    _print_fewshot(report)


DEMO_TRAIN = ["grid", "carpet", "stripes", "disc", "nut", "plate"]


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, checkpoint, bundle, overlays and reports.")] = Path("runs/demo"),
    category: Annotated[str, typer.Option(help="Held-out synthetic category to deploy on (never seen in meta-training).")] = "tiles",
    epochs: Annotated[int, typer.Option(help="Meta-training epochs.")] = 4,
    shots: Annotated[int, typer.Option(help="Support images at the product changeover.")] = 4,
    image_size: Annotated[int, typer.Option(help="Square input side in pixels.")] = 128,
) -> None:
    """The main job on built-in defaults: synthetic data -> meta-train PACKD (offline teacher) -> export a
    bundle -> torch-free runtime: changeover on an unseen category, detection, overlays -> benchmark summary."""
    import numpy as np
    from packd_bench.bench import TorchRunner, time_calls
    from packd_export.bundle import export_bundle
    from packd_runtime import Detector
    from packd_runtime.atomic import write_json

    from packd.data import list_split
    from packd.metrics import image_auroc, pixel_metrics
    from packd.overlays import save_overlay
    from packd.preprocess import load_image, load_mask
    from packd.synth import synthesize
    from packd.train import PACKDSettings, TrainSettings, train_packd

    if category in DEMO_TRAIN:
        raise PackdError(f"--category must be held out from meta-training ({', '.join(DEMO_TRAIN)})")
    data = out / "data"
    console.rule("1/5 synthetic data")
    synthesize(data, seed=0, size=image_size)
    console.rule(f"2/5 meta-train PACKD on {', '.join(DEMO_TRAIN)} ({OFFLINE_TEACHER}, {image_size} px, {epochs} epochs)")
    ckpt = train_packd(data, DEMO_TRAIN, out / "checkpoint", OFFLINE_TEACHER, image_size=image_size,
                       settings=TrainSettings(epochs=epochs, lr=0.005), packd=PACKDSettings(shots=2), resume=False)
    console.rule("3/5 export the bundle (support + query graphs, fp32 ONNX)")
    export_bundle(ckpt, out / "bundle", max_batch=16, max_shots=8)
    console.rule(f"4/5 torch-free runtime (packd_runtime): changeover to {category!r} with {shots} normal images, detect its test set")
    test = list_split(data, category, "test")
    frames = np.stack([load_image(s.path) for s in test])
    masks = np.stack([load_mask(s.mask, frames.shape[1:3]) if s.mask else np.zeros(frames.shape[1:3], bool) for s in test])
    supports = np.stack([load_image(s.path) for s in list_split(data, category, "train")[:shots]])
    with Detector.open(out / "bundle") as det:
        console.print(f"backend: {det.reason}")
        det.prototypes(supports)
        det.calibrate(np.stack([load_image(s.path) for s in list_split(data, category, "train")[shots:shots + 16]]))
        result = det.detect(frames)
    labels = np.array([s.label for s in test])
    lo, hi = float(result.maps.min()), float(result.maps.max())
    for s, image, amap, mask in zip(test, frames, result.maps, masks):
        save_overlay(out / "overlays" / category / f"{s.defect}_{s.path.stem}.png", image, amap, mask, lo, hi)
    report = {"category": category, "shots": shots, "threshold": result.threshold,
              "image_auroc": image_auroc(labels, result.scores), **pixel_metrics(result.maps, masks),
              "flagged": int(result.labels.sum()), "anomalous": int(labels.sum()), "images": len(labels)}
    write_json(out / "report.json", report)
    table = Table(title=f"PACKD {shots}-shot on unseen {category!r}")
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        table.add_column(k, justify="right")
    table.add_row(*(f"{report[k]:.3f}" for k in ("image_auroc", "pixel_auroc", "aupro")))
    console.print(table)
    console.print(f"flagged {report['flagged']} of {report['images']} images ({report['anomalous']} anomalous) "
                  f"at the calibrated threshold {result.threshold:.3f}; overlays: {out / 'overlays' / category}")
    console.rule("5/5 benchmark summary (median latency per call, CPU)")
    bench = Table()
    for col in ("backend", "batch 1 ms", "batch 8 ms", "img/s at 8"):
        bench.add_column(col, justify="right")
    torch_runner = TorchRunner(ckpt, "cpu")
    torch_runner.set_supports(supports)
    with Detector.open(out / "bundle", backend="onnxruntime") as det:
        det.prototypes(supports)
        for name, call in (("PyTorch eager", torch_runner), ("ONNX Runtime", det.detect)):
            one, eight = (time_calls(lambda b=b: call(frames[:b]), 2, 10, b) for b in (1, 8))
            bench.add_row(name, f"{one['median_ms']:.1f}", f"{eight['median_ms']:.1f}", f"{eight['throughput_img_s']:.0f}")
    console.print(bench)
    console.print(f"full benchmarks: packd-bench {out / 'bundle'}   report: {out / 'report.json'}")


def run_app(typer_app: typer.Typer, args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run a typer app as a console command: a PackdError becomes one line on stderr and exit code 2."""
    try:
        typer_app(args, prog_name=prog_name)
    except PackdError as e:
        Console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False, soft_wrap=True)
        sys.exit(2)


def main() -> None:
    """Console entry point of `packd`."""
    run_app(app)


if __name__ == "__main__":
    main()
