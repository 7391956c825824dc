"""Training loops, kept outside the models: Adam, AMP on GPU, a progress bar, a checkpoint every
epoch and resume after an interruption, deterministic for a given seed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from packd import __version__
from packd.checkpoint import load_trainer_state, load_weights, read_config, save_checkpoint
from packd.data import AnomalyDataset, list_split, resolve_categories
from packd.errors import PackdError
from packd.losses import kd_loss
from packd.models import build_model, model_config
from packd.models.rd import plan_for
from packd.preprocess import InputSpec
from packd.teachers import create_teacher

RESUMABLE_KEYS = ("epochs", "device")  # settings that may change between an interrupted run and its resume


@dataclass
class TrainSettings:
    """Optimisation settings (RD reference: Adam lr 0.005, betas (0.5, 0.999), batch 16)."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    amp: bool = True
    device: str = "auto"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PackdError(f"device {name} requested but CUDA is not available")
    return torch.device(name)


def _comparable(config: dict) -> dict:
    """The settings that define a run, as JSON would store them (tuples become lists)."""
    train = {k: v for k, v in config.get("train", {}).items() if k not in RESUMABLE_KEYS + ("epochs_done", "history")}
    return json.loads(json.dumps({**{k: v for k, v in config.items() if k not in ("train", "format", "packd_version")},
                                  "train": train}))


def fit(model: nn.Module, dataset: Dataset, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        settings: TrainSettings, out: str | Path, config: dict[str, Any], resume: bool = True,
        progress: bool = True) -> Path:
    """Train the trainable parameters of `model` on `dataset`, checkpointing to `out` every epoch."""
    out = Path(out)
    device = pick_device(settings.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=settings.lr, betas=tuple(settings.betas))
    use_amp = settings.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    config = {**config, "packd_version": __version__}
    start, history = 0, []
    state = load_trainer_state(out) if resume and (out / "config.json").is_file() else None
    if state is not None:
        previous = read_config(out)
        if _comparable(previous) != _comparable(config):
            raise PackdError(f"{out} holds a run with other settings; pass another --out, or --no-resume to start over")
        load_weights(out, model)
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, history = int(state["epoch"]), list(previous["train"].get("history", []))
    if start >= settings.epochs:
        return out
    batch = min(settings.batch_size, len(dataset))
    columns = (TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        for epoch in range(start, settings.epochs):
            order = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
            loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=order, drop_last=len(dataset) > batch)
            task = bar.add_task("train", total=len(loader), epoch=f"{epoch + 1}/{settings.epochs}", loss=float("nan"))
            model.train()
            total, steps = 0.0, 0
            for item in loader:
                item = [x.to(device, non_blocking=True) if torch.is_tensor(x) else x for x in item]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss = loss_fn(model, item)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total, steps = total + float(loss.detach()), steps + 1
                bar.update(task, advance=1, loss=total / steps)
            history.append(round(total / max(steps, 1), 6))
            train_cfg = {**config["train"], "epochs_done": epoch + 1, "history": history}
            save_checkpoint(out, model, {**config, "train": train_cfg},
                            {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1})
    return out


def rd_loss(model: nn.Module, item: list) -> torch.Tensor:
    teacher, student = model(item[0])
    return kd_loss(teacher, student)


def train_rd(data: str | Path, categories: str | list[str] | None, out: str | Path, teacher: str = "wide_resnet50_2",
             teacher_weights: str | Path | None = None, random_teacher: bool = False, image_size: int = 256,
             settings: TrainSettings = TrainSettings(), resume: bool = True, progress: bool = True) -> Path:
    """Train Reverse Distillation on the normal training images of `categories` (normally one)."""
    cats = resolve_categories(data, categories)
    samples = [s for c in cats for s in list_split(data, c, "train")]
    torch.manual_seed(settings.seed)
    t = create_teacher(teacher, teacher_weights, random_init=random_teacher)
    model = build_model("rd", t, plan_for(teacher, t.channels))
    dataset = AnomalyDataset(samples, InputSpec(image_size, t.mean, t.std))
    config = model_config("rd", t, model.plan, image_size)
    config["train"] = {**asdict(settings), "betas": list(settings.betas), "categories": cats, "data": str(data)}
    return fit(model, dataset, rd_loss, settings, out, config, resume, progress)
