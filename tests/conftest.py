import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait for a hub these machines cannot reach

import pytest
import torch

from packd.data.synth import Counts, synthesize
from packd.training.train import configure, train

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # `make test` runs 2 pytest-xdist workers
if WORKERS > 1:  # one thread each (and in the commands they start): 2 workers x 2 threads on 2 cores ran slower
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1 if WORKERS > 1 else 2)

TEACHER = "tf_efficientnet_lite0"
SMALL = dict(teacher=TEACHER, image_size=64)  # every test model: offline teacher, 64 px
FRAME = (72, 88)  # camera frames of another size than the model's input: resized inside the graph


CACHE = os.environ.get("PACKD_TEST_CACHE")  # mutation runs only: keep checkpoints and bundles between pytest runs


def _folder(name, tmp_path_factory):
    """A fresh temporary folder, or with PACKD_TEST_CACHE a fixed one whose checkpoints (finished runs resume
    to nothing) and bundles later runs reuse."""
    if not CACHE:
        return tmp_path_factory.mktemp(name)
    (Path(CACHE) / name).mkdir(parents=True, exist_ok=True)
    return Path(CACHE) / name


def train_small(kind, data, categories, out, **options):
    """Train a tiny model of `kind` (64 px, offline teacher) with the given settings overrides."""
    run, settings = configure(kind, **{**SMALL, **options})
    return train(kind, data=data, categories=categories, out=out, run=run, settings=settings, progress=False)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Two small synthetic categories at 64 px."""
    root = _folder("synth", tmp_path_factory)
    synthesize(root, seed=0, size=64, categories=["grid", "disc"], counts=Counts(train=8, test_good=4, test_defect=2))
    return root


@pytest.fixture(scope="session")
def effnet_teacher():
    from packd.models.teachers import create_teacher

    return create_teacher(TEACHER)


@pytest.fixture(scope="session")
def checkpoints(synth_root, tmp_path_factory):
    """Tiny RD, MemKD and PACKD checkpoints (one epoch, 64 px) and a kNN one (a bounded bank of 100). PACKD's
    scoring is not the default (stage weights, a border, the prototype score), so parity tests cover it."""
    root = _folder("ckpts", tmp_path_factory)
    return {
        "rd": train_small("rd", synth_root, "grid", root / "rd", epochs=1, batch_size=4),
        "memkd": train_small("memkd", synth_root, "grid", root / "memkd", epochs=1, batch_size=4, slots=6,
                             exemplars=3),
        "packd": train_small("packd", synth_root, ["grid", "disc"], root / "packd", epochs=1, batch_size=4, shots=2,
                             prototypes=4, rotations=2, categories_per_batch=2, stage_weights="0.5,1,2", border=4),
        "knn": train_small("knn", synth_root, ["grid", "disc"], root / "knn", rotations=2, max_bank=100),
    }


@pytest.fixture(scope="session")
def bundles(checkpoints, tmp_path_factory):
    """fp32 bundles of the tiny checkpoints, frames of FRAME size, batch <= 4, shots <= 3."""
    from packd_export.bundle import export_bundle
    from packd_runtime.manifest import read_manifest

    root = _folder("bundles", tmp_path_factory)
    if CACHE and all((root / kind / "manifest.json").is_file() for kind in checkpoints):
        return {kind: (read_manifest(root / kind), root / kind) for kind in checkpoints}
    return {kind: (export_bundle(ck, root / kind, max_batch=4, max_shots=3, frame_size=FRAME), root / kind)
            for kind, ck in checkpoints.items()}


# Modules whose tests export their own bundles, train their own models or run the documentation blocks: their tests
# that use one of these fixtures are `slow`, as is every test marked so by hand (an export or training of its own).
SLOW_MODULES = {"test_docs.py", "test_tiled_bundles.py", "test_tiled_eval.py", "test_int8.py", "test_distributed.py",
                "test_accuracy_canaries.py"}
HEAVY_FIXTURES = {"demo_tree", "tiled", "line_data", "checkpoints", "canary_data", "synth_root"}


def pytest_collection_modifyitems(items):
    """`make quick` (`-m "not slow"`) keeps every module touched through the shared checkpoints and bundles (built
    once per run) and leaves out what builds its own; `make test` runs everything."""
    for item in items:
        if item.path.name in SLOW_MODULES and HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
