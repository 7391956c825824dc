"""Data-parallel training under torchrun, on the CPU with gloo and two processes: the same global batches give the
loss curve and the checkpoint one process gives, a resumed run continues it, and Ctrl-C on one rank ends every rank
with the last checkpoint kept."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, train_small

from packd.data.datasets import AnomalyDataset, list_split
from packd.data.synth import Counts, synthesize
from packd.evaluation.evaluate import predict
from packd.methods.packd.losses import cds_loss
from packd.models.checkpoint import read_config
from packd.models.loading import load_scorer

pytestmark = pytest.mark.slow
OPTIONS = {"rd": {"norm": "group", "batch_size": 4},  # BatchNorm students keep per-rank statistics on CPUs
           "packd": {"batch_size": 4, "prototypes": 5, "rotations": 2, "categories_per_batch": 2}}


def _args(options: dict) -> list[str]:
    return [a for k, v in {**SMALL, **options}.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def torchrun(kind: str, data: Path, out: Path, categories: str, **options) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 -m packd train ...` as a user types it, in its own process group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "packd",
           "train", "--kind", kind, "--data", str(data), "--out", str(out), "--categories", categories,
           *_args({**OPTIONS[kind], **options})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _scores(ckpt: Path, data: Path) -> np.ndarray:
    """The checkpoint's image scores on grid's test images (a few-shot kind with two training images' prototypes)."""
    scorer, _ = load_scorer(ckpt)
    supports = AnomalyDataset(list_split(data, "grid", "train")[:2], scorer.spec)
    protos = scorer.prototypes(torch.stack([supports[i][0] for i in range(2)])) if scorer.few_shot else None
    test = AnomalyDataset(list_split(data, "grid", "test"), scorer.spec)
    return predict(scorer, test, protos, device="cpu")["scores"]


@pytest.mark.parametrize("kind", ["rd", "packd"])
def test_two_processes_train_resume_and_evaluate_as_one(kind, synth_root, tmp_path):
    one = train_small(kind, synth_root, ["grid", "disc"], tmp_path / "one", epochs=2, **OPTIONS[kind])
    for epochs in (1, 2):  # two ranks: one epoch, then resumed to the second
        run = torchrun(kind, synth_root, tmp_path / "two", "grid,disc", epochs=epochs)
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out
        assert out.count("checkpoint written to") == 1  # rank 0 alone reports
    a, b = read_config(one)["train"], read_config(tmp_path / "two")["train"]
    assert b["epochs_done"] == 2 and b["history"] == pytest.approx(a["history"], rel=1e-4)
    # the weights differ by float rounding (reduction order); PACKD's nearest-prototype pick can turn on it
    a, b = _scores(one, synth_root), _scores(tmp_path / "two", synth_root)
    assert np.allclose(a, b, rtol=2e-2)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_ctrl_c_or_a_kill_on_one_rank_ends_every_rank_and_keeps_the_last_checkpoint(synth_root, tmp_path, stop):
    """Ctrl-C on rank 1 ends both in one line; rank 1 killed outright leaves rank 0 with a broken connection, which
    gloo raises as a plain RuntimeError (a 40-line traceback before): rank 0 says it in one line too."""
    out = tmp_path / "ck"
    run = torchrun("rd", synth_root, out, "grid,disc", epochs=1000)
    deadline = time.monotonic() + 120
    while not (out / "config.json").is_file() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    assert (out / "config.json").is_file(), run.communicate()[0]
    workers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == run.pid]
    ranks = {_env(p).get("RANK"): int(p.name) for p in workers}
    assert set(ranks) == {"0", "1"}
    os.kill(ranks["1"], stop)
    text, _ = run.communicate(timeout=120)
    assert run.returncode != 0
    assert not any(Path(f"/proc/{pid}").exists() and _parent(Path(f"/proc/{pid}")) == run.pid
                   for pid in ranks.values())
    said = "interrupted" if stop == signal.SIGINT else "another process of this run stopped"
    assert f"{said}: the checkpoint of the last finished epoch" in text
    assert "Traceback" not in text.split(said)[0] and "[rank0]" not in text  # one line, then torchrun's report
    done = read_config(out)["train"]["epochs_done"]
    assert 1 <= done < 1000
    load_scorer(out)  # whole and loadable


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _env(proc: Path) -> dict:
    try:
        pairs = (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def test_split_contrastive_loss_equals_the_whole_batch(synth_root):
    """Each rank's CDS on its own episodes against the whole batch's candidates averages to one process's."""
    torch.manual_seed(0)
    e, q, k, m, c = 4, 2, 2, 6, 5
    support, query, cand = torch.randn(e, q, k, m, c), torch.randn(e, q, m, c), torch.randn(e * q, m, c)
    whole = cds_loss(support, query, cand)
    halves = [cds_loss(support[i:i + 2], query[i:i + 2], cand, first=i * q) for i in (0, 2)]
    assert torch.allclose(whole, sum(halves) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="two categories"):
        cds_loss(support[:1], query[:1], cand[:q])


def test_a_batch_that_does_not_split_evenly_is_one_line_once_saying_what_to_pass(synth_root, tmp_path):
    run = torchrun("rd", synth_root, tmp_path / "ck", "grid", batch_size=3)
    out, _ = run.communicate(timeout=300)
    assert run.returncode != 0  # torchrun's own code (1) after its report of the failed ranks
    first = out.lstrip().splitlines()[0]  # a rank's line comes before torchrun's report
    assert first == "error: --batch-size (3) must be a multiple of the 2 processes, so each takes an equal share of " \
        "every batch: pass --batch-size 2"
    assert out.count("error:") == 1  # rank 0 alone says it (before: once per rank)
    assert not (tmp_path / "ck").exists()


def test_packd_on_three_categories_says_which_categories_per_batch_to_pass(tmp_path):
    """PACKD's default --categories-per-batch (4) is capped at 3 training categories, which two processes cannot
    split: the line says where the 3 came from and what to pass (the hostile pass's `torchrun ... train --model
    packd` on 3 categories printed the refusal once per rank)."""
    synthesize(tmp_path / "d", seed=0, size=64, categories=["grid", "disc", "plate"], counts=Counts(4, 1, 1))
    run = torchrun("packd", tmp_path / "d", tmp_path / "ck", "grid,disc,plate", categories_per_batch=4)
    out, _ = run.communicate(timeout=300)
    assert run.returncode != 0 and out.count("error:") == 1
    assert out.lstrip().splitlines()[0] == (
        "error: --categories-per-batch (3: --categories-per-batch 4 capped at the 3 training categories) must be a "
        "multiple of the 2 processes, so each takes an equal share of every batch: pass --categories-per-batch 2")
