"""Conformer transducer: ``build_model(cfg)`` and parameter accounting."""
from __future__ import annotations

from typing import Any, Dict, Union

from synthasr.model.config import PRESETS, ModelConfig
from synthasr.model.encoder import subsampled_lengths
from synthasr.model.transducer import TranscriptError, Transducer

__all__ = ["ModelConfig", "PRESETS", "Transducer", "TranscriptError", "build_model", "parameter_counts",
           "subsampled_lengths"]


def build_model(cfg: Union[ModelConfig, Dict[str, Any]]) -> Transducer:
    """Build a randomly initialised Transducer from a config or its dict form (strictly checked)."""
    return Transducer(ModelConfig.from_any(cfg))


def parameter_counts(model) -> Dict[str, int]:
    """Trainable-or-not parameter counts for ``encoder``, ``decoder``, ``joiner``, ``simple_proj``
    (the simple-loss projections, unused at inference) and ``total``."""
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("encoder", "decoder", "joiner")}
    counts["simple_proj"] = sum(p.numel() for n, p in model.named_parameters() if n.startswith("simple_"))
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
