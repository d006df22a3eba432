"""Freeze parts of the transducer for a continual-learning stage.

Why: adapting to synthetic speech mostly needs the prediction/joint networks (new words, new token
sequences) while the acoustic encoder is what forgets real-speech robustness when trained on TTS
audio. Freezing the encoder (or its lower layers) is the cheapest protection against forgetting.

Patterns are dotted module paths relative to the model: ``encoder``, ``decoder``, ``joiner``,
``encoder.embed``, ``encoder.layers.3`` or a range ``encoder.layers.0-5`` (both ends inclusive).
:func:`resolve_freeze_patterns` adds the per-layer convenience ``encoder_layers_trainable: N``: train
only the top N encoder layers and what follows them (final norm, output projection), freeze the stem
and the other layers -- the usual step after a frozen-encoder phase.
Freezing sets ``requires_grad=False``; the trainer gives only ``requires_grad`` parameters to the
optimizer. With ``eval_mode=True`` the frozen modules are also kept in ``eval()`` during training so
dropout is off and normalisation statistics (BatchNorm running means) stay exactly as they were.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from torch import nn

_RANGE = re.compile(r"^(\d+)-(\d+)$")


class FreezeError(ValueError):
    """A freeze pattern is malformed or matches no module; the message lists valid names."""


@dataclass
class FreezeReport:
    """What :func:`freeze` did: matched modules, parameter counts, modules to keep in eval mode."""

    patterns: List[str]
    frozen_modules: List[str]
    eval_mode_modules: List[str]
    trainable_params: int
    total_params: int
    frozen_param_names: List[str] = field(default_factory=list)

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    def summary(self) -> str:
        pct = 100.0 * self.trainable_params / max(self.total_params, 1)
        frozen = ", ".join(self.frozen_modules) or "nothing"
        return f"froze {frozen}: {self.trainable_params} of {self.total_params} parameters trainable ({pct:.1f}%)"


def freeze(model: nn.Module, patterns: Sequence[str], eval_mode: bool = True, reset: bool = True) -> FreezeReport:
    """Freeze every module matched by ``patterns``; with ``reset`` all other parameters become trainable.

    Raises :class:`FreezeError` (one line, listing valid module names) if a pattern matches nothing.
    """
    modules = expand_patterns(model, patterns)
    if reset:
        for p in model.parameters():
            p.requires_grad_(True)
    frozen_names = []
    for name in modules:
        for pname, p in model.get_submodule(name).named_parameters():
            p.requires_grad_(False)
            frozen_names.append(f"{name}.{pname}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return FreezeReport(
        patterns=list(patterns),
        frozen_modules=modules,
        eval_mode_modules=list(modules) if eval_mode else [],
        trainable_params=trainable,
        total_params=total,
        frozen_param_names=sorted(set(frozen_names)),
    )


def expand_patterns(model: nn.Module, patterns: Sequence[str]) -> List[str]:
    """Resolve patterns to existing module names (ranges expanded), in pattern order, deduplicated."""
    out: List[str] = []
    for pattern in patterns:
        names = _expand_one(model, pattern)
        out.extend(n for n in names if n not in out)
    return out


def check_patterns(model: nn.Module, patterns: Sequence[str]) -> None:
    """Validate patterns without touching ``requires_grad`` (used before any training starts)."""
    expand_patterns(model, patterns)


def valid_module_names(model: nn.Module) -> List[str]:
    """Top-level modules, their children, and ``a.b.0-N`` ranges for every ModuleList (for errors/help)."""
    names: List[str] = []
    for top, module in model.named_children():
        names.append(top)
        for child, sub in module.named_children():
            if isinstance(sub, (nn.ModuleList, nn.Sequential)) and len(sub) > 0:
                names.append(f"{top}.{child}.0-{len(sub) - 1}")
            else:
                names.append(f"{top}.{child}")
    return names


def encoder_top_layers_patterns(model: nn.Module, num_trainable: int) -> List[str]:
    """Freeze patterns that leave only the top ``num_trainable`` encoder layers trainable, plus every
    encoder module registered after ``encoder.layers`` (final norm, output projection, frame merge);
    the modules registered before it (the stem: subsampling, input dropout) and the lower layers are
    frozen. Works for any encoder with a ``layers`` ModuleList (Conformer, Whisper)."""
    encoder = model.encoder
    layers = getattr(encoder, "layers", None)
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)) or len(layers) == 0:
        raise FreezeError(f"encoder_layers_trainable: {type(encoder).__name__} has no 'layers' list to count from")
    total = len(layers)
    if isinstance(num_trainable, bool) or not isinstance(num_trainable, int) or not 0 <= num_trainable <= total:
        raise FreezeError(f"encoder_layers_trainable: {num_trainable!r} is not in 0..{total} "
                          f"(the encoder has {total} layers)")
    direct = [name for name, _ in encoder.named_parameters(recurse=False)]
    if direct:
        raise FreezeError(f"encoder_layers_trainable: encoder parameter(s) {', '.join(direct)} belong to no "
                          "submodule and cannot be frozen separately; use freeze patterns")
    children = [name for name, _ in encoder.named_children()]
    stem = [f"encoder.{name}" for name in children[: children.index("layers")]]
    lower = [f"encoder.layers.0-{total - num_trainable - 1}"] if num_trainable < total else []
    return stem + lower


def resolve_freeze_patterns(model: nn.Module, patterns: Sequence[str],
                            encoder_layers_trainable: Optional[int] = None) -> List[str]:
    """``patterns`` plus those of ``encoder_layers_trainable`` (when set); a pattern that would freeze
    part of what ``encoder_layers_trainable`` leaves trainable is a :class:`FreezeError`."""
    if encoder_layers_trainable is None:
        return list(patterns)
    extra = encoder_top_layers_patterns(model, encoder_layers_trainable)
    frozen_by_extra = expand_patterns(model, extra)
    kept = [f"encoder.{name}" for name, _ in model.encoder.named_children()
            if f"encoder.{name}" not in frozen_by_extra and name != "layers"]
    kept += [f"encoder.layers.{i}" for i in range(len(model.encoder.layers))
             if f"encoder.layers.{i}" not in frozen_by_extra]
    for name in expand_patterns(model, patterns):
        clash = next((k for k in kept if k == name or k.startswith(name + ".") or name.startswith(k + ".")), None)
        if clash is not None:
            raise FreezeError(f"freeze pattern {name!r} freezes {clash}, which encoder_layers_trainable: "
                              f"{encoder_layers_trainable} leaves trainable")
    return list(patterns) + [p for p in extra if p not in patterns]


def _expand_one(model: nn.Module, pattern: str) -> List[str]:
    pattern = pattern.strip()
    parts = pattern.split(".") if pattern else [""]
    candidates = [""]
    for part in parts:
        match = _RANGE.match(part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if lo > hi:
                raise FreezeError(f"freeze pattern {pattern!r}: empty range {part} (write low-high, low <= high)")
            indices = [str(i) for i in range(lo, hi + 1)]
        else:
            indices = [part]
        candidates = [f"{c}.{i}" if c else i for c in candidates for i in indices]
    found = [c for c in candidates if _has_submodule(model, c)]
    if not found or len(found) != len(candidates):
        missing = [c for c in candidates if c not in found]
        what = "matches no module" if not found else f"refers to missing module(s) {', '.join(missing[:3])}"
        raise FreezeError(
            f"freeze pattern {pattern!r} {what}; valid module names: {', '.join(valid_module_names(model))}"
        )
    return found


def _has_submodule(model: nn.Module, name: str) -> bool:
    if not name:
        return False
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
