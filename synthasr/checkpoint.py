"""The on-disk model format: weights + model config + tokenizer in one file.

A low room on purpose: ``decode/`` and ``export/`` need to read checkpoints without importing the
trainer. Files are written atomically (a killed writer leaves the previous checkpoint intact) and
read with ``torch.load(weights_only=True)``, so a checkpoint can never execute code on load.

Layout of the saved dict (all values are tensors, numbers, strings, lists or dicts)::

    format: "synthasr-checkpoint"    version: 1
    model: state_dict                model_config: dict (synthasr.model config, incl. vocab_size)
    feature_config: dict             tokenizer: uint8 tensor (sentencepiece model proto) or absent
    train_state: dict (optional: optimizer, scheduler, sampler, rng, step, epoch, ...)
    meta: dict (free-form: stage name, source counts, ...)
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from synthasr.utils.io import atomic_path

FORMAT = "synthasr-checkpoint"
VERSION = 1
PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe, or does not match what the caller expects."""


def bytes_to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.cpu().numpy().tobytes())


def save_checkpoint(
    path: PathLike,
    model_state: Dict[str, torch.Tensor],
    model_config: Dict[str, Any],
    feature_config: Optional[Dict[str, Any]] = None,
    tokenizer_proto: Optional[bytes] = None,
    train_state: Optional[Dict[str, Any]] = None,
    meta: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint atomically (temp file in the same dir + rename)."""
    payload: Dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "model_config": dict(model_config),
        "feature_config": dict(feature_config or {}),
        "meta": dict(meta or {}),
    }
    if tokenizer_proto is not None:
        payload["tokenizer"] = bytes_to_tensor(tokenizer_proto)
    if train_state is not None:
        payload["train_state"] = train_state
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load and sanity-check a checkpoint without ever unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load: contains non-tensor Python objects ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a SynthASR checkpoint (missing format={FORMAT!r})")
    if int(ckpt.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than this SynthASR ({VERSION})")
    for key in ("model", "model_config"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def tokenizer_proto(ckpt: Dict[str, Any]) -> Optional[bytes]:
    t = ckpt.get("tokenizer")
    return None if t is None else tensor_to_bytes(t)
