"""Training loops, kept outside the models: Adam, AMP on GPU, a progress bar, a checkpoint every
epoch and resume after an interruption, deterministic for a given seed.

RD and MemKD train per category on train/good; PACKD meta-trains on episodes over many categories.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.utils.data import DataLoader

from packd import __version__
from packd.checkpoint import (
    load_trainer_state,
    load_weights,
    read_config,
    save_checkpoint,
)
from packd.data import AnomalyDataset, list_split, resolve_categories
from packd.episodes import EpisodeSampler
from packd.errors import PackdError
from packd.losses import cds_loss, kd_loss, orthogonality_loss
from packd.models import build_model, model_config
from packd.models.memkd import MemKD
from packd.models.packd import PACKD
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


@dataclass
class PACKDSettings:
    """Meta-training and loss settings (paper: L=20, tau=0.05, lambda1 = lambda2 = 0.5, rotated supports).

    `batch_size` of TrainSettings is ignored for PACKD: a batch is categories_per_batch x queries queries.
    """

    shots: int = 2
    n_prototypes: int = 20
    rotations: int = 4
    queries: int = 4
    categories_per_batch: int = 4
    cds_weight: float = 0.5
    orth_weight: float = 0.5
    tau: float = 0.05


@dataclass
class MemKDSettings:
    """NR memory and normality embedding settings (paper: L=50, N=16 exemplars, weights 0.1)."""

    slots: int = 50
    temperature: float = 0.1
    exemplars: int = 16
    memorisation_weight: float = 0.1
    orth_weight: float = 0.1


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


def _to(item: Any, device: torch.device) -> Any:
    if torch.is_tensor(item):
        return item.to(device, non_blocking=True)
    return [_to(x, device) for x in item] if isinstance(item, (list, tuple)) else item


def fit(model: nn.Module, batches: Callable[[int], Iterable], steps: int,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor], settings: TrainSettings, out: str | Path,
        config: dict[str, Any], resume: bool = True, progress: bool = True) -> Path:
    """Train the trainable parameters of `model` on `batches(epoch)` (`steps` per epoch), checkpointing
    to `out` every epoch. `batches` must depend only on the epoch number, so a resumed run continues exactly."""
    out = Path(out)
    device = pick_device(settings.device)
    model.to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr, betas=tuple(settings.betas))
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
    columns = (TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        for epoch in range(start, settings.epochs):
            task = bar.add_task("train", total=steps, epoch=f"{epoch + 1}/{settings.epochs}", loss=float("nan"))
            model.train()
            total, n = 0.0, 0
            for item in batches(epoch):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    loss = loss_fn(model, _to(item, device))
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                total, n = total + float(loss.detach()), n + 1
                bar.update(task, advance=1, loss=total / n)
            history.append(round(total / max(n, 1), 6))
            train_cfg = {**config["train"], "epochs_done": epoch + 1, "history": history}
            save_checkpoint(out, model, {**config, "train": train_cfg},
                            {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1})
    return out


def _image_batches(dataset: AnomalyDataset, settings: TrainSettings) -> tuple[Callable[[int], Iterable], int]:
    """Shuffled mini-batches whose order depends only on (seed, epoch)."""
    batch = min(settings.batch_size, len(dataset))
    drop = len(dataset) > batch

    def batches(epoch: int) -> Iterable:
        order = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        return DataLoader(dataset, batch_size=batch, shuffle=True, generator=order, drop_last=drop)

    return batches, (len(dataset) // batch if drop else 1)


def _setup(kind: str, data, categories, teacher, teacher_weights, random_teacher, image_size, settings, **args):
    cats = resolve_categories(data, categories)
    torch.manual_seed(settings.seed)
    t = create_teacher(teacher, teacher_weights, random_init=random_teacher)
    model = build_model(kind, t, plan_for(teacher, t.channels), **args)
    config = model_config(kind, model, image_size)
    config["train"] = {**asdict(settings), "betas": list(settings.betas), "categories": cats, "data": str(data)}
    return cats, model, InputSpec(image_size, t.mean, t.std), config


def rd_loss(model: nn.Module, item: list) -> torch.Tensor:
    teacher, student = model(item[0])
    return kd_loss(teacher, student)


def train_rd(data: str | Path, categories: str | list[str] | None, out: str | Path, teacher: str = "wide_resnet50_2",
             teacher_weights: str | Path | None = None, random_teacher: bool = False, image_size: int = 256,
             settings: TrainSettings = TrainSettings(), resume: bool = True, progress: bool = True) -> Path:
    """Train Reverse Distillation on the normal training images of `categories` (normally one)."""
    cats, model, spec, config = _setup("rd", data, categories, teacher, teacher_weights, random_teacher, image_size, settings)
    dataset = AnomalyDataset([s for c in cats for s in list_split(data, c, "train")], spec)
    batches, steps = _image_batches(dataset, settings)
    return fit(model, batches, steps, rd_loss, settings, out, config, resume, progress)


def memkd_loss(model: MemKD, item: list, exemplar_teacher: list[torch.Tensor], ms: MemKDSettings) -> torch.Tensor:
    teacher, student = model(item[0])
    loss = kd_loss(teacher, student)
    loss = loss + ms.memorisation_weight * model.memorisation_loss([f.to(item[0].device) for f in exemplar_teacher])
    orth = sum(orthogonality_loss(m.keys[None]) + orthogonality_loss(m.values[None]) for m in model.memories)
    return loss + ms.orth_weight * orth


def train_memkd(data: str | Path, categories: str | list[str] | None, out: str | Path, teacher: str = "wide_resnet50_2",
                teacher_weights: str | Path | None = None, random_teacher: bool = False, image_size: int = 256,
                settings: TrainSettings = TrainSettings(), memkd: MemKDSettings = MemKDSettings(),
                resume: bool = True, progress: bool = True) -> Path:
    """Train MemKD on the normal training images of `categories`; a fixed exemplar set of N of them
    (drawn with the seed) feeds the normality embedding losses."""
    cats, model, spec, config = _setup("memkd", data, categories, teacher, teacher_weights, random_teacher, image_size,
                                       settings, slots=memkd.slots, temperature=memkd.temperature)
    config["train"]["memkd"] = asdict(memkd)
    dataset = AnomalyDataset([s for c in cats for s in list_split(data, c, "train")], spec)
    pick = np.random.default_rng([settings.seed, 7]).choice(len(dataset), min(memkd.exemplars, len(dataset)), replace=False)
    with torch.no_grad():
        exemplar_teacher = model.teacher(torch.stack([dataset[int(i)][0] for i in pick]))
    batches, steps = _image_batches(dataset, settings)
    return fit(model, batches, steps, lambda m, item: memkd_loss(m, item, exemplar_teacher, memkd),
               settings, out, config, resume, progress)


def packd_loss(model: PACKD, item: list, ps: PACKDSettings) -> torch.Tensor:
    """Eq. 7: sum over stages of KD + lambda1 * mean over supports of CDS + lambda2 * orthogonality."""
    queries, supports = item  # (E,Q,3,S,S), (E,k,3,S,S)
    e, q, k = queries.shape[0], queries.shape[1], supports.shape[1]
    r = model.rotations
    with torch.no_grad():
        t_q = model.teacher(queries.flatten(0, 1))
        t_s = model.support_teacher(supports.flatten(0, 1))  # rotation-major: (R*E*k, C, h, w)
    per_image = model.prototypes_per_image(t_s)  # (R*E*k, L, C)
    protos = []
    for p in per_image:
        n, c = p.shape[1], p.shape[2]
        per_cat = p.view(r, e, k, n, c).transpose(0, 1).reshape(e, r * k * n, c)
        protos.append(per_cat.unsqueeze(1).expand(e, q, -1, -1).reshape(e * q, r * k * n, c))
    student = model.decode(t_q, protos)
    loss = kd_loss(t_q, student)
    if ps.orth_weight:
        loss = loss + ps.orth_weight * sum(orthogonality_loss(p) for p in per_image)
    if ps.cds_weight:
        for tq, ts, s, head in zip(t_q, t_s, student, model.projections):
            c = tq.shape[1]
            anchor_support = ts[: e * k].flatten(2).transpose(1, 2).reshape(e, k, -1, c)  # unrotated supports
            query = tq.flatten(2).transpose(1, 2).reshape(e, q, -1, c)
            cand = head(s).flatten(2).transpose(1, 2)
            loss = loss + ps.cds_weight * cds_loss(anchor_support, query, cand, ps.tau)
    return loss


def train_packd(data: str | Path, categories: str | list[str] | None, out: str | Path, teacher: str = "wide_resnet50_2",
                teacher_weights: str | Path | None = None, random_teacher: bool = False, image_size: int = 256,
                settings: TrainSettings = TrainSettings(lr=5e-4), packd: PACKDSettings = PACKDSettings(),
                resume: bool = True, progress: bool = True) -> Path:
    """Meta-train PACKD on episodes over `categories` (all but the target categories)."""
    cats, model, spec, config = _setup("packd", data, categories, teacher, teacher_weights, random_teacher, image_size,
                                       settings, n_prototypes=packd.n_prototypes, rotations=packd.rotations)
    if packd.cds_weight and len(cats) < 2:
        raise PackdError("the contrastive loss needs at least two training categories (or --cds-weight 0)")
    config["train"]["packd"] = asdict(packd)
    sampler = EpisodeSampler(data, cats, spec, packd.shots, packd.queries, packd.categories_per_batch, settings.seed)
    return fit(model, sampler.epoch, len(sampler), lambda m, item: packd_loss(m, item, packd),
               settings, out, config, resume, progress)
