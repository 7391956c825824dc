"""The deployable graphs, built from the same modules as training so they cannot drift from it. Their names, inputs,
outputs and axes are the bundle format's (`packd_runtime.bundle_format`).

Resize and normalisation (`packd.data.preprocess.Preprocess`) and the anomaly map with its Gaussian
blur (`packd.models.scoring.AnomalyMap`) are inside the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from packd.data.preprocess import Preprocess
from packd.models.scoring import Scorer
from packd_runtime.bundle_format import IMAGES, QUERY, QUERY_OUTPUTS, SUPPORT, TILE_INDEX, graph_axes


class QueryGraph(nn.Module):
    """uint8 frames (+ prototypes) -> (scores, maps). Per position (a tiled bundle's per-position memory): the
    prototypes are (positions, n, C_i) and a last input, each tile's position, picks every tile's own."""

    def __init__(self, scorer: Scorer, per_position: bool = False):
        super().__init__()
        self.preprocess = Preprocess(scorer.spec)
        self.scorer, self.per_position = scorer, per_position

    def forward(self, images: torch.Tensor, *prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        protos = list(prototypes)
        if self.per_position:
            *protos, index = protos
            protos = [p[index] for p in protos]  # (batch, n, C_i): each tile its position's memory
        return self.scorer(self.preprocess(images), protos)


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


def graph_specs(scorer: Scorer, per_position: bool = False) -> list[GraphSpec]:
    """The graphs of a model, named as the bundle format names them: few-shot kinds have a support and a query
    graph, the others a query graph; `per_position`: the query graph of a tiled per-position memory."""
    names = scorer.prototype_names
    axes = graph_axes(len(names), per_position)
    query = GraphSpec(QUERY, QueryGraph(scorer, per_position).eval(),
                      [IMAGES, *names, *([TILE_INDEX] if per_position else [])], list(QUERY_OUTPUTS), axes[QUERY])
    if not scorer.few_shot:
        return [query]
    return [GraphSpec(SUPPORT, SupportGraph(scorer).eval(), [IMAGES], names, axes[SUPPORT]), query]
