"""NVIDIA ModelOpt's ONNX post-training quantization of a bundle's graphs, for comparison with packd's int8.

ModelOpt is not a dependency of packd (its `[onnx]` extra pulls torch, onnxruntime-gpu, cupy and the CUDA
toolkit wheels); install it in an environment of its own. This writes the bundle
`<bundles>/<checkpoint name>_int8-modelopt`: the fp32 bundle's manifest with ModelOpt's graphs, calibrated
on the same normal images as packd's int8 and with its own threshold, which
`benchmarks/tables/precision_accuracy.py --variants fp32,int8,int8-modelopt --reuse` then scores:

    pip install "nvidia-modelopt[onnx]"
    python benchmarks/modelopt_int8.py --checkpoint runs/fewshot/packd_best [--high-precision fp32]
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnx
import typer

from packd.models.checkpoint import read_config
from packd_export.int8 import FeedReader
from packd_export.int8_data import bundle_feeds
from packd_export.normal_frames import NORMAL_IMAGES, normal_frames
from packd_export.onnx_export import graph_io
from packd_export.threshold import bundle_threshold
from packd_runtime.atomic import atomic_dir, write_json
from packd_runtime.bundle_format import BUNDLE, MANIFEST
from packd_runtime.files import sha256
from packd_runtime.manifest import read_manifest


def main(checkpoint: Path = Path("runs/fewshot/packd_best"), bundles: Path = Path("runs/fewshot/bundles"),
         calibration_method: str = "max", high_precision: str = "fp16") -> None:
    from modelopt.onnx.quantization import quantize

    fp32 = bundles / f"{checkpoint.name}_fp32"
    manifest = read_manifest(fp32)
    frames = normal_frames(read_config(checkpoint), manifest.frame_hw, NORMAL_IMAGES)
    feeds = bundle_feeds(fp32, frames)

    out = bundles / f"{checkpoint.name}_int8-modelopt"
    with tempfile.TemporaryDirectory() as work, atomic_dir(out, BUNDLE) as tmp:
        t0 = time.perf_counter()
        graphs = {}
        for graph, spec in manifest.graphs.items():
            quantize(str(fp32 / spec.file), quantize_mode="int8", calibration_data_reader=FeedReader(feeds[graph]),
                     calibration_method=calibration_method, calibration_eps=["cpu"],
                     high_precision_dtype=high_precision, output_path=str(Path(work) / spec.file))
            model = onnx.load(Path(work) / spec.file)
            onnx.save(model, tmp / spec.file)
            graphs[graph] = graph_io(model, spec.file)
        seconds = round(time.perf_counter() - t0, 1)
        threshold, basis = bundle_threshold(tmp, graphs, frames, limits=manifest.limits,
                                            prototype_names=manifest.prototype_names if manifest.few_shot else (),
                                            max_count=manifest.max_count, tiling=manifest.tiling)
        manifest = replace(manifest, precision="int8", engines=(), graphs=graphs, threshold=threshold,
                           normal_scores=basis, files={s.file: sha256(tmp / s.file) for s in graphs.values()},
                           int8={"calibration": f"modelopt {calibration_method}, high precision {high_precision}",
                                 "seconds": seconds}).checked()
        write_json(tmp / MANIFEST, manifest.to_dict())
    print(f"wrote {out} in {seconds} s")


if __name__ == "__main__":
    typer.run(main)
