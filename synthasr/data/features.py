"""80-dim log-mel fbank features: one definition shared by training, decoding and export tests.

Extraction uses :class:`lhotse.Fbank` (pure torch; no torchaudio). Precomputed features are stored
with lilcom compression (``LilcomChunkyWriter``); on-the-fly extraction uses the same extractor, so a
model never sees two kinds of features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

from synthasr.config import ConfigError


@dataclass
class FeatureConfig:
    """What the model was trained on; stored in every checkpoint so decode() recomputes it exactly."""

    type: str = "fbank"
    num_mel_bins: int = 80
    sampling_rate: int = 16000
    frame_shift: float = 0.01
    frame_length: float = 0.025
    dither: float = 0.0

    def validate(self) -> None:
        if self.type != "fbank":
            raise ConfigError(f"type: only 'fbank' is supported, got {self.type!r}")
        if self.num_mel_bins <= 0:
            raise ConfigError(f"num_mel_bins: must be positive, got {self.num_mel_bins}")
        if self.sampling_rate <= 0:
            raise ConfigError(f"sampling_rate: must be positive, got {self.sampling_rate}")


def make_extractor(cfg: Optional[Union[FeatureConfig, Dict[str, Any]]] = None):
    """Return a ``lhotse.Fbank`` configured from ``cfg`` (a FeatureConfig or its dict form)."""
    from lhotse import Fbank, FbankConfig

    if cfg is None:
        cfg = FeatureConfig()
    elif isinstance(cfg, dict):
        cfg = FeatureConfig(**cfg)
    return Fbank(
        FbankConfig(
            sampling_rate=cfg.sampling_rate,
            num_mel_bins=cfg.num_mel_bins,
            frame_shift=cfg.frame_shift,
            frame_length=cfg.frame_length,
            dither=cfg.dither,
        )
    )
