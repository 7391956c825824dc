"""The deployable graphs, built from the same modules as training so they cannot drift from it.

query graph:   images uint8 (B,H,W,3) RGB [+ prototypes_1..3 float32 (n, C_i) for PACKD]
               -> scores float32 (B,), maps float32 (B,S,S)
support graph: images uint8 (k,H,W,3) RGB -> prototypes_1..3 float32 (k*R*L, C_i)   (PACKD only)

Resize and normalisation (`packd.preprocess.Preprocess`) and the anomaly map with its Gaussian
blur (`packd.models.scoring.AnomalyMap`) are inside the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from packd.models import Scorer
from packd.models.packd import PACKD
from packd.preprocess import InputSpec, Preprocess

STAGES = 3


def prototype_names() -> list[str]:
    return [f"prototypes_{i + 1}" for i in range(STAGES)]


class QueryGraph(nn.Module):
    """uint8 frames (+ prototypes) -> (scores, maps)."""

    def __init__(self, scorer: Scorer, spec: InputSpec):
        super().__init__()
        self.preprocess = Preprocess(spec)
        self.scorer = scorer

    def forward(self, images: torch.Tensor, prototypes_1: torch.Tensor | None = None,
                prototypes_2: torch.Tensor | None = None, prototypes_3: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        protos = [p for p in (prototypes_1, prototypes_2, prototypes_3) if p is not None]
        return self.scorer(self.preprocess(images), protos)


class SupportGraph(nn.Module):
    """uint8 frames of k normal images -> one prototype tensor per stage."""

    def __init__(self, scorer: Scorer, spec: InputSpec):
        super().__init__()
        self.preprocess = Preprocess(spec)
        self.scorer = scorer

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.scorer.model.prototypes(self.preprocess(images)))


@dataclass(frozen=True)
class GraphSpec:
    """What export needs to know about one graph: its module, I/O names and dynamic axes."""

    name: str
    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]


def graph_specs(scorer: Scorer, spec: InputSpec) -> list[GraphSpec]:
    """The graphs of a model: PACKD has a support and a query graph, RD and MemKD a query graph."""
    if isinstance(scorer.model, PACKD):
        names = prototype_names()
        return [
            GraphSpec("support", SupportGraph(scorer, spec).eval(), ["images"], names,
                      {"images": {0: "shots"}, **{n: {0: "prototypes"} for n in names}}),
            GraphSpec("query", QueryGraph(scorer, spec).eval(), ["images", *names], ["scores", "maps"],
                      {"images": {0: "batch"}, **{n: {0: "prototypes"} for n in names},
                       "scores": {0: "batch"}, "maps": {0: "batch"}}),
        ]
    return [GraphSpec("query", QueryGraph(scorer, spec).eval(), ["images"], ["scores", "maps"],
                      {"images": {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}})]
