"""Training: ``fit`` (one resumable stage), configs, optimizer/schedule, checkpoint averaging.

Names resolve lazily so ``import synthasr.train`` does not pull in lhotse or tensorboard.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "fit": "synthasr.train.trainer",
    "TrainingError": "synthasr.train.trainer",
    "find_resume_checkpoint": "synthasr.train.trainer",
    "TrainConfig": "synthasr.train.config",
    "OptimConfig": "synthasr.train.config",
    "DataConfig": "synthasr.train.config",
    "SpecAugmentConfig": "synthasr.train.config",
    "average_checkpoints": "synthasr.train.average",
    "find_checkpoints": "synthasr.train.average",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'synthasr.train' has no attribute {name!r}")
