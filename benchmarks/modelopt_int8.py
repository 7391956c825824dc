"""NVIDIA ModelOpt's ONNX post-training quantization of a bundle's graphs, for comparison with packd's int8.

ModelOpt is not a dependency of packd (its `[onnx]` extra pulls torch, onnxruntime-gpu, cupy and the CUDA
toolkit wheels); install it in an environment of its own. This writes the bundle
`<bundles>/<checkpoint name>_int8-modelopt`: the fp32 bundle's manifest with ModelOpt's graphs, calibrated
on the same normal images as packd's int8 and with its own threshold, which
`benchmarks/precision_accuracy.py --variants fp32,int8,int8-modelopt --reuse` then scores:

    pip install "nvidia-modelopt[onnx]"
    python benchmarks/modelopt_int8.py --checkpoint runs/fewshot/packd_best [--high-precision fp32]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import onnx
import typer

from packd.checkpoint import read_config
from packd_export.calibration import CALIBRATION_IMAGES, bundle_feeds, bundle_threshold, calibration_frames
from packd_export.int8 import FeedReader
from packd_export.onnx_export import graph_io
from packd_runtime.atomic import atomic_dir, write_json
from packd_runtime.bundle_format import BUNDLE, MANIFEST
from packd_runtime.files import sha256


def main(checkpoint: Path = Path("runs/fewshot/packd_best"), bundles: Path = Path("runs/fewshot/bundles"),
         calibration_method: str = "max", high_precision: str = "fp16") -> None:
    from modelopt.onnx.quantization import quantize

    fp32 = bundles / f"{checkpoint.name}_fp32"
    manifest = json.loads((fp32 / MANIFEST).read_text())
    frames = calibration_frames(read_config(checkpoint), (manifest["input"]["height"], manifest["input"]["width"]),
                                CALIBRATION_IMAGES)
    feeds = bundle_feeds(fp32, frames)

    out = bundles / f"{checkpoint.name}_int8-modelopt"
    with tempfile.TemporaryDirectory() as work, atomic_dir(out, BUNDLE) as tmp:
        t0 = time.perf_counter()
        for graph, spec in manifest["graphs"].items():
            quantize(str(fp32 / spec["file"]), quantize_mode="int8", calibration_data_reader=FeedReader(feeds[graph]),
                     calibration_method=calibration_method, calibration_eps=["cpu"],
                     high_precision_dtype=high_precision, output_path=str(Path(work) / spec["file"]))
            model = onnx.load(Path(work) / spec["file"])
            onnx.save(model, tmp / spec["file"])
            inputs, outputs = graph_io(model)
            manifest["graphs"][graph] |= {"inputs": inputs, "outputs": outputs}
        manifest |= {"precision": "int8", "engines": [],
                     "int8": {"calibration": f"modelopt {calibration_method}, high precision {high_precision}",
                              "seconds": round(time.perf_counter() - t0, 1)},
                     "files": {spec["file"]: sha256(tmp / spec["file"]) for spec in manifest["graphs"].values()}}
        max_count = manifest.get("prototypes", {}).get("max_count", 0)
        manifest |= bundle_threshold(tmp, manifest["graphs"], frames, max_count)
        write_json(tmp / MANIFEST, manifest)
    print(f"wrote {out} in {manifest['int8']['seconds']} s")


if __name__ == "__main__":
    typer.run(main)
