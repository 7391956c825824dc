"""The method registry: every model kind is one folder under `packd/methods/` (named as the kind) plus one entry
in `METHODS`. Training, evaluation, export, bundles, the CLI and the benchmarks ask the registry; no other module
names a kind.

A folder holds the kind's pure `nn.Module` (`model.py`), its settings dataclass and presets (`settings.py`,
torch-free, so `--help` never imports torch), and `build(teacher, settings)` plus, unless the kind is
training-free, `make_training(...)` (`training.py`). Its model provides `distances(x, prototypes)` (per-stage
distance maps, see `packd.models.scoring.Scorer`); a few-shot model also `prototypes(supports)`,
`prototype_channels` and `prototypes_per_shot(image_size)`. Rebuilding a model from a checkpoint is
`packd.models.loading`'s job.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from packd.errors import PackdError
from packd.methods.knn.settings import PRESETS as KNN_PRESETS
from packd.methods.knn.settings import KNNSettings
from packd.methods.memkd.settings import PRESETS as MEMKD_PRESETS
from packd.methods.memkd.settings import MemKDSettings
from packd.methods.packd.settings import PRESETS as PACKD_PRESETS
from packd.methods.packd.settings import PACKDSettings
from packd.methods.rd.settings import PRESETS as RD_PRESETS
from packd.methods.rd.settings import RDSettings


@dataclass(frozen=True)
class Method:
    """One model kind: its settings and presets, few-shot or not; its model code (`packd.methods.<kind>.training`,
    which imports torch) is loaded on first use."""

    kind: str
    summary: str
    settings: type
    few_shot: bool
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "default" applies unless overridden

    @property
    def code(self) -> ModuleType:
        """The kind's `training` module: `build` and, unless training-free, `make_training`."""
        return importlib.import_module(f"packd.methods.{self.kind}.training")

    @property
    def build(self) -> Callable[..., tuple[Any, Any]]:
        """(teacher, settings) -> (model, settings resolved, e.g. the student layout filled in)."""
        return self.code.build

    @property
    def training(self) -> Callable[..., Any] | None:
        """The kind's `make_training`, or None for a training-free kind (its checkpoint is written at once)."""
        return getattr(self.code, "make_training", None)

    @property
    def graphs(self) -> tuple[str, ...]:
        """The graphs a bundle of this kind holds: few-shot kinds turn supports into prototypes first."""
        return ("support", "query") if self.few_shot else ("query",)


METHODS: dict[str, Method] = {m.kind: m for m in (
    Method("rd", "Reverse Distillation, per category", RDSettings, few_shot=False, presets=RD_PRESETS),
    Method("memkd", "MemKD (RD + normality recall memory), per category", MemKDSettings, few_shot=False,
           presets=MEMKD_PRESETS),
    Method("packd", "PACKD, meta-trained few-shot (prototypes from k normal images)", PACKDSettings, few_shot=True,
           presets=PACKD_PRESETS),
    Method("knn", "training-free nearest neighbour: the supports' patches are the memory bank", KNNSettings,
           few_shot=True, presets=KNN_PRESETS),
)}


def method(kind: str) -> Method:
    """The registry entry of `kind`, or a PackdError listing the known kinds."""
    if kind not in METHODS:
        raise PackdError(f"unknown kind {kind!r}; known: {', '.join(METHODS)}")
    return METHODS[kind]
