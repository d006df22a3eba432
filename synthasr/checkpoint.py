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
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from synthasr.utils.io import atomic_path

FORMAT = "synthasr-checkpoint"
VERSION = 1
PathLike = Union[str, Path]
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive (torch >= 1.6)
_KNOWN_MAGIC = {b"RIFF": "a WAV file", b"fLaC": "a FLAC file", b"OggS": "an Ogg file", b"ID3": "an MP3 file"}


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
    """Write a checkpoint atomically (temp file in the same dir + rename).

    Refuses (nothing written) a state dict with NaN/Inf weights: such a file would replace a good
    checkpoint and then resume, average, decode or export to garbage.
    """
    path = Path(path)
    bad = first_nonfinite(model_state)
    if bad is not None:
        raise CheckpointError(f"{path}: refusing to save non-finite weights ({bad} has NaN/Inf); nothing written")
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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu",
                    mmap: bool = False) -> Dict[str, Any]:
    """Load and sanity-check a checkpoint without ever unpickling arbitrary objects.

    Every failure is a one-line :class:`CheckpointError` naming the file: not a torch archive (a WAV,
    random bytes), truncated, foreign Python objects, wrong layout, or NaN/Inf weights. ``mmap=True``
    maps tensors instead of reading them (a cheap loadability check).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    _check_header(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: refused to load: contains non-tensor Python objects{what}") from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, IndexError, KeyError ... on bad archives
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint: {_first_line(e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a SynthASR checkpoint (missing format={FORMAT!r})")
    version = ckpt.get("version", -1)
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: checkpoint version must be an int, got {type(version).__name__}")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version} is newer than this SynthASR ({VERSION})")
    for key in ("model", "model_config"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint lacks {key!r} (or it is not a mapping)")
    not_tensor = next((k for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)), None)
    if not_tensor is not None:
        raise CheckpointError(f"{path}: weight {not_tensor!r} is not a tensor")
    bad = first_nonfinite(ckpt["model"])
    if bad is not None:
        raise CheckpointError(f"{path}: weights are not finite ({bad} has NaN/Inf); refusing to use them")
    return ckpt


def checkpoint_is_loadable(path: PathLike) -> bool:
    """True when :func:`load_checkpoint` accepts ``path`` (tensors memory-mapped, not read into RAM)."""
    try:
        load_checkpoint(path, mmap=True)
    except CheckpointError:
        return False
    return True


def first_nonfinite(state: Mapping[str, Any]) -> Optional[str]:
    """Name of the first floating-point tensor holding NaN or Inf, or None."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            if not bool(torch.isfinite(value).all()):
                return key
    return None


def _check_header(path: Path) -> None:
    """Refuse files that are not torch zip archives before torch.load parses them."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e.strerror or e}") from None
    if head == _ZIP_MAGIC:
        return
    kind = next((name for magic, name in _KNOWN_MAGIC.items() if head.startswith(magic)), None)
    what = kind or ("an empty file" if not head else f"a file starting with {head!r}")
    raise CheckpointError(f"{path}: not a checkpoint: {what}, not a torch archive")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def tokenizer_proto(ckpt: Dict[str, Any]) -> Optional[bytes]:
    t = ckpt.get("tokenizer")
    return None if t is None else tensor_to_bytes(t)
