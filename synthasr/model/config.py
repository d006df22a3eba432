"""Model hyper-parameters: one dataclass, three size presets, and the encoder-family switch.

``encoder: conformer`` (default) trains a Conformer from scratch with the preset sizes;
``encoder: whisper`` uses Whisper's encoder (``whisper.dims``, or the dims of ``whisper.checkpoint``),
and ``encoder_dim``/``num_encoder_layers``/``num_heads``/``ff_dim``/``feature_dim`` then follow Whisper.

A preset supplies defaults; any key written explicitly in YAML overrides it. Fields left ``None`` mean
"take it from the preset" so that ``ModelConfig(preset="small", num_encoder_layers=8)`` is small with
eight layers. :meth:`ModelConfig.resolved` returns the fully specified copy that a checkpoint stores.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

from synthasr.config import ConfigError

# Sizes measured with synthasr.model.parameter_counts at vocab_size=500 (see docs in the report):
# tiny 0.39 M (unit tests), small 4.81 M (CPU default), medium 27.8 M (GPU); simple-loss projections
# included, which are training-only. ``small`` uses 64 subsampling channels: with d_model channels
# the second 3x3 conv alone costs ~40% of CPU encoder time.
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(encoder_dim=64, num_encoder_layers=2, num_heads=2, ff_dim=128, conv_kernel_size=7,
                 decoder_dim=64, joiner_dim=64, dropout=0.0),
    "small": dict(encoder_dim=144, num_encoder_layers=8, num_heads=4, ff_dim=576, conv_kernel_size=15,
                  decoder_dim=256, joiner_dim=256, dropout=0.1, subsampling_channels=64),
    "medium": dict(encoder_dim=288, num_encoder_layers=12, num_heads=8, ff_dim=1152, conv_kernel_size=31,
                   decoder_dim=512, joiner_dim=512, dropout=0.1),
}
_FALLBACK = PRESETS["small"]
# Sanity caps, far above any real model (Whisper large: 1280 wide, 32 layers, 128 mels, 51865 tokens):
# a corrupt or hostile config is refused before a multi-GB model is allocated.
MAX_SIZES: Dict[str, int] = dict(
    feature_dim=1024, encoder_dim=8192, num_encoder_layers=128, num_heads=128, ff_dim=32768,
    conv_kernel_size=1023, subsampling_channels=8192, decoder_dim=8192, context_size=64, lstm_layers=32,
    joiner_dim=8192, vocab_size=1 << 20,
)
ENCODERS = ("conformer", "whisper")


@dataclass
class WhisperDims:
    """Whisper encoder sizes in OpenAI's naming (tiny: 80 mels, 384 wide, 6 heads, 4 layers)."""

    n_mels: int = 80
    n_state: int = 384
    n_head: int = 6
    n_layer: int = 4
    n_ctx: int = 1500  # positions after the stem: 30 s at 50 frames/s

    def validate(self) -> None:
        for name in ("n_mels", "n_state", "n_head", "n_layer", "n_ctx"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.n_state % self.n_head or self.n_state % 2:
            raise ConfigError(f"n_state ({self.n_state}) must be even and divisible by n_head ({self.n_head})")


@dataclass
class WhisperConfig:
    """The Whisper encoder family. ``checkpoint`` (openai .pt, HF model.safetensors or its directory,
    CTranslate2 model.bin or its directory) initialises the encoder when the model is *built*; a saved
    synthasr checkpoint stores the weights and ``checkpoint: null``, keeping the source in ``pretrained_from``."""

    dims: Optional[WhisperDims] = None
    checkpoint: Optional[str] = None
    extra_subsampling: int = 1
    dropout: float = 0.0
    pretrained_from: Optional[str] = None

    def validate(self) -> None:
        if self.dims is None and self.checkpoint is None:
            raise ConfigError("whisper: give dims or a checkpoint to read them from")
        if self.extra_subsampling not in (1, 2):
            raise ConfigError(f"extra_subsampling: expected 1 or 2, got {self.extra_subsampling}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig:
    """Transducer architecture; ``vocab_size`` is filled from the tokenizer."""

    preset: Optional[str] = None
    encoder: str = "conformer"
    whisper: Optional[WhisperConfig] = None
    feature_dim: int = 80
    encoder_dim: Optional[int] = None
    num_encoder_layers: Optional[int] = None
    num_heads: Optional[int] = None
    ff_dim: Optional[int] = None
    conv_kernel_size: Optional[int] = None
    dropout: Optional[float] = None
    subsampling_channels: Optional[int] = None
    decoder_type: str = "stateless"
    decoder_dim: Optional[int] = None
    context_size: int = 2
    lstm_layers: int = 1
    joiner_dim: Optional[int] = None
    vocab_size: int = 0

    def validate(self) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(f"encoder: expected one of {list(ENCODERS)}, got {self.encoder!r}")
        if self.encoder == "whisper" and self.whisper is None:
            raise ConfigError("encoder: whisper needs a whisper: section (dims and/or checkpoint)")
        if self.encoder != "whisper" and self.whisper is not None:
            raise ConfigError(f"whisper: only used with encoder: whisper (encoder is {self.encoder!r})")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.decoder_type not in ("stateless", "lstm"):
            raise ConfigError(f"decoder_type: expected 'stateless' or 'lstm', got {self.decoder_type!r}")
        if self.context_size < 1:
            raise ConfigError(f"context_size: must be >= 1, got {self.context_size}")
        if self.feature_dim < 7:
            raise ConfigError(f"feature_dim: must be >= 7 for the x4 conv subsampling, got {self.feature_dim}")
        if self.vocab_size < 0:
            raise ConfigError(f"vocab_size: must be >= 0, got {self.vocab_size}")
        for name in ("encoder_dim", "num_encoder_layers", "num_heads", "ff_dim", "conv_kernel_size",
                     "decoder_dim", "joiner_dim", "subsampling_channels", "lstm_layers"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: must be positive, got {value}")
        for name, cap in MAX_SIZES.items():
            value = getattr(self, name)
            if value is not None and value > cap:
                raise ConfigError(f"{name}: {value} is implausibly large (at most {cap}); is the config corrupt?")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.conv_kernel_size is not None and self.conv_kernel_size % 2 == 0:
            raise ConfigError(f"conv_kernel_size: must be odd (symmetric padding), got {self.conv_kernel_size}")
        if self.encoder_dim is not None and self.num_heads is not None and self.encoder_dim % self.num_heads:
            raise ConfigError(f"encoder_dim ({self.encoder_dim}) must be divisible by num_heads ({self.num_heads})")

    def resolved(self) -> "ModelConfig":
        """Copy with every ``None`` filled from the preset (or the ``small`` sizes when no preset)."""
        base = PRESETS[self.preset] if self.preset is not None else _FALLBACK
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, default in base.items():
            if values.get(key) is None:
                values[key] = default
        if values["subsampling_channels"] is None:
            values["subsampling_channels"] = values["encoder_dim"]
        if self.encoder == "whisper":
            values.update(self._whisper_sizes())
        out = ModelConfig(**values)
        out.validate()
        return out

    def _whisper_sizes(self) -> Dict[str, Any]:
        """Encoder sizes that follow Whisper's dims (read from the checkpoint when not given)."""
        whisper = self.whisper
        dims = whisper.dims
        if whisper.checkpoint is not None:
            from synthasr.model.pretrained import read_whisper_dims

            found = read_whisper_dims(whisper.checkpoint)
            if dims is not None and dims != found:
                raise ConfigError(f"whisper.dims {dataclasses.asdict(dims)} differ from "
                                  f"{whisper.checkpoint}: {dataclasses.asdict(found)}")
            dims = found
        sizes = dict(feature_dim=dims.n_mels, encoder_dim=dims.n_state, num_encoder_layers=dims.n_layer,
                     num_heads=dims.n_head, ff_dim=4 * dims.n_state)
        for key, value in sizes.items():
            given = getattr(self, key)  # feature_dim defaults to 80 (never None): only another value conflicts
            if given is not None and given != value and not (key == "feature_dim" and given == 80):
                raise ConfigError(f"{key}: {given} conflicts with the Whisper encoder ({value}); leave it unset")
        sizes["whisper"] = dataclasses.replace(whisper, dims=dims)
        return sizes

    @classmethod
    def from_any(cls, cfg: "ModelConfig | Dict[str, Any]") -> "ModelConfig":
        """Accept a ModelConfig or its dict form (e.g. ``model_config`` from a checkpoint)."""
        if isinstance(cfg, ModelConfig):
            return cfg
        from synthasr.config import from_dict

        return from_dict(cls, dict(cfg), where="model_config")
