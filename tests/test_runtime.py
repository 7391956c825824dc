"""The torch-free runtime: end to end without torch, input errors, batching, threads, thresholds,
prototype files, packaging, and the TensorRT / CUDA names it uses."""

import ast
import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FRAME

from packd.data.datasets import list_split
from packd.data.preprocess import load_frames
from packd.models.loading import load_scorer
from packd_export.graphs import QueryGraph, SupportGraph
from packd_runtime import Detector, PackdError, Prototypes

ROOT = Path(__file__).parents[1]
RUNTIME = ROOT / "runtime" / "packd_runtime"
NO_TORCH = textwrap.dedent("""
    import sys
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch must not be imported by the runtime")
    sys.meta_path.insert(0, NoTorch())
""")


def _random_frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *FRAME, 3), dtype=np.uint8)


def test_end_to_end_without_torch(synth_root, checkpoints, bundles, tmp_path):
    """tiny PACKD -> bundle -> Detector on ONNX Runtime in a process where torch cannot be imported
    -> prototypes from k images -> detect on test images == the PyTorch model's scores."""
    bundle = bundles["packd"][1]
    supports = load_frames([s.path for s in list_split(synth_root, "disc", "train")[:2]], FRAME)
    test = load_frames([s.path for s in list_split(synth_root, "disc", "test")], FRAME)
    np.save(tmp_path / "supports.npy", supports)
    np.save(tmp_path / "test.npy", test)
    script = NO_TORCH + textwrap.dedent(f"""
        import numpy as np
        from packd_runtime import Detector
        with Detector.open({str(bundle)!r}, backend="auto") as det:
            print(det.reason)
            det.prototypes(np.load({str(tmp_path / 'supports.npy')!r}))
            r = det.detect(np.load({str(tmp_path / 'test.npy')!r}))
            np.save({str(tmp_path / 'scores.npy')!r}, r.scores)
            np.save({str(tmp_path / 'maps.npy')!r}, r.maps)
        assert "torch" not in sys.modules
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "ONNX Runtime" in run.stdout and "TensorRT is not" in run.stdout
    scorer = load_scorer(checkpoints["packd"])[0]
    with torch.no_grad():
        protos = SupportGraph(scorer)(torch.from_numpy(supports))
        ts, tm = QueryGraph(scorer)(torch.from_numpy(test), *protos)
    tol = 1e-4 * float(tm.max() - tm.min())
    assert np.abs(np.load(tmp_path / "scores.npy") - ts.numpy()).max() <= tol
    assert np.abs(np.load(tmp_path / "maps.npy") - tm.numpy()).max() <= tol


def test_runtime_imports_without_torch_or_packd():
    script = NO_TORCH + textwrap.dedent("""
        import packd_runtime, packd_runtime.tensorrt.backend, packd_runtime.tensorrt.build
        assert not any(m == 'packd' or m.startswith('packd.') for m in sys.modules)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.fixture
def packd_det(bundles):
    with Detector.open(bundles["packd"][1], backend="onnxruntime") as det:
        yield det


def test_input_errors(packd_det, bundles):
    det = packd_det
    with pytest.raises(PackdError, match="needs prototypes first"):
        det.detect(_random_frames(1))
    with pytest.raises(PackdError, match="empty batch"):
        det.prototypes(np.zeros((0, *FRAME, 3), np.uint8))
    det.prototypes(_random_frames(2))
    cases = [
        (np.zeros((1, *FRAME, 3), np.float32), "uint8"),
        (np.zeros((1, *FRAME, 4), np.uint8), "3 channels"),
        (np.zeros((1, 10, 10, 3), np.uint8), f"{FRAME[0]}x{FRAME[1]} frames"),
        (np.zeros((FRAME[0], FRAME[1]), np.uint8), "shape"),
        (np.zeros((1, 3, *FRAME), np.uint8), "channels"),
    ]
    for bad, match in cases:
        with pytest.raises(PackdError, match=match):
            det.detect(bad)
    with pytest.raises(PackdError, match="at most 3"):
        det.prototypes(_random_frames(4))
    with pytest.raises(PackdError, match="backend must be"):
        Detector.open(bundles["packd"][1], backend="openvino")
    with pytest.raises(PackdError, match="TensorRT backend unavailable"):
        Detector.open(bundles["packd"][1], backend="tensorrt")
    with Detector.open(bundles["rd"][1]) as rd:
        with pytest.raises(PackdError, match="no support graph"):
            rd.prototypes(_random_frames(1))


def test_single_frames_and_batches_of_any_size(packd_det):
    det = packd_det
    det.prototypes(_random_frames(2, seed=1))
    frames = _random_frames(10, seed=2)  # larger than the bundle's max batch (4): split
    batched = det.detect(frames)
    single = [det.detect(f) for f in frames]  # (H,W,3) frames
    assert batched.scores.shape == (10,) and batched.maps.shape == (10, 64, 64)
    assert np.allclose(batched.scores, [s.scores[0] for s in single], atol=1e-5)


@pytest.mark.slow
def test_fingerprint_is_the_models_not_the_file_names(synth_root, bundles, tmp_path):
    """Two real bundles of one kind with the same file names but different weights have different fingerprints,
    and neither accepts the other's prototypes; a copy of a bundle keeps its fingerprint."""
    from conftest import train_small

    from packd_export.bundle import export_bundle
    from packd_runtime.bundle_format import fingerprint
    from packd_runtime.manifest import read_manifest

    a = bundles["packd"][1]
    ckpt = train_small("packd", synth_root, ["grid", "disc"], tmp_path / "ck", epochs=1, batch_size=4, shots=2,
                       prototypes=4, rotations=2, categories_per_batch=2, stage_weights="0.5,1,2", border=4, seed=1)
    b = tmp_path / "b"
    export_bundle(ckpt, b, max_batch=4, max_shots=3, frame_size=FRAME)
    ma, mb = read_manifest(a), read_manifest(b)
    assert sorted(ma.files) == sorted(mb.files) and ma.files != mb.files
    assert fingerprint(ma) != fingerprint(mb)
    shutil.copytree(a, tmp_path / "copy")
    assert fingerprint(read_manifest(tmp_path / "copy")) == fingerprint(ma)
    supports = _random_frames(2, seed=5)
    with Detector.open(a) as det_a, Detector.open(b) as det_b:
        protos_a = det_a.prototypes(supports)
        assert [x.shape for x in protos_a.arrays] == [x.shape for x in det_b.prototypes(supports).arrays]
        with pytest.raises(PackdError, match="another model"):
            det_b.use(protos_a)
        with pytest.raises(PackdError, match="another model"):
            det_b.detect(_random_frames(1), protos_a)


def test_prototypes_files_and_fingerprints(packd_det, bundles, tmp_path):
    det = packd_det
    protos = det.prototypes(_random_frames(3, seed=3))
    assert [a.shape for a in protos.arrays] == [(24, 24), (24, 40), (24, 112)] and protos.shots == 3
    protos.save(tmp_path / "p.npz")
    loaded = Prototypes.load(tmp_path / "p.npz")
    assert loaded.fingerprint == protos.fingerprint
    assert all(np.array_equal(a, b) for a, b in zip(loaded.arrays, protos.arrays))
    x = _random_frames(2, seed=4)
    assert np.array_equal(det.detect(x, loaded).scores, det.detect(x, protos).scores)
    foreign = Prototypes(protos.arrays, "0123456789abcdef", 3)
    with pytest.raises(PackdError, match="another model"):
        det.use(foreign)
    with pytest.raises(PackdError, match="another model"):
        det.detect(x, foreign)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(PackdError, match="corrupted prototypes"):
        Prototypes.load(tmp_path / "bad.npz")
    with pytest.raises(PackdError, match="not found"):
        Prototypes.load(tmp_path / "missing.npz")


def test_thresholds(bundles):
    with Detector.open(bundles["rd"][1]) as det:
        assert det.threshold == pytest.approx(json.loads((bundles["rd"][1] / "manifest.json").read_text())["threshold"])
        normal = _random_frames(6, seed=5)
        t = det.calibrate(normal)
        scores = det.detect(normal).scores
        assert t == pytest.approx(scores.mean() + 3 * scores.std(), rel=1e-5) and det.threshold == t
        r = det.detect(normal, threshold=-1.0, masks=True)
        assert r.labels.all() and r.masks.all() and r.threshold == -1.0
        r = det.detect(normal, threshold=1e9, masks=True)
        assert not r.labels.any() and not r.masks.any()


def test_concurrent_camera_threads(packd_det):
    det = packd_det
    det.prototypes(_random_frames(2, seed=6))
    frames = [_random_frames(2, seed=10 + i) for i in range(8)]
    expected = [det.detect(f).scores for f in frames]
    results, errors = [None] * 8, []

    def camera(i):
        try:
            for _ in range(3):
                results[i] = det.detect(frames[i]).scores
        except Exception as e:  # noqa: BLE001 - collected and reported below
            errors.append(e)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(np.allclose(r, e, atol=1e-6) for r, e in zip(results, expected))


def test_open_refuses_corrupted_bundles(bundles, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundles["rd"][1], b)
    data = bytearray((b / "query.onnx").read_bytes())
    data[100] ^= 1
    (b / "query.onnx").write_bytes(bytes(data))
    with pytest.raises(PackdError, match="altered or corrupted"):
        Detector.open(b)
    with pytest.raises(PackdError, match="not found"):
        Detector.open(tmp_path / "nope")


def test_runtime_wheel_has_a_small_dependency_set(tmp_path):
    """Built from a copy of runtime/, so the build never writes into the checkout."""
    src = tmp_path / "runtime"
    shutil.copytree(ROOT / "runtime", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    before = sorted(p.relative_to(ROOT) for p in (ROOT / "runtime").rglob("*") if "__pycache__" not in p.parts)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    after = sorted(p.relative_to(ROOT) for p in (ROOT / "runtime").rglob("*") if "__pycache__" not in p.parts)
    assert after == before
    import zipfile

    wheel = next((tmp_path / "dist").glob("packd_runtime-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        names = z.namelist()
    required = sorted(line.split(":", 1)[1].strip() for line in meta.splitlines()
                      if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert required == ["numpy>=1.22", 'onnxruntime>=1.16; python_version < "3.11"',
                        'onnxruntime>=1.24.1; python_version >= "3.11"']
    assert "Requires-Python: >=3.10" in meta
    for module in ("detector.py", "bundle_format.py", "tensorrt/backend.py", "tensorrt/build.py",
                   "onnxruntime/backend.py", "triton/line_model.py", "triton/client.py", "triton_model.py"):
        assert f"packd_runtime/{module}" in names
    assert "The runtime on its own" in meta or "Detector.open" in meta  # runtime/README.md is its readme
    assert not any(n.startswith(("packd/", "packd_export/", "packd_bench/")) for n in names)


def test_runtime_parses_as_python_3_10():
    for path in (ROOT / "runtime").rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))


def _attribute_uses(path: Path, module_alias: str) -> set[tuple[str, str | None]]:
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == module_alias:
            used.add((node.attr, None))
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == module_alias):
            used.add((node.value.attr, node.attr))
    return used


def _missing(module, used, skip=()):
    out = []
    for top, sub in used:
        if top in skip or top.startswith("__"):
            continue
        obj = getattr(module, top, None)
        if obj is None or (sub and not hasattr(obj, sub)):
            out.append(f"{top}" + (f".{sub}" if sub else ""))
    return out


BUILDER_ONLY = {"Builder", "OnnxParser", "NetworkDefinitionCreationFlag"}  # absent from the lean (runtime) binding


def test_tensorrt_names_exist_in_a_real_binding():
    """Every `trt.X[.Y]` used exists in TensorRT 11's lean binding: all of the runtime backend's,
    and the builder's except the builder-only classes listed above (so no new name slips in unchecked)."""
    lean = pytest.importorskip("tensorrt_lean_bindings")
    backend = _attribute_uses(RUNTIME / "tensorrt" / "backend.py", "trt")
    builder = _attribute_uses(RUNTIME / "tensorrt" / "build.py", "trt")
    assert backend and builder
    assert _missing(lean, backend) == []
    assert _missing(lean, builder, skip=BUILDER_ONLY) == []
    assert {t for t, _ in builder} >= BUILDER_ONLY


def test_cuda_runtime_names_exist_in_cuda_python():
    cudart = pytest.importorskip("cuda.bindings.runtime")
    for path in (RUNTIME / "tensorrt" / "backend.py", RUNTIME / "tensorrt" / "build.py"):
        used = _attribute_uses(path, "cudart")
        assert used, path
        assert _missing(cudart, used) == [], path
