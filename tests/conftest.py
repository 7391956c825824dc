import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait for a hub these machines cannot reach

import pytest
import torch

from packd.synth import Counts, synthesize

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Two small synthetic categories at 64 px."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, seed=0, size=64, categories=["grid", "disc"], counts=Counts(train=8, test_good=4, test_defect=2))
    return root


@pytest.fixture(scope="session")
def effnet_teacher():
    from packd.teachers import create_teacher

    return create_teacher("tf_efficientnet_lite0")


SMALL = dict(teacher="tf_efficientnet_lite0", image_size=64, progress=False)
FRAME = (72, 88)  # camera frames of another size than the model's input: resized inside the graph


@pytest.fixture(scope="session")
def checkpoints(synth_root, tmp_path_factory):
    """Tiny RD, MemKD and PACKD checkpoints (one epoch, 64 px)."""
    from packd.train import (
        MemKDSettings,
        PACKDSettings,
        TrainSettings,
        train_memkd,
        train_packd,
        train_rd,
    )

    root = tmp_path_factory.mktemp("ckpts")
    one = TrainSettings(epochs=1, batch_size=4)
    return {
        "rd": train_rd(synth_root, "grid", root / "rd", settings=one, **SMALL),
        "memkd": train_memkd(synth_root, "grid", root / "memkd", settings=one,
                             memkd=MemKDSettings(slots=6, exemplars=3), **SMALL),
        "packd": train_packd(synth_root, ["grid", "disc"], root / "packd", settings=TrainSettings(epochs=1, lr=5e-4),
                             packd=PACKDSettings(shots=2, n_prototypes=4, rotations=2, queries=2,
                                                 categories_per_batch=2), **SMALL),
    }


@pytest.fixture(scope="session")
def bundles(checkpoints, tmp_path_factory):
    """fp32 bundles of the tiny checkpoints, frames of FRAME size, batch <= 4, shots <= 3."""
    from packd_export.bundle import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {kind: (export_bundle(ck, root / kind, max_batch=4, max_shots=3, frame_size=FRAME), root / kind)
            for kind, ck in checkpoints.items()}
