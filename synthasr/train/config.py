"""Training configuration: one strict dataclass tree loaded from YAML.

Everything a training run depends on lives here so that a run is reproduced from its YAML alone;
:func:`synthasr.config.load_config` rejects unknown keys and wrong types, naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Literal, Optional

from synthasr.config import ConfigError, check_finite
from synthasr.data.features import FeatureConfig
from synthasr.loss import LossConfig
from synthasr.model.config import ModelConfig


@dataclass
class OptimConfig:
    """AdamW + learning-rate schedule + gradient clipping.

    ``schedule="eden"``: ``lr = base * warm(step) * ((step^2+B^2)/B^2)^-0.25 * ((e^2+E^2)/E^2)^-0.25``
    with ``B = lr_steps``, ``E = lr_epochs``, ``e`` = completed epochs and a linear warm-up from
    ``warmup_start * base`` to ``base`` over ``warmup_steps``. ``schedule="noam"``: linear warm-up to
    ``base`` at ``warmup_steps`` then ``~ step^-0.5``. ``schedule="constant"``: warm-up then flat.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-6
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    schedule: Literal["eden", "noam", "constant"] = "eden"
    warmup_steps: int = 500
    warmup_start: float = 0.1
    lr_steps: float = 5000.0
    lr_epochs: float = 6.0
    max_grad_norm: float = 5.0

    def validate(self) -> None:
        check_finite(self)
        if self.lr <= 0:
            raise ConfigError(f"lr: must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas: expected two numbers in [0, 1), got {self.betas!r}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_start <= 1.0:
            raise ConfigError(f"warmup_start: must be in [0, 1], got {self.warmup_start}")
        if self.lr_steps <= 0 or self.lr_epochs <= 0:
            raise ConfigError(f"lr_steps/lr_epochs: must be positive, got {self.lr_steps}/{self.lr_epochs}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm: must be positive, got {self.max_grad_norm}")


@dataclass
class SpecAugmentConfig:
    """lhotse SpecAugment parameters (time warp, frequency masks, time masks)."""

    enabled: bool = True
    time_warp_factor: int = 80
    num_feature_masks: int = 2
    features_mask_size: int = 27
    num_frame_masks: int = 10
    frames_mask_size: int = 100
    max_frames_mask_fraction: float = 0.15
    p: float = 0.9

    def validate(self) -> None:
        check_finite(self)
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"p: must be in [0, 1], got {self.p}")
        if self.num_feature_masks < 0 or self.num_frame_masks < 0:
            raise ConfigError("num_feature_masks/num_frame_masks: must be >= 0")
        if self.features_mask_size <= 0 or self.frames_mask_size <= 0:
            raise ConfigError("features_mask_size/frames_mask_size: must be positive")
        if not 0.0 < self.max_frames_mask_fraction <= 1.0:
            raise ConfigError(f"max_frames_mask_fraction: must be in (0, 1], got {self.max_frames_mask_fraction}")


@dataclass
class DataConfig:
    """Batching and data-side augmentation for training."""

    max_duration: float = 200.0
    num_buckets: int = 10
    shuffle: bool = True
    drop_last: bool = False
    bucketing: bool = True
    num_workers: int = 0
    on_the_fly_features: bool = False
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def validate(self) -> None:
        check_finite(self)
        if self.max_duration <= 0:
            raise ConfigError(f"max_duration: must be positive, got {self.max_duration}")
        if self.num_buckets < 1:
            raise ConfigError(f"num_buckets: must be >= 1, got {self.num_buckets}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0, got {self.num_workers}")


@dataclass
class TrainConfig:
    """A whole single-stage training run (the schedule runner builds one per stage)."""

    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    num_epochs: int = 10
    max_steps: Optional[int] = None
    checkpoint_every_n_steps: int = 1000
    keep_last_k: int = 5
    log_every_n_steps: int = 25
    valid_every_n_steps: int = 0
    valid_wer: bool = True
    amp: Literal["none", "bf16", "fp16"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_bad_steps: int = 10
    ddp_find_unused_parameters: bool = False
    progress_bar: bool = True
    train_cuts: Optional[str] = None
    dev_cuts: Optional[str] = None
    bpe_model: Optional[str] = None
    exp_dir: Optional[str] = None

    def validate(self) -> None:
        check_finite(self)
        if self.num_epochs < 1:
            raise ConfigError(f"num_epochs: must be >= 1, got {self.num_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1, got {self.max_steps}")
        for name in ("checkpoint_every_n_steps", "log_every_n_steps", "valid_every_n_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0 (0 disables), got {getattr(self, name)}")
        if self.keep_last_k < 0:
            raise ConfigError(f"keep_last_k: must be >= 0 (0 keeps all), got {self.keep_last_k}")
        if self.max_bad_steps < 0:
            raise ConfigError(f"max_bad_steps: must be >= 0, got {self.max_bad_steps}")


def validate_tree(config: Any, key: str = "") -> None:
    """Run ``validate()`` on a dataclass config and every nested section, naming the dotted key.

    YAML goes through :func:`synthasr.config.from_dict`, which does this on load; a config built in
    Python (``TrainConfig(optim=OptimConfig(lr=float("inf")))``) is checked here before training.
    """
    if not dataclasses.is_dataclass(config):
        return
    for f in dataclasses.fields(config):
        validate_tree(getattr(config, f.name), f"{key}{f.name}.")
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{key}{e}") from None
