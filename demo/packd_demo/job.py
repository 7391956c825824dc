"""What `packd-demo` runs, end to end. It sits at the top of the package stack (training, export, runtime and
benchmarks), so nothing imports it back.

synthetic data -> meta-train PACKD and write a training-free nearest-neighbour (kNN) checkpoint
(offline teacher) -> export both bundles -> torch-free runtime: the same changeover (same supports)
on an unseen category for both, detection, overlays from the better one -> benchmark summary.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from packd.data.datasets import list_split
from packd.data.preprocess import load_frames, load_mask
from packd.data.synth import synthesize
from packd.evaluation.metrics import image_auroc, pixel_metrics
from packd.evaluation.overlays import save_overlay
from packd.evaluation.reports import check_report_path, write_report
from packd.models.teachers import OFFLINE_PACKAGE_TEACHER
from packd.progress import stage
from packd.training.train import configure, train
from packd_bench.bench import TorchRunner, time_calls
from packd_demo.recipe import DEMO_TRAIN
from packd_export.bundle import export_bundle
from packd_runtime import Detector

console = Console()


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


def export_side_by_side(bundles: dict[Path, Path]) -> None:
    """Export the checkpoints to their bundles at once: the first in this process, each other one in a process of
    its own. Tracing a graph keeps one core busy, so on two cores two exports take about the time of the longer (the
    demo's: 52 s one after the other). Not during training: its two threads and an export on two cores slowed both
    (145 s for the whole demo)."""
    (first, first_out), *others = bundles.items()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(max_workers=max(len(others), 1), mp_context=context,
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        running = [pool.submit(export_bundle, ckpt, out, max_batch=16, max_shots=8) for ckpt, out in others]
        export_bundle(first, first_out, max_batch=16, max_shots=8)
        for done in running:
            done.result()


def run_demo(*, out: Path, category: str, epochs: int, shots: int, image_size: int) -> None:
    """The demo's five steps, printed as they go; see `packd_demo.demo`."""
    data = out / "data"
    check_report_path(out / "report.json")
    stage(console, f"1/5 synthetic data: the six meta-training categories and {category!r}")
    synthesize(data, seed=0, size=image_size, categories=[*DEMO_TRAIN, category])
    stage(console, f"2/5 meta-train PACKD on {', '.join(DEMO_TRAIN)} ({OFFLINE_PACKAGE_TEACHER}, {image_size} px, "
                 f"{epochs} epochs); the kNN kind needs no training")
    ckpts = {}
    for kind, options in (("knn", {}), ("packd", {"epochs": epochs, "lr": 0.005, "shots": 2})):
        run, settings = configure(kind, teacher=OFFLINE_PACKAGE_TEACHER, image_size=image_size, **options)
        ckpts[kind] = train(kind, data=data, categories=DEMO_TRAIN, out=out / f"checkpoint_{kind}", run=run,
                            settings=settings, resume=False)
    stage(console, "3/5 export the bundles (support + query graphs, fp32 ONNX), side by side")
    export_side_by_side({ckpts["packd"]: out / "bundle_packd", ckpts["knn"]: out / "bundle_knn"})
    stage(console, f"4/5 torch-free runtime: the same changeover to {category!r} ({shots} normal images) for both, "
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
    overlays = out / "overlays" / category
    for s, image, amap, mask, score in zip(test, frames, result.maps, masks, result.scores):
        save_overlay(overlays / f"{s.defect}_{s.path.stem}.png", image, amap, mask, score=float(score),
                     threshold=result.threshold)
    images = [{"file": str(s.path), "defect": s.defect, "label": int(label),
               "scores": {kind: float(results[kind].scores[i]) for kind in results},
               "flagged": {kind: bool(results[kind].labels[i]) for kind in results}}
              for i, (s, label) in enumerate(zip(test, labels))]
    write_report(out / "report.json", {"category": category, "shots": shots, "images_tested": len(labels),
                                       "anomalous": int(labels.sum()), "overlays_from": best, "kinds": reports,
                                       "images": images})
    table = Table(title=f"{shots}-shot on unseen {category!r}: {len(labels)} images, {int(labels.sum())} anomalous")
    for col in ("kind", "image AUROC", "pixel AUROC", "AUPRO", "defects caught", "good images flagged"):
        table.add_column(col, justify="right")
    for kind, r in reports.items():
        table.add_row(kind, f"{r['image_auroc']:.3f}", f"{r['pixel_auroc']:.3f}", f"{r['aupro']:.3f}",
                      f"{r['anomalous_flagged']} / {int(labels.sum())}",
                      f"{r['normal_flagged']} / {int((labels == 0).sum())}")
    console.print(table)
    console.print(f"thresholds calibrated on 16 normal images (mean + 3 std); overlays from {best} (verdict, score, "
                  "threshold; yellow = the threshold)")
    stage(console, "5/5 benchmark summary (median latency per call, CPU)")
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
    stage(console, "done")
    example = overlays / f"{test[-1].defect}_{test[-1].path.stem}.png"
    console.print(f"overlays: {overlays}/  ({len(test)} PNGs, e.g. {example})", markup=False, soft_wrap=True)
    console.print(f"report:   {out / 'report.json'}  (metrics per kind, every image's score and verdict)",
                  markup=False, soft_wrap=True)
    console.print(f"next:     packd-bench {out / 'bundle_knn'} --checkpoint {ckpts['knn']} --out runs/bench/knn",
                  markup=False, soft_wrap=True)
