"""The training loop every trainable kind shares, kept outside the models: Adam, AMP on GPU, a
progress bar, a checkpoint every epoch and resume after an interruption, deterministic for a seed; one
process, or several under torchrun (DistributedDataParallel: each rank takes its share of every global batch,
rank 0 alone writes).

A method supplies a `Training`: global batches per epoch (depending only on the epoch number, so a resumed
run continues exactly), the number of steps per epoch, and its loss on one rank's share of a batch.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from packd import __version__
from packd.device import pick_device
from packd.errors import PackdError
from packd.models.checkpoint import load_trainer_state, load_weights, read_config, save_checkpoint
from packd.progress import progress
from packd.training import distributed
from packd.training.allocator import keep_freed_memory
from packd.training.settings import RunConfig
from packd_runtime.atomic import recover
from packd_runtime.errors import Interrupted
from packd_runtime.locks import output_lock

RESUMABLE_KEYS = ("epochs", "device")  # run settings that may change between an interrupted run and its resume


@dataclass(frozen=True)
class Training:
    """What a method trains with: `batches(epoch)` yields `steps` global batches (index arrays, or tuples of
    them, split over ranks along their first axis), `loss(model, share)` scores one rank's share."""

    batches: Callable[[int], Iterable]
    steps: int
    loss: Callable[[nn.Module, Any], torch.Tensor]
    every_parameter_used: bool = True  # False: DistributedDataParallel must look for unused ones at every step


class Objective(nn.Module):
    """The model and its loss as one module, so DistributedDataParallel sees the whole step in its forward."""

    def __init__(self, model: nn.Module, loss: Callable[[nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, item: Any) -> torch.Tensor:
        return self.loss(self.model, item)


def index_batches(dataset: Any, run: RunConfig) -> tuple[Callable[[int], Iterable[np.ndarray]], int]:
    """Shuffled global batches of dataset indices whose order depends only on (seed, epoch); returns
    (batches, steps). A dataset with `set_epoch` (tile crops) is told the epoch first."""
    batch = min(run.batch_size, len(dataset))
    distributed.check_divides(batch, "--batch-size", "" if batch == run.batch_size else
                              f": --batch-size {run.batch_size} capped at the {len(dataset)} training images")
    steps = len(dataset) // batch

    def batches(epoch: int) -> Iterable[np.ndarray]:
        if hasattr(dataset, "set_epoch"):  # tile crops drawn per epoch
            dataset.set_epoch(epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(run.seed * 100_003 + epoch))
        return (order[i * batch:(i + 1) * batch].numpy() for i in range(steps))

    return batches, steps


def _comparable(config: dict) -> dict:
    """The settings that define a run, as JSON stores them (resumable settings and progress left out)."""
    run = {k: v for k, v in config.get("run", {}).items() if k not in RESUMABLE_KEYS}
    train = {k: v for k, v in config.get("train", {}).items() if k not in ("epochs_done", "history")}
    rest = {k: v for k, v in config.items() if k not in ("run", "train", "format", "packd_version", "model_sha256")}
    return json.loads(json.dumps({**rest, "run": run, "train": train}))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def _terminate_interrupts() -> Any:
    """Under torchrun, SIGTERM (sent to the other ranks when one stops) ends a rank as Ctrl-C does."""
    if not distributed.active():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fit(model: nn.Module, training: Training, *, run: RunConfig, out: str | Path, config: dict[str, Any],
        resume: bool = True, progress: bool = True) -> Path:
    """Train the trainable parameters of `model`, checkpointing to `out` after every epoch. `out` is
    locked for the whole run (by rank 0); a non-finite loss stops it (the last finished epoch's checkpoint stays).
    Under torchrun every rank calls this; Ctrl-C or a failure on any rank ends them all."""
    out = Path(out)
    keep_freed_memory()
    with ExitStack() as stack:
        distributed.on_main(lambda: (stack.enter_context(output_lock(out)), recover(out)))
        distributed.barrier()  # the others read `out` only once rank 0 has recovered it
        try:
            with _terminate_interrupts():
                return _fit(model, training, run=run, out=out, config=config, resume=resume,
                            show_progress=progress and distributed.is_main())
        except (KeyboardInterrupt, RuntimeError) as e:
            if not isinstance(e, KeyboardInterrupt) and not distributed.peer_lost(e):
                raise
            done = read_config(out)["train"]["epochs_done"] if (out / "config.json").is_file() else 0
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else "another process of this run stopped"
            raise Interrupted(f"{why}: the checkpoint of the last finished epoch ({done} of {run.epochs}) is "
                              f"kept in {out}; run the same command again to resume") from None


def _fit(model: nn.Module, training: Training, *, run: RunConfig, out: Path, config: dict[str, Any],
         resume: bool, show_progress: bool) -> Path:
    device = distributed.setup(pick_device(run.device))
    model.to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=run.lr, betas=tuple(run.betas))
    use_amp = run.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    config = {**config, "packd_version": __version__}
    start, history = 0, []
    state = load_trainer_state(out) if resume and (out / "config.json").is_file() else None
    if state is not None:
        previous = read_config(out)
        if _comparable(previous) != _comparable(config):
            raise PackdError(f"{out} holds a run with other settings; pass another --out, or --no-resume to start over")
        load_weights(out, model, previous)
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, history = int(state["epoch"]), list(previous["train"].get("history", []))
    objective: nn.Module = Objective(model, training.loss)
    if distributed.active():
        if device.type == "cuda":  # BatchNorm statistics over the global batch, as one process has them
            objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None,
                                            find_unused_parameters=not training.every_parameter_used)
    columns = (TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with progress(*columns, disable=not show_progress) as bar:
        task = bar.add_task("train", total=training.steps * max(run.epochs - start, 1), epoch="", loss=float("nan"))
        for epoch in range(start, run.epochs):
            bar.update(task, epoch=f"{epoch + 1}/{run.epochs}")
            model.train()
            total, n = 0.0, 0
            for item in training.batches(epoch):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss = objective(distributed.shard(item))
                whole = distributed.mean_over_ranks(loss.detach())  # the global batch's loss, on every rank
                if not torch.isfinite(whole):
                    kept = f"the checkpoint of epoch {epoch} is kept in {out}" if epoch else "nothing was saved"
                    raise PackdError(f"training diverged in epoch {epoch + 1}: the loss is {float(whole)} "
                                     f"({kept}); lower --lr (now {run.lr}) or check the settings")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total, n = total + float(whole), n + 1
                bar.update(task, advance=1, loss=total / n)
            history.append(round(total / max(n, 1), 6))
            if distributed.is_main():
                train_cfg = {**config["train"], "epochs_done": epoch + 1, "history": history}
                save_checkpoint(out, model, {**config, "train": train_cfg},
                                {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1})
    distributed.barrier()  # every rank returns once the last checkpoint is written
    return out
