"""`packd-demo`: the main job on built-in defaults, end to end. It sits at the top of the package
stack (training, export, runtime and benchmarks), so nothing imports it back.

synthetic data -> meta-train PACKD and write a training-free nearest-neighbour (kNN) checkpoint
(offline teacher) -> export both bundles -> torch-free runtime: the same changeover (same supports)
on an unseen category for both, detection, overlays from the better one -> benchmark summary.
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
from packd_runtime.atomic import check_report_path, write_report

console = Console()
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
DEMO_TRAIN = ["grid", "carpet", "stripes", "disc", "nut", "plate"]


def _deploy(bundle: Path, *, supports: np.ndarray, normals: np.ndarray, frames: np.ndarray, masks: np.ndarray,
            labels: np.ndarray) -> tuple[dict, object]:
    """One bundle in the runtime: changeover, calibration on normal images only, detection, metrics."""
    with Detector.open(bundle) as det:
        det.prototypes(supports)
        det.calibrate(normals)
        result = det.detect(frames)
    return {"image_auroc": image_auroc(labels, result.scores), **pixel_metrics(result.maps, masks),
            "threshold": result.threshold, "anomalous_flagged": int((result.labels & (labels == 1)).sum()),
            "normal_flagged": int((result.labels & (labels == 0)).sum())}, result


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, checkpoints, bundles, overlays and reports.")
                   ] = Path("runs/demo"),
    category: Annotated[str, typer.Option(
        help="Held-out synthetic category to deploy on (never seen in meta-training).")] = "tiles",
    epochs: Annotated[int, typer.Option(help="PACKD meta-training epochs.", min=1)] = 4,
    shots: Annotated[int, typer.Option(help="Support images at the product changeover.", min=1, max=8)] = 4,
    image_size: Annotated[int, typer.Option(help="Square input side in pixels (a multiple of 32).", min=64)] = 128,
) -> None:
    """The main job on built-in defaults: synthetic data -> meta-train PACKD and a training-free kNN checkpoint
    (offline teacher) -> export both bundles -> torch-free runtime: the same changeover on an unseen category
    for both, detection, overlays from the better one -> benchmark summary."""
    if category in DEMO_TRAIN:
        raise PackdError(f"--category must be held out from meta-training ({', '.join(DEMO_TRAIN)})")
    data = out / "data"
    check_report_path(out / "report.json")
    console.rule("1/5 synthetic data")
    synthesize(data, seed=0, size=image_size)
    console.rule(f"2/5 meta-train PACKD on {', '.join(DEMO_TRAIN)} ({OFFLINE_PACKAGE_TEACHER}, {image_size} px, "
                 f"{epochs} epochs); the kNN kind needs no training")
    ckpts = {}
    for kind, options in (("knn", {}), ("packd", {"epochs": epochs, "lr": 0.005, "shots": 2})):
        run, settings = configure(kind, teacher=OFFLINE_PACKAGE_TEACHER, image_size=image_size, **options)
        ckpts[kind] = train(kind, data=data, categories=DEMO_TRAIN, out=out / f"checkpoint_{kind}", run=run,
                            settings=settings, resume=False)
    console.rule("3/5 export the bundles (support + query graphs, fp32 ONNX)")
    for kind, ckpt in ckpts.items():
        export_bundle(ckpt, out / f"bundle_{kind}", max_batch=16, max_shots=8)
    console.rule(f"4/5 torch-free runtime: the same changeover to {category!r} ({shots} normal images) for both, "
                 "then its test set")
    test = list_split(data, category, "test")
    train_images = [s.path for s in list_split(data, category, "train")]
    frames = load_frames([s.path for s in test])
    masks = np.stack([load_mask(s.mask, frames.shape[1:3]) if s.mask else np.zeros(frames.shape[1:3], bool)
                      for s in test])
    labels = np.array([s.label for s in test])
    supports, normals = load_frames(train_images[:shots]), load_frames(train_images[shots:shots + 16])
    reports, results = {}, {}
    for kind in ckpts:
        reports[kind], results[kind] = _deploy(out / f"bundle_{kind}", supports=supports, normals=normals,
                                               frames=frames, masks=masks, labels=labels)
    best = max(reports, key=lambda k: reports[k]["image_auroc"])
    result = results[best]
    hi = 1.5 * result.threshold  # one colour scale for every image, tied to the threshold (yellow at it)
    for s, image, amap, mask in zip(test, frames, result.maps, masks):
        save_overlay(out / "overlays" / category / f"{s.defect}_{s.path.stem}.png", image, amap, mask, lo=0.0, hi=hi)
    write_report(out / "report.json", {"category": category, "shots": shots, "images": len(labels),
                                       "anomalous": int(labels.sum()), "overlays_from": best, "kinds": reports})
    table = Table(title=f"{shots}-shot on unseen {category!r}: {len(labels)} images, {int(labels.sum())} anomalous")
    for col in ("kind", "image AUROC", "pixel AUROC", "AUPRO", "defects caught", "good images flagged"):
        table.add_column(col, justify="right")
    for kind, r in reports.items():
        table.add_row(kind, f"{r['image_auroc']:.3f}", f"{r['pixel_auroc']:.3f}", f"{r['aupro']:.3f}",
                      f"{r['anomalous_flagged']} / {int(labels.sum())}",
                      f"{r['normal_flagged']} / {int((labels == 0).sum())}")
    console.print(table)
    console.print(f"thresholds calibrated on 16 normal images (mean + 3 std); overlays from {best}, one colour "
                  f"scale (yellow = its threshold): {out / 'overlays' / category}")
    console.rule("5/5 benchmark summary (median latency per call, CPU)")
    bench = Table()
    for col in ("kind", "backend", "batch 1 ms", "batch 8 ms", "img/s at 8"):
        bench.add_column(col, justify="right")
    for kind, ckpt in ckpts.items():
        torch_runner = TorchRunner(ckpt, "cpu")
        torch_runner.set_supports(supports)
        with Detector.open(out / f"bundle_{kind}", backend="onnxruntime") as det:
            det.prototypes(supports)
            for name, call in (("PyTorch eager", torch_runner), ("ONNX Runtime", det.detect)):
                one, eight = (time_calls(lambda b=b, call=call: call(frames[:b]), warmup=2, iters=10, images=b)
                              for b in (1, 8))
                bench.add_row(kind, name, f"{one['median_ms']:.1f}", f"{eight['median_ms']:.1f}",
                              f"{eight['throughput_img_s']:.0f}")
    console.print(bench)
    console.print(f"full benchmarks: packd-bench {out / 'bundle_knn'} --checkpoint {ckpts['knn']}   "
                  f"report: {out / 'report.json'}")


def main() -> None:
    """Console entry point of `packd-demo`."""
    run_app(app, prog_name="packd-demo")


if __name__ == "__main__":
    main()
