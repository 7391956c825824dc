"""Checkpoints: a directory with `model.safetensors` (every weight, teacher included, so loading needs
no hub), `config.json` (what the model is, how it was trained, and the sha256 of the weights) and
`trainer.pt` (optimizer and progress, read with `weights_only=True`). Written atomically through
`packd_runtime.atomic` (only over a checkpoint, under a lock, recovered after a crash).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from packd.errors import PackdError
from packd_runtime.atomic import atomic_dir, json_marker, read_output
from packd_runtime.files import sha256

FORMAT_VERSION = 4
MODEL_FILE, CONFIG_FILE, TRAINER_FILE = "model.safetensors", "config.json", "trainer.pt"
# a config.json is a packd checkpoint's when it has these: a Hugging Face model's config.json is not
CHECKPOINT = json_marker(CONFIG_FILE, "checkpoint", {"format": int, "kind": str, "model_sha256": str})


def save_checkpoint(out: str | Path, model: nn.Module, config: dict[str, Any],
                    trainer: dict[str, Any] | None = None) -> Path:
    """Write model weights, config (with the weights' sha256) and optional trainer state atomically to `out`."""
    with atomic_dir(out, CHECKPOINT) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / MODEL_FILE))
        config = {"format": FORMAT_VERSION, **config, "model_sha256": sha256(tmp / MODEL_FILE)}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        if trainer is not None:  # serialised in memory: torch's file writer hides ENOSPC behind its own errors
            buffer = io.BytesIO()
            torch.save(trainer, buffer)
            (tmp / TRAINER_FILE).write_bytes(buffer.getbuffer())
    return Path(out)


def read_config(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint's config, checked for presence and format version."""
    path, config = read_output(ckpt, CHECKPOINT)
    if not isinstance(config, dict) or config.get("format") != FORMAT_VERSION:
        found = config.get("format") if isinstance(config, dict) else None
        raise PackdError(f"{path} has format {found!r}; this packd reads format {FORMAT_VERSION}")
    return config


def load_weights(ckpt: str | Path, model: nn.Module, config: dict[str, Any]) -> None:
    """Load `model.safetensors` strictly into a model built from `config` (the checkpoint's, as `read_config`
    gave it), after checking its sha256 against the config (flipped bytes in the weights are refused, never used)."""
    path = Path(ckpt) / MODEL_FILE
    if not path.is_file():
        raise PackdError(f"{ckpt} has no {MODEL_FILE}")
    expected = config.get("model_sha256")
    if not isinstance(expected, str):
        raise PackdError(f"{ckpt}/{CONFIG_FILE} lacks the weights' sha256")
    if sha256(path) != expected:
        raise PackdError(f"corrupted weights {path}: altered since the checkpoint was written (sha256 mismatch)")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise PackdError(f"corrupted weights {path}: {e}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise PackdError(f"weights in {path} do not match the model in its config: {str(e)[:300]}") from None


def load_trainer_state(ckpt: str | Path) -> dict[str, Any] | None:
    """Optimizer state and progress, or None if the checkpoint has none."""
    path = Path(ckpt) / TRAINER_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise PackdError(f"corrupted trainer state {path}: {e}") from None
