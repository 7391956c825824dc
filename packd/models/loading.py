"""Checkpoints to models: what a checkpoint config says the model is (`model_config`), and the model or the
scorer rebuilt from a checkpoint folder (no hub access: the teacher's weights are inside)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from torch import nn

from packd.data.preprocess import InputSpec
from packd.errors import PackdError
from packd.methods import method
from packd.models.checkpoint import load_weights, read_config
from packd.models.score_settings import SCORING_FIELDS, ScoreSettings
from packd.models.scoring import Scorer
from packd.models.teachers import Teacher, teacher_skeleton
from packd.training.settings import from_dict, to_dict


def model_config(kind: str, teacher: Teacher, spec: InputSpec, settings: Any) -> dict[str, Any]:
    """The part of a checkpoint config that says what the model is (enough to rebuild it)."""
    return {"kind": kind, "teacher": {"name": teacher.name, "source": teacher.source}, "input": spec.to_dict(),
            "settings": to_dict(settings)}


def load_model(ckpt: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint folder, in eval mode, with its config."""
    model, _, config = _rebuild(ckpt)
    return model, config


def _rebuild(ckpt: str | Path, scoring: Mapping[str, Any] | None = None) -> tuple[nn.Module, Any, dict[str, Any]]:
    config = read_config(ckpt)
    try:
        m = method(config["kind"])
        spec = InputSpec.from_dict(config["input"])
        teacher = teacher_skeleton(config["teacher"]["name"], spec.mean, spec.std, config["teacher"]["source"],
                                   spec.image_size)
    except (KeyError, TypeError) as e:
        raise PackdError(f"checkpoint config in {ckpt} lacks or mistypes {e}") from None
    settings = from_dict(m.settings, config.get("settings"), f"{ckpt}/config.json settings")
    weights_config = config
    if scoring:
        known = SCORING_FIELDS & {f.name for f in fields(m.settings)}
        if set(scoring) - known:
            raise PackdError(f"{m.kind} models take scoring overrides of {sorted(known) or 'nothing'}, "
                             f"not {sorted(set(scoring) - known)}")
        settings = replace(settings, **scoring)
        config = {**config, "settings": to_dict(settings)}  # what this model scores with, e.g. for a manifest
    model, settings = m.build(teacher, settings)
    load_weights(ckpt, model, weights_config)
    model.eval()
    return model, settings, config


def load_scorer(ckpt: str | Path, scoring: Mapping[str, Any] | None = None) -> tuple[Scorer, dict[str, Any]]:
    """A checkpoint's model behind the one scoring interface (with its scoring settings), in eval mode.
    `scoring` overrides settings that change how maps are scored, not the weights (`SCORING_FIELDS`)."""
    model, settings, config = _rebuild(ckpt, scoring)
    how = settings if isinstance(settings, ScoreSettings) else None
    return Scorer(model, InputSpec.from_dict(config["input"]), method(config["kind"]).few_shot, how).eval(), config
