"""Data-parallel training under `torchrun`: the process group from torchrun's environment, each rank's share of a
global batch, and rank 0 as the only writer. Without torchrun (no WORLD_SIZE) everything here is a no-op for one
process, so `packd train` needs nothing else.

PyTorch's DistributedDataParallel averages the gradients; this module only says who does what.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from packd.errors import EveryRankError, PackdError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # a rank waiting longer for the others (a checkpoint write, a cache) gives up


def requested() -> bool:
    """Launched by torchrun (or any launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group once (NCCL for CUDA, else gloo) and return this rank's device (a CUDA rank
    takes GPU LOCAL_RANK); one process without torchrun: `device` unchanged."""
    if not requested():
        return device
    if not dist.is_available():
        raise PackdError("launched with WORLD_SIZE > 1, but this PyTorch has no torch.distributed")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise PackdError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs: lower --nproc-per-node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only; every rank raises rank 0's PackdError (no rank is left waiting for one that
    failed). Returns fn's result on rank 0, None elsewhere."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except PackdError as e:
            error = str(e)
    if active():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise EveryRankError(error)
    return result


def check_divides(count: int, what: str, why: str = "") -> None:
    """A global batch of `count` splits evenly over the ranks (so the ranks' mean equals the whole batch's); the one
    line says what to pass. `why` tells where `count` came from when the user did not give it."""
    w = world()
    if count % w:
        fits = max(w, count - count % w)
        raise EveryRankError(f"{what} ({count}{why}) must be a multiple of the {w} processes, so each takes an equal "
                             f"share of every batch: pass {what} {fits}")


def peer_lost(e: BaseException) -> bool:
    """A collective failed because another rank of this run is gone (killed, crashed): gloo reports a reset
    connection as a plain RuntimeError, NCCL and newer gloo paths as DistError."""
    return active() and (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and "/gloo/" in str(e)))


def shard(item: Any) -> Any:
    """This rank's contiguous share of a global batch along the first axis (arrays, tensors, tuples of them)."""
    if isinstance(item, (tuple, list)):
        return type(item)(shard(x) for x in item)
    n, w, r = len(item), world(), rank()
    return item[r * n // w:(r + 1) * n // w]


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The ranks' mean of a detached scalar: the whole batch's loss, the same on every rank."""
    if not active():
        return value
    value = value.detach().float().clone()
    dist.all_reduce(value)
    return value / world()


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's `x` concatenated along the first axis, differentiable (gradients flow back to each rank's own
    rows), and where this rank's rows start. Contrastive losses take their negatives from the whole batch so."""
    if not active():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated for a private successor; still the public autograd all_gather
        warnings.simplefilter("ignore", FutureWarning)
        rows = all_gather(x.contiguous())  # collectives send the storage as is: a channels-last one would scramble
    for row in rows:  # and so would its gradient, sent back the same way: make it contiguous first
        if row.requires_grad:
            row.register_hook(torch.Tensor.contiguous)
    return torch.cat(rows, dim=0), rank() * x.shape[0]

