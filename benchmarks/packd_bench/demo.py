"""`packd-demo`: the main job on built-in defaults, end to end. It sits at the top of the package
stack (training, export, runtime and benchmarks), so nothing imports it back.

synthetic data -> meta-train PACKD (offline teacher) -> export a bundle -> torch-free runtime:
changeover on an unseen category, detection, overlays -> benchmark summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from packd.console import run_app
from packd.data import list_split
from packd.errors import PackdError
from packd.metrics import image_auroc, pixel_metrics
from packd.overlays import save_overlay
from packd.preprocess import load_frames, load_mask
from packd.synth import synthesize
from packd.teachers import OFFLINE_PACKAGE_TEACHER
from packd.train import configure, train
from packd_bench.bench import TorchRunner, time_calls
from packd_export.bundle import export_bundle
from packd_runtime import Detector
from packd_runtime.atomic import write_json

console = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
DEMO_TRAIN = ["grid", "carpet", "stripes", "disc", "nut", "plate"]


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, checkpoint, bundle, overlays and reports.")
                   ] = Path("runs/demo"),
    category: Annotated[str, typer.Option(
        help="Held-out synthetic category to deploy on (never seen in meta-training).")] = "tiles",
    epochs: Annotated[int, typer.Option(help="Meta-training epochs.", min=1)] = 4,
    shots: Annotated[int, typer.Option(help="Support images at the product changeover.", min=1, max=8)] = 4,
    image_size: Annotated[int, typer.Option(help="Square input side in pixels.", min=64)] = 128,
) -> None:
    """The main job on built-in defaults: synthetic data -> meta-train PACKD (offline teacher) -> export a
    bundle -> torch-free runtime: changeover on an unseen category, detection, overlays -> benchmark summary."""
    if category in DEMO_TRAIN:
        raise PackdError(f"--category must be held out from meta-training ({', '.join(DEMO_TRAIN)})")
    data = out / "data"
    console.rule("1/5 synthetic data")
    synthesize(data, seed=0, size=image_size)
    console.rule(f"2/5 meta-train PACKD on {', '.join(DEMO_TRAIN)} ({OFFLINE_PACKAGE_TEACHER}, {image_size} px, "
                 f"{epochs} epochs)")
    run, settings = configure("packd", teacher=OFFLINE_PACKAGE_TEACHER, image_size=image_size, epochs=epochs, lr=0.005,
                              shots=2)
    ckpt = train("packd", data=data, categories=DEMO_TRAIN, out=out / "checkpoint", run=run, settings=settings,
                 resume=False)
    console.rule("3/5 export the bundle (support + query graphs, fp32 ONNX)")
    export_bundle(ckpt, out / "bundle", max_batch=16, max_shots=8)
    console.rule(f"4/5 torch-free runtime (packd_runtime): changeover to {category!r} with {shots} normal images, "
                 "detect its test set")
    test = list_split(data, category, "test")
    train_images = [s.path for s in list_split(data, category, "train")]
    frames = load_frames([s.path for s in test])
    masks = np.stack([load_mask(s.mask, frames.shape[1:3]) if s.mask else np.zeros(frames.shape[1:3], bool)
                      for s in test])
    supports = load_frames(train_images[:shots])
    with Detector.open(out / "bundle") as det:
        console.print(f"backend: {det.reason}")
        det.prototypes(supports)
        det.calibrate(load_frames(train_images[shots:shots + 16]))
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
            one, eight = (time_calls(lambda b=b, call=call: call(frames[:b]), 2, 10, b) for b in (1, 8))
            bench.add_row(name, f"{one['median_ms']:.1f}", f"{eight['median_ms']:.1f}",
                          f"{eight['throughput_img_s']:.0f}")
    console.print(bench)
    console.print(f"full benchmarks: packd-bench {out / 'bundle'} --checkpoint {ckpt}   report: {out / 'report.json'}")


def main() -> None:
    """Console entry point of `packd-demo`."""
    run_app(app, prog_name="packd-demo")


if __name__ == "__main__":
    main()
