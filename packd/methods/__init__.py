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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from packd.checkpoint import load_weights, read_config
from packd.errors import PackdError
from packd.fit import Training
from packd.methods import knn, memkd, packd, rd
from packd.preprocess import InputSpec
from packd.scoring import Scorer
from packd.settings import from_dict, to_dict
from packd.teachers import Teacher, teacher_skeleton


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
    config = read_config(ckpt)
    try:
        m = method(config["kind"])
        spec = InputSpec.from_dict(config["input"])
        teacher = teacher_skeleton(config["teacher"]["name"], spec.mean, spec.std, config["teacher"]["source"],
                                   spec.image_size)
    except (KeyError, TypeError) as e:
        raise PackdError(f"checkpoint config in {ckpt} lacks or mistypes {e}") from None
    model, _ = m.build(teacher, from_dict(m.settings, config.get("settings"), f"{ckpt}/config.json settings"))
    load_weights(ckpt, model)
    model.eval()
    return model, config


def load_scorer(ckpt: str | Path) -> tuple[Scorer, dict[str, Any]]:
    """A checkpoint's model behind the one scoring interface, in eval mode, and its config."""
    model, config = load_model(ckpt)
    return Scorer(model, InputSpec.from_dict(config["input"]), method(config["kind"]).few_shot).eval(), config
