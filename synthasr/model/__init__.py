"""The transducer: ``build_model(cfg)`` (Conformer or pretrained-Whisper encoder) and parameter accounting."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Union

from synthasr.model.config import PRESETS, ModelConfig, WhisperConfig, WhisperDims
from synthasr.model.encoder import subsampled_lengths
from synthasr.model.transducer import TranscriptError, Transducer

__all__ = ["ModelConfig", "PRESETS", "Transducer", "TranscriptError", "WhisperConfig", "WhisperDims",
           "build_model", "parameter_counts", "subsampled_lengths"]


def build_model(cfg: Union[ModelConfig, Dict[str, Any]]) -> Transducer:
    """Build a Transducer from a config or its dict form (strictly checked).

    Randomly initialised, except that ``whisper.checkpoint`` (when set) initialises the encoder from
    pretrained weights: the file is read and shape-checked completely before the model is built, and
    the returned model's config says ``checkpoint: null, pretrained_from: <file>`` so that a saved
    synthasr checkpoint (which holds every weight) never needs the original file again.
    """
    cfg = ModelConfig.from_any(cfg).resolved()
    if cfg.encoder != "whisper" or cfg.whisper.checkpoint is None:
        return Transducer(cfg)
    from synthasr.model.pretrained import load_whisper_encoder

    source = cfg.whisper.checkpoint
    weights = load_whisper_encoder(source, expected=cfg.whisper.dims)
    whisper = dataclasses.replace(cfg.whisper, checkpoint=None, pretrained_from=str(source))
    model = Transducer(dataclasses.replace(cfg, whisper=whisper))
    weights.load_into(model.encoder)
    return model


def parameter_counts(model) -> Dict[str, int]:
    """Trainable-or-not parameter counts for ``encoder``, ``decoder``, ``joiner``, ``simple_proj``
    (the simple-loss projections, unused at inference) and ``total``."""
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("encoder", "decoder", "joiner")}
    counts["simple_proj"] = sum(p.numel() for n, p in model.named_parameters() if n.startswith("simple_"))
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
