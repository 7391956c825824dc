"""One home for settings: frozen dataclasses whose fields carry their help text and bounds.

`RunConfig` holds what every training run needs; each method folder defines its own settings
class (see `packd.methods`). The same field metadata validates values (`validate`, called from
`__post_init__`), parses checkpoint configs strictly (`from_dict`) and becomes the CLI's options
with their help and defaults (`packd.cli`), so a default is written once.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from packd.errors import PackdError


def setting(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, multiple_of: int | None = None, choices: tuple[str, ...] | None = None,
            cli: bool = True) -> Any:
    """A dataclass field with its help text and bounds; `cli=False` keeps it off the command line."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "multiple_of": multiple_of, "choices": choices, "cli": cli}
    return field(default=default, metadata=meta)


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_value(name: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    opt = option_name(name)
    if isinstance(value, float) and not math.isfinite(value):
        raise PackdError(f"{opt} must be a finite number, got {value}")
    if meta.get("ge") is not None and value < meta["ge"]:
        raise PackdError(f"{opt} must be at least {meta['ge']}, got {value}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise PackdError(f"{opt} must be greater than {meta['gt']}, got {value}")
    if meta.get("le") is not None and value > meta["le"]:
        raise PackdError(f"{opt} must be at most {meta['le']}, got {value}")
    if meta.get("multiple_of") and value % meta["multiple_of"]:
        raise PackdError(f"{opt} must be a multiple of {meta['multiple_of']}, got {value}")
    if meta.get("choices") and value not in meta["choices"]:
        raise PackdError(f"{opt} must be one of {', '.join(meta['choices'])}, got {value!r}")


def validate(obj: Any) -> None:
    """Check every field of a settings dataclass against its bounds; PackdError names the option."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is not None and not is_dataclass(value) and not isinstance(value, tuple):
            _check_value(f.name, value, f.metadata)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise PackdError(f"{where} must be an object, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise PackdError(f"{where} must be a list of {len(args)} values, got {value!r}")
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_convert(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(item_types, value)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        raise PackdError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: typing.Mapping[str, Any], where: str = "settings") -> Any:
    """Rebuild a settings dataclass from JSON, strictly: every field present and typed, nothing unknown."""
    if not isinstance(data, dict):
        raise PackdError(f"{where} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    missing = sorted(n for n in names if n not in data)
    if unknown or missing:
        raise PackdError(f"{where} does not fit this packd: unknown {unknown}, missing {missing}")
    return cls(**{n: _convert(hints[n], data[n], f"{where}.{n}") for n in names})


def to_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready dict of a settings dataclass (tuples become lists, nested dataclasses dicts)."""
    def plain(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        return [plain(x) for x in v] if isinstance(v, tuple) else v

    return plain(obj)


def cli_fields(cls: type) -> list[Any]:
    """The fields of `cls` that are command-line options."""
    return [f for f in fields(cls) if f.metadata.get("cli", False)]


def default_of(f: Any) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


DEVICE_HELP = "auto, cpu or cuda[:N]."
DEFAULT_CACHE_GB = 4.0
CACHE_HELP = ("Cache the frozen teacher's maps of every training image and rotation in RAM, computed once per run "
              "(the same losses in a fraction of the time), up to this many GB; 0 turns it off. A cache above the "
              "limit or above the free memory is skipped with a note.")
ORTH_HELP = "Weight of the orthogonality loss (MemKD: memory keys and values; PACKD: prototypes, lambda2)."
ROTATIONS_HELP = "Support rotations (1-4: 0/90/180/270 degrees), in training and at test time."


def check_cache_gb(value: float) -> None:
    """--teacher-cache-gb: a finite size (0 turns the cache off)."""
    if not math.isfinite(value) or value < 0:
        raise PackdError(f"--teacher-cache-gb must be a finite number of GB, at least 0 (0: no cache), got {value}")


def check_device(name: str) -> None:
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return
    raise PackdError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


@dataclass(frozen=True)
class RunConfig:
    """What every training run needs: teacher, input size and optimisation (RD reference: Adam lr 0.005,
    betas (0.5, 0.999), batch 16). Each method's 'default' preset may change some of these."""

    teacher: str = setting("wide_resnet50_2", "timm teacher: wide_resnet50_2 (the papers'), resnet18, "
                           "tf_efficientnet_lite0 (weights ship with packd), ...")
    teacher_weights: str | None = setting(None, "Local teacher weights (.safetensors or .pth) for air-gapped machines.")
    random_teacher: bool = setting(False, "Randomly initialise the teacher (testing only: scores are meaningless).")
    image_size: int = setting(256, "Square input side in pixels: a multiple of 32 for CNN teachers, of the patch "
                              "size (14) for ViT teachers.", ge=32)
    epochs: int = setting(20, "Training epochs.", ge=1)
    batch_size: int = setting(16, "Images per batch; for packd the queries per batch, split over "
                              "--categories-per-batch.", ge=1)
    lr: float = setting(0.005, "Adam learning rate.", gt=0)
    betas: tuple[float, float] = setting((0.5, 0.999), "Adam betas.", cli=False)
    seed: int = setting(0, "Seed for initialisation and data order.", ge=0)
    amp: bool = setting(True, "Mixed precision on GPUs (bf16 where supported, else fp16 with loss scaling).")
    device: str = setting("auto", DEVICE_HELP)

    def __post_init__(self) -> None:
        validate(self)
        check_device(self.device)
