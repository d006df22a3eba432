"""Optimizer parameter groups and the Eden / Noam / constant learning-rate schedules."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synthasr.train.config import OptimConfig
from synthasr.train.optim import LRSchedule, build_optimizer, trainable_parameters


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def test_weight_decay_only_on_matrices_and_frozen_params_excluded():
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(trainable_parameters(model), OptimConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([2, 8])]
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model[0].weight) not in ids and id(model[0].bias) in ids


def test_no_trainable_parameters_is_an_error():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(trainable_parameters(model), OptimConfig())


def test_eden_matches_formula_with_linear_warmup():
    cfg = OptimConfig(lr=0.01, schedule="eden", warmup_steps=100, warmup_start=0.5, lr_steps=1000.0, lr_epochs=4.0)
    sched = LRSchedule(torch.optim.AdamW(_model().parameters()), cfg)
    # In warm-up: linear from 0.5 to 1.0 times the Eden value.
    s = 50
    eden = ((s**2 + 1000.0**2) / 1000.0**2) ** -0.25
    assert sched.factor(s, 0) == pytest.approx((0.5 + 0.5 * 0.5) * eden)
    # After warm-up, both decays apply.
    s, e = 3000, 2
    expected = ((s**2 + 1e6) / 1e6) ** -0.25 * ((e**2 + 16.0) / 16.0) ** -0.25
    assert sched.factor(s, e) == pytest.approx(expected)
    assert sched.factor(0, 0) == pytest.approx(0.5)


def test_noam_peaks_at_warmup_then_decays_as_inverse_sqrt():
    cfg = OptimConfig(lr=1.0, schedule="noam", warmup_steps=100, warmup_start=0.0)
    sched = LRSchedule(torch.optim.AdamW(_model().parameters()), cfg)
    assert sched.factor(50, 0) == pytest.approx(0.5)
    assert sched.factor(100, 0) == pytest.approx(1.0)
    assert sched.factor(400, 0) == pytest.approx(0.5)
    assert sched.factor(400, 3) == sched.factor(400, 0)  # no epoch term


def test_schedule_sets_group_lr_and_round_trips():
    cfg = OptimConfig(lr=0.02, schedule="eden", warmup_steps=10, warmup_start=0.1)
    opt = torch.optim.AdamW(_model().parameters())
    sched = LRSchedule(opt, cfg)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.002)
    for _ in range(25):
        sched.step()
    sched.set_epochs_done(3)
    state = sched.state_dict()
    assert state == {"step_count": 25, "epochs_done": 3}
    other_opt = torch.optim.AdamW(_model().parameters())
    other = LRSchedule(other_opt, cfg)
    other.load_state_dict(state)
    assert other_opt.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert math.isclose(other.current_lr(), 0.02 * other.factor(25, 3))


def test_constant_schedule_is_flat_after_warmup():
    cfg = OptimConfig(lr=0.5, schedule="constant", warmup_steps=4, warmup_start=0.0)
    sched = LRSchedule(torch.optim.AdamW(_model().parameters()), cfg)
    assert [sched.factor(s, 0) for s in (0, 2, 4, 1000)] == [0.0, 0.5, 1.0, 1.0]
