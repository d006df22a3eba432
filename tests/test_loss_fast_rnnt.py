"""Builtin losses against fast_rnnt (k2's RNN-T code as a standalone package) as an oracle.

Skipped unless fast_rnnt is importable; build it with tools/build_fast_rnnt.sh.
"""
from __future__ import annotations

import pytest
import torch

import synthasr.loss as L

fast_rnnt = pytest.importorskip("fast_rnnt", reason="fast_rnnt not installed (build it with tools/build_fast_rnnt.sh)")

LENGTHS = [[30, 10], [22, 7], [30, 3], [12, 10]]  # (T_b, U_b); T >= U as fast_rnnt requires
VOCAB = 20
TOL = dict(atol=1e-4, rtol=1e-5)


def _batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    frames, num_symbols = 30, 10
    am = torch.randn(4, frames, VOCAB, generator=gen)
    lm = torch.randn(4, num_symbols + 1, VOCAB, generator=gen)
    symbols = torch.randint(1, VOCAB, (4, num_symbols), generator=gen)
    boundary = torch.tensor([[0, 0, u, t] for t, u in LENGTHS], dtype=torch.int64)
    return am, lm, symbols, boundary


def _loss_and_grad(fn, *inputs):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    loss = fn(*leaves)
    (loss * torch.arange(1, loss.numel() + 1, dtype=loss.dtype)).sum().backward()
    return loss.detach(), [x.grad for x in leaves]


def test_full_loss_matches_fast_rnnt():
    am, lm, symbols, boundary = _batch(0)
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 30, 11, VOCAB, generator=gen)
    ours, (g_ours,) = _loss_and_grad(
        lambda x: L.rnnt_loss(x, symbols, 0, boundary, reduction="none", backend="builtin"), logits)
    ref, (g_ref,) = _loss_and_grad(
        lambda x: fast_rnnt.rnnt_loss(x, symbols, 0, boundary, reduction="none"), logits)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(g_ours, g_ref, **TOL)


def test_simple_loss_grads_and_ranges_match_fast_rnnt():
    am, lm, symbols, boundary = _batch(2)
    ours, (ox, oy) = L.rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="none", return_grad=True,
                                        backend="builtin")
    ref, (fx, fy) = fast_rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="none", return_grad=True)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(ox, fx, **TOL)
    torch.testing.assert_close(oy, fy, **TOL)
    _, (g_am, g_lm) = _loss_and_grad(
        lambda a, m: L.rnnt_loss_simple(m, a, symbols, 0, boundary, reduction="none", backend="builtin"), am, lm)
    _, (f_am, f_lm) = _loss_and_grad(
        lambda a, m: fast_rnnt.rnnt_loss_simple(m, a, symbols, 0, boundary, reduction="none"), am, lm)
    torch.testing.assert_close(g_am, f_am, **TOL)
    torch.testing.assert_close(g_lm, f_lm, **TOL)
    for s_range in (2, 4, 5):
        ranges = L.get_rnnt_prune_ranges(ox, oy, boundary, s_range)
        assert torch.equal(ranges, fast_rnnt.get_rnnt_prune_ranges(fx, fy, boundary, s_range)), s_range


def test_smoothed_loss_matches_fast_rnnt():
    am, lm, symbols, boundary = _batch(3)
    ours = L.rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.1, boundary, reduction="none", backend="builtin")
    ref = fast_rnnt.rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.1, boundary, reduction="none")
    torch.testing.assert_close(ours, ref, **TOL)


def test_pruned_loss_matches_fast_rnnt_with_same_ranges():
    am, lm, symbols, boundary = _batch(4)
    _, (px_grad, py_grad) = L.rnnt_loss_simple(lm, am, symbols, 0, boundary, return_grad=True, backend="builtin")
    ranges = L.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 4)
    am_p, lm_p = L.do_rnnt_pruning(am, lm, ranges)
    f_am_p, f_lm_p = fast_rnnt.do_rnnt_pruning(am, lm, ranges)
    assert torch.equal(am_p, f_am_p) and torch.equal(lm_p, f_lm_p)
    logits = torch.tanh(am_p + lm_p) * 4
    ours, (g_ours,) = _loss_and_grad(
        lambda x: L.rnnt_loss_pruned(x, symbols, ranges, 0, boundary, reduction="none", backend="builtin"), logits)
    ref, (g_ref,) = _loss_and_grad(
        lambda x: fast_rnnt.rnnt_loss_pruned(x, symbols, ranges, 0, boundary, reduction="none"), logits)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(g_ours, g_ref, **TOL)


def test_explicit_fast_rnnt_backend_dispatches_to_it():
    am, lm, symbols, boundary = _batch(5)
    ours = L.rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="sum", backend="fast_rnnt")
    ref = fast_rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="sum")
    assert torch.equal(ours, ref)
    assert "fast_rnnt" in L.available_backends()
