"""Model kinds, how to rebuild one from a checkpoint config, and the one scoring wrapper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from packd.errors import PackdError
from packd.models.knn import NearestNeighbour
from packd.models.memkd import MemKD
from packd.models.packd import PACKD
from packd.models.rd import ChannelPlan, ReverseDistillation
from packd.models.scoring import AnomalyMap
from packd.teachers import Teacher, teacher_skeleton

KINDS = ("rd", "memkd", "packd")
FEW_SHOT = (PACKD, NearestNeighbour)


def build_model(kind: str, teacher: Teacher, plan: ChannelPlan, **args: Any) -> nn.Module:
    """A fresh model of `kind` around a teacher; `args` are the kind's own settings (see `model_args`)."""
    if kind == "rd":
        return ReverseDistillation(teacher, plan)
    if kind == "memkd":
        return MemKD(teacher, plan, **args)
    if kind == "packd":
        return PACKD(teacher, plan, **args)
    raise PackdError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")


def model_args(model: nn.Module) -> dict[str, Any]:
    """The settings needed to rebuild `model` besides teacher and channel plan."""
    if isinstance(model, PACKD):
        return {"n_prototypes": model.n_prototypes, "rotations": model.rotations}
    if isinstance(model, MemKD):
        m = model.memories[0]
        return {"slots": m.keys.shape[0], "temperature": m.temperature}
    return {}


def model_config(kind: str, model: nn.Module, image_size: int) -> dict[str, Any]:
    """The part of a checkpoint config that says what the model is."""
    teacher = model.teacher
    return {
        "kind": kind,
        "teacher": {"name": teacher.name, "source": teacher.source},
        "input": {"image_size": image_size, "mean": list(teacher.mean), "std": list(teacher.std)},
        "plan": model.plan.to_dict(),
        "model_args": model_args(model),
    }


def load_model(ckpt: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint directory (no hub access: the teacher's weights are inside)."""
    from packd.checkpoint import load_weights, read_config

    config = read_config(ckpt)
    try:
        t, inp = config["teacher"], config["input"]
        teacher = teacher_skeleton(t["name"], tuple(inp["mean"]), tuple(inp["std"]), t["source"])
        model = build_model(config["kind"], teacher, ChannelPlan.from_dict(config["plan"]), **config.get("model_args", {}))
    except KeyError as e:
        raise PackdError(f"checkpoint config in {ckpt} lacks {e}") from None
    load_weights(ckpt, model)
    model.eval()
    return model, config


class Scorer(nn.Module):
    """Any model kind -> one interface: prototypes(supports) once per product, forward(x, prototypes) -> (scores, maps).

    Models without a support path (RD, MemKD) return no prototypes and ignore them.
    """

    def __init__(self, model: nn.Module, image_size: int):
        super().__init__()
        self.model = model
        self.anomaly_map = AnomalyMap(image_size)
        self.few_shot = isinstance(model, FEW_SHOT)

    @torch.no_grad()
    def prototypes(self, supports: torch.Tensor) -> list[torch.Tensor]:
        if not self.few_shot:
            return []
        if supports.shape[0] == 0:
            raise PackdError("empty support set: give at least one normal image")
        return self.model.prototypes(supports)

    def forward(self, x: torch.Tensor, prototypes: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.model, NearestNeighbour):
            return self.anomaly_map.from_distances(self.model(x, prototypes))
        if isinstance(self.model, PACKD):
            if not prototypes:
                raise PackdError("PACKD needs prototypes: compute them from the support images first")
            return self.anomaly_map(*self.model(x, prototypes))
        return self.anomaly_map(*self.model(x))
