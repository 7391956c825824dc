"""Train any registered kind: resolve its settings (dataclass defaults, the kind's presets, explicit
options), build the model around its frozen teacher, then run the kind's training, or write the
checkpoint at once for a training-free kind."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from packd.data.datasets import list_split, resolve_categories
from packd.data.preprocess import InputSpec, image_hw
from packd.device import pick_device
from packd.errors import PackdError
from packd.methods import method
from packd.models.checkpoint import CHECKPOINT, save_checkpoint
from packd.models.loading import model_config
from packd.models.score_settings import ScoreSettings, check_border
from packd.models.teachers import create_teacher
from packd.training import distributed
from packd.training.fit import fit
from packd.training.settings import DEFAULT_CACHE_GB, RunConfig, check_cache_gb, option_name, to_dict
from packd_runtime.atomic import check_replaceable


def check_tile(data: Path, categories: list[str], tile: int) -> None:
    """Before training on tiles: every category's training images hold a tile (each image's header read)."""
    if tile < 1:
        raise PackdError(f"--tile must be at least 1 pixel, got {tile}")
    for cat in categories:
        for sample in list_split(data, cat, "train"):
            h, w = image_hw(sample.path)
            if tile > min(h, w):
                raise PackdError(f"--tile {tile} does not fit in the {h}x{w} training image {sample.path}")


def presets(kind: str) -> list[str]:
    """The named presets of a kind ('paper': the paper's settings)."""
    return [p for p in method(kind).presets if p != "default"]


def configure(kind: str, preset: str | None = None, **options: Any) -> tuple[RunConfig, Any]:
    """(RunConfig, kind settings) from the defaults, the kind's default preset, the named preset and
    the given options, in that order; None options are not given. Unknown options are refused."""
    m = method(kind)
    if preset is not None and preset not in presets(kind):
        raise PackdError(f"unknown --preset {preset!r} for {kind}; available: {', '.join(presets(kind)) or 'none'}")
    values = {**m.presets.get("default", {}), **(m.presets[preset] if preset else {}),
              **{k: v for k, v in options.items() if v is not None}}
    run_names = {f.name for f in fields(RunConfig)}
    kind_names = {f.name for f in fields(m.settings)}
    foreign = sorted(set(values) - run_names - kind_names)
    if foreign:
        raise PackdError(f"{', '.join(option_name(k) for k in foreign)} does not apply to --kind {kind}")
    run = RunConfig(**{k: v for k, v in values.items() if k in run_names})
    settings = m.settings(**{k: v for k, v in values.items() if k in kind_names})
    if isinstance(settings, ScoreSettings):  # before training, not at the first evaluation after it
        check_border(settings.border, run.image_size)
    return run, settings


def train(kind: str, *, data: str | Path, out: str | Path, categories: str | list[str] | None = None,
          run: RunConfig | None = None, settings: Any = None, resume: bool = True, progress: bool = True,
          tile: int = 0, teacher_cache_gb: float = DEFAULT_CACHE_GB) -> Path:
    """Train a model of `kind` on the normal images of `categories` (few-shot kinds: the meta-training
    categories, never the targets); returns the checkpoint folder. Missing configs come from `configure`.
    With `tile`, on random tile x tile crops of the images (line-resolution frames, for tiled bundles). The frozen
    teacher's maps are cached in RAM up to `teacher_cache_gb` (0: off). Under torchrun every rank calls this, and
    rank 0 alone writes."""
    m = method(kind)
    check_cache_gb(teacher_cache_gb)
    default_run, default_settings = configure(kind)
    run, settings = run or default_run, settings or default_settings
    data, out = Path(data), Path(out)
    if out.resolve() == data.resolve() or out.resolve() in data.resolve().parents:
        raise PackdError(f"--out {out} would hold the dataset --data {data}: choose another output folder")
    check_replaceable(out, CHECKPOINT)
    cats = resolve_categories(data, categories)
    if tile and m.training is None:
        raise PackdError(f"--tile trains on tiles, but a {kind} model is training-free: export or evaluate it with "
                         "--tile")
    if tile:
        check_tile(data, cats, tile)
    torch.manual_seed(run.seed)
    teacher = create_teacher(run.teacher, run.teacher_weights, random_init=run.random_teacher,
                             image_size=run.image_size)
    if run.image_size % teacher.size_multiple:
        raise PackdError(f"--image-size must be a multiple of {teacher.size_multiple} for {run.teacher}, "
                         f"got {run.image_size}")
    model, settings = m.build(teacher, settings)
    spec = InputSpec(run.image_size, teacher.mean, teacher.std)
    config = {**model_config(kind, teacher, spec, settings), "run": to_dict(run),
              "train": {"data": str(data), "categories": cats, **({"tile": tile} if tile else {})}}
    distributed.setup(pick_device(run.device))  # under torchrun: join the ranks before anything is split or written
    if m.training is None:
        distributed.on_main(lambda: save_checkpoint(
            out, model, {**config, "train": {**config["train"], "epochs_done": 0, "history": []}}))
        return Path(out)
    training = m.training(model, settings, run=run, data=data, categories=cats, spec=spec, tile=tile,
                          cache_gb=teacher_cache_gb)
    return fit(model, training, run=run, out=out, config=config, resume=resume, progress=progress)
