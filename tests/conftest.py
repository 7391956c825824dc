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
