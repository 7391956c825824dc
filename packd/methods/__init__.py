"""The method registry: every model kind is one folder under `packd/methods/` plus one entry in
`METHODS`. Training, evaluation, export, bundles, the CLI and the benchmarks ask the registry; no
other module names a kind.

A folder holds the kind's pure `nn.Module` (`model.py`), its settings dataclass, presets, loss and
training (`training.py`). Its model provides `distances(x, prototypes)` (per-stage distance maps,
see `packd.scoring.Scorer`); a few-shot model also `prototypes(supports)`, `prototype_channels`
and `prototypes_per_shot(image_size)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from torch import nn

from packd.checkpoint import load_weights, read_config
from packd.errors import PackdError
from packd.fit import Training
from packd.methods import knn, memkd, packd, rd
from packd.preprocess import InputSpec
from packd.scoring import Scorer, ScoreSettings
from packd.settings import from_dict, to_dict
from packd.teachers import Teacher, teacher_skeleton

SCORING_FIELDS = frozenset({"stage_weights", "border", "prototype_score"})  # how maps are scored, not the weights


@dataclass(frozen=True)
class Method:
    """One model kind: how to build it, its settings and presets, few-shot or not, how it trains."""

    kind: str
    summary: str
    settings: type
    build: Callable[[Teacher, Any], tuple[nn.Module, Any]]  # (teacher, settings) -> (model, settings resolved)
    few_shot: bool
    training: Callable[..., Training] | None = None  # None: training-free, a checkpoint is written at once
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "default" applies unless overridden

    @property
    def graphs(self) -> tuple[str, ...]:
        """The graphs a bundle of this kind holds: few-shot kinds turn supports into prototypes first."""
        return ("support", "query") if self.few_shot else ("query",)


METHODS: dict[str, Method] = {m.kind: m for m in (
    Method("rd", "Reverse Distillation, per category", rd.RDSettings, rd.build, few_shot=False,
           training=rd.make_training, presets=rd.PRESETS),
    Method("memkd", "MemKD (RD + normality recall memory), per category", memkd.MemKDSettings, memkd.build,
           few_shot=False, training=memkd.make_training, presets=memkd.PRESETS),
    Method("packd", "PACKD, meta-trained few-shot (prototypes from k normal images)", packd.PACKDSettings,
           packd.build, few_shot=True, training=packd.make_training, presets=packd.PRESETS),
    Method("knn", "training-free nearest neighbour: the supports' patches are the memory bank", knn.KNNSettings,
           knn.build, few_shot=True, presets=knn.PRESETS),
)}


def method(kind: str) -> Method:
    """The registry entry of `kind`, or a PackdError listing the known kinds."""
    if kind not in METHODS:
        raise PackdError(f"unknown model kind {kind!r}; known: {', '.join(METHODS)}")
    return METHODS[kind]


def model_config(kind: str, teacher: Teacher, spec: InputSpec, settings: Any) -> dict[str, Any]:
    """The part of a checkpoint config that says what the model is (enough to rebuild it)."""
    return {"kind": kind, "teacher": {"name": teacher.name, "source": teacher.source}, "input": spec.to_dict(),
            "settings": to_dict(settings)}


def load_model(ckpt: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint folder (no hub access: the teacher's weights are inside)."""
    model, _, config = _load(ckpt)
    return model, config


def _load(ckpt: str | Path, scoring: Mapping[str, Any] | None = None) -> tuple[nn.Module, Any, dict[str, Any]]:
    config = read_config(ckpt)
    try:
        m = method(config["kind"])
        spec = InputSpec.from_dict(config["input"])
        teacher = teacher_skeleton(config["teacher"]["name"], spec.mean, spec.std, config["teacher"]["source"],
                                   spec.image_size)
    except (KeyError, TypeError) as e:
        raise PackdError(f"checkpoint config in {ckpt} lacks or mistypes {e}") from None
    settings = from_dict(m.settings, config.get("settings"), f"{ckpt}/config.json settings")
    if scoring:
        known = SCORING_FIELDS & {f.name for f in fields(m.settings)}
        if set(scoring) - known:
            raise PackdError(f"{m.kind} models take scoring overrides of {sorted(known) or 'nothing'}, "
                             f"not {sorted(set(scoring) - known)}")
        settings = replace(settings, **scoring)
        config = {**config, "settings": to_dict(settings)}  # what this model scores with, e.g. for a manifest
    model, settings = m.build(teacher, settings)
    load_weights(ckpt, model)
    model.eval()
    return model, settings, config


def load_scorer(ckpt: str | Path, scoring: Mapping[str, Any] | None = None) -> tuple[Scorer, dict[str, Any]]:
    """A checkpoint's model behind the one scoring interface (with its scoring settings), in eval mode.
    `scoring` overrides settings that change how maps are scored, not the weights (`SCORING_FIELDS`)."""
    model, settings, config = _load(ckpt, scoring)
    how = settings if isinstance(settings, ScoreSettings) else None
    return Scorer(model, InputSpec.from_dict(config["input"]), method(config["kind"]).few_shot, how).eval(), config
