"""The deployable graphs, built from the same modules as training so they cannot drift from it.

query graph:   images uint8 (B,H,W,3) RGB [+ prototypes_1..N float32 (n, C_i) for few-shot kinds]
               -> scores float32 (B,), maps float32 (B,S,S)
support graph: images uint8 (k,H,W,3) RGB -> prototypes_1..N float32 (n, C_i)   (few-shot kinds only)

Resize and normalisation (`packd.preprocess.Preprocess`) and the anomaly map with its Gaussian
blur (`packd.scoring.AnomalyMap`) are inside the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from packd.preprocess import Preprocess
from packd.scoring import Scorer


class QueryGraph(nn.Module):
    """uint8 frames (+ prototypes) -> (scores, maps)."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.preprocess = Preprocess(scorer.spec)
        self.scorer = scorer

    def forward(self, images: torch.Tensor, *prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer(self.preprocess(images), list(prototypes))


class SupportGraph(nn.Module):
    """uint8 frames of k normal images -> one prototype tensor per `scorer.prototype_names` (a bank
    bound, if the kind has one, is applied after this graph: at changeover, in the runtime)."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.preprocess = Preprocess(scorer.spec)
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


def graph_specs(scorer: Scorer) -> list[GraphSpec]:
    """The graphs of a model: few-shot kinds have a support and a query graph, the others a query graph."""
    names = scorer.prototype_names
    protos = {n: {0: "prototypes"} for n in names}
    query = GraphSpec("query", QueryGraph(scorer).eval(), ["images", *names], ["scores", "maps"],
                      {"images": {0: "batch"}, **protos, "scores": {0: "batch"}, "maps": {0: "batch"}})
    if not scorer.few_shot:
        return [query]
    return [GraphSpec("support", SupportGraph(scorer).eval(), ["images"], names, {"images": {0: "shots"}, **protos}),
            query]
