"""AdamW with decoupled weight decay on matrices only, and step/epoch learning-rate schedules.

The schedule is a plain object (not a ``torch.optim.lr_scheduler``) whose whole state is two ints,
so it round-trips through ``torch.load(weights_only=True)`` and resumes exactly.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn

from synthasr.train.config import OptimConfig


def trainable_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """Named parameters the optimizer may touch (frozen ones are left out on purpose)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def build_optimizer(named_params: Iterable[Tuple[str, nn.Parameter]], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on >=2-D weights (biases, norms and scales are not shrunk)."""
    decay, no_decay = [], []
    for _, p in named_params:
        (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


class LRSchedule:
    """Sets ``lr`` on every param group from the global step and the number of completed epochs."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.step_count = 0
        self.epochs_done = 0
        self._apply()

    def factor(self, step: int, epochs_done: int) -> float:
        """Multiplier on the base lr (pure function of its arguments; tested directly)."""
        cfg = self.cfg
        warm = 1.0
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            warm = cfg.warmup_start + (1.0 - cfg.warmup_start) * step / cfg.warmup_steps
        if cfg.schedule == "constant":
            return warm
        if cfg.schedule == "noam":
            if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
                return warm
            return math.sqrt(max(cfg.warmup_steps, 1) / max(step, 1))
        b, e = cfg.lr_steps, cfg.lr_epochs
        step_decay = ((step**2 + b**2) / b**2) ** -0.25
        epoch_decay = ((epochs_done**2 + e**2) / e**2) ** -0.25
        return warm * step_decay * epoch_decay

    def current_lr(self) -> float:
        return self.cfg.lr * self.factor(self.step_count, self.epochs_done)

    def step(self) -> None:
        """Call after each optimizer step."""
        self.step_count += 1
        self._apply()

    def set_epochs_done(self, epochs_done: int) -> None:
        """Call at the start of each epoch with the number of epochs already finished."""
        self.epochs_done = epochs_done
        self._apply()

    def _apply(self) -> None:
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> Dict[str, int]:
        return {"step_count": self.step_count, "epochs_done": self.epochs_done}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.step_count = int(state["step_count"])
        self.epochs_done = int(state["epochs_done"])
        self._apply()
