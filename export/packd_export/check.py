"""`packd-export check`: everything the runtime checks when it opens a bundle, and what needs onnx to check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from packd.errors import PackdError
from packd_export.onnx_export import check_onnx
from packd_export.trt_compat import check_tensorrt_compat
from packd_runtime.bundle_format import verify_files
from packd_runtime.manifest import Manifest, read_manifest


def check_bundle(bundle: str | Path) -> Manifest:
    """What the runtime checks on open (schema, confined paths, hashes, every graph's real I/O names, dtypes and
    shapes, external data) and more: every graph's weights are finite, it passes the ONNX checker and TensorRT's
    parser rules. Returns the manifest."""
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    for graph, spec in manifest.graphs.items():
        model = onnx.load(Path(bundle) / spec.file)
        bad = [i.name for i in model.graph.initializer
               if onnx.helper.tensor_dtype_to_np_dtype(i.data_type).kind == "f"
               and not np.isfinite(onnx.numpy_helper.to_array(i)).all()]
        if bad:
            raise PackdError(f"{spec.file} has non-finite weights ({', '.join(bad[:3])}): the model is broken")
        check_onnx(model)
        problems = check_tensorrt_compat(model)
        if problems:
            raise PackdError(f"{graph} graph would not parse in TensorRT: " + "; ".join(problems[:5]))
    return manifest
