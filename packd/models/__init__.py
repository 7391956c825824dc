"""Model kinds and how to rebuild one from a checkpoint config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from packd.errors import PackdError
from packd.models.rd import ChannelPlan, ReverseDistillation
from packd.teachers import Teacher, teacher_skeleton

KINDS = ("rd",)


def build_model(kind: str, teacher: Teacher, plan: ChannelPlan) -> nn.Module:
    """A fresh model of `kind` around a teacher."""
    if kind == "rd":
        return ReverseDistillation(teacher, plan)
    raise PackdError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")


def model_config(kind: str, teacher: Teacher, plan: ChannelPlan, image_size: int) -> dict[str, Any]:
    """The part of a checkpoint config that says what the model is."""
    return {
        "kind": kind,
        "teacher": {"name": teacher.name, "source": teacher.source},
        "input": {"image_size": image_size, "mean": list(teacher.mean), "std": list(teacher.std)},
        "plan": plan.to_dict(),
    }


def load_model(ckpt: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint directory (no hub access: the teacher's weights are inside)."""
    from packd.checkpoint import load_weights, read_config

    config = read_config(ckpt)
    try:
        t, inp = config["teacher"], config["input"]
        teacher = teacher_skeleton(t["name"], tuple(inp["mean"]), tuple(inp["std"]), t["source"])
        model = build_model(config["kind"], teacher, ChannelPlan.from_dict(config["plan"]))
    except KeyError as e:
        raise PackdError(f"checkpoint config in {ckpt} lacks {e}") from None
    load_weights(ckpt, model)
    model.eval()
    return model, config
