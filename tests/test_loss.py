"""Builtin RNN-T losses against a plain per-cell dynamic programme written out here in float64."""
from __future__ import annotations

import subprocess
import sys
from typing import Callable, List, Optional

import pytest
import torch

import synthasr.loss as L
from synthasr.config import ConfigError, from_dict
from synthasr.loss import backends

BLANK = 0
Scorer = Callable[[int, int], Optional[torch.Tensor]]


# ----------------------------------------------------------------------------- naive reference


def naive_lattice_logprob(blank_lp: Scorer, symbol_lp: Scorer, num_frames: int, num_symbols: int) -> torch.Tensor:
    """log P(y | x) by the textbook recursion, one cell at a time.

    ``blank_lp(t, u)`` / ``symbol_lp(t, u)``: log-prob of blank / of the next target symbol at frame t
    after u symbols, or None when that transition is not allowed (pruned away).
    """
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64)
    alpha: List[List[torch.Tensor]] = [[neg_inf] * (num_symbols + 1) for _ in range(num_frames)]
    for t in range(num_frames):
        for u in range(num_symbols + 1):
            terms = []
            if t == 0 and u == 0:
                terms.append(torch.zeros((), dtype=torch.float64))
            if t > 0 and blank_lp(t - 1, u) is not None:
                terms.append(alpha[t - 1][u] + blank_lp(t - 1, u))
            if u > 0 and symbol_lp(t, u - 1) is not None:
                terms.append(alpha[t][u - 1] + symbol_lp(t, u - 1))
            if terms:
                alpha[t][u] = torch.logsumexp(torch.stack(terms), dim=0)
    final = blank_lp(num_frames - 1, num_symbols)
    return alpha[num_frames - 1][num_symbols] + (final if final is not None else neg_inf)


def naive_full_loss(logits: torch.Tensor, symbols: torch.Tensor, lengths: List[List[int]]) -> torch.Tensor:
    """Per-utterance -log P from full logits (B,T,U+1,V) with (T_b, U_b) per utterance."""
    losses = []
    for b, (num_frames, num_symbols) in enumerate(lengths):
        logp = logits[b].double().log_softmax(-1)
        y = symbols[b].tolist()
        losses.append(-naive_lattice_logprob(
            lambda t, u: logp[t, u, BLANK], lambda t, u: logp[t, u, y[u]], num_frames, num_symbols
        ))
    return torch.stack(losses)


def naive_pruned_loss(logits: torch.Tensor, symbols: torch.Tensor, ranges: torch.Tensor, lengths) -> torch.Tensor:
    """Per-utterance -log P over the band: a cell (t, u) outside ``ranges[b, t]`` has no transitions."""
    losses = []
    for b, (num_frames, num_symbols) in enumerate(lengths):
        logp = logits[b].double().log_softmax(-1)
        y = symbols[b].tolist()
        slot = [{u: k for k, u in enumerate(ranges[b, t].tolist())} for t in range(logits.shape[1])]

        def blank_lp(t, u, logp=logp, slot=slot):
            return logp[t, slot[t][u], BLANK] if u in slot[t] else None

        def symbol_lp(t, u, logp=logp, slot=slot, y=y):
            return logp[t, slot[t][u], y[u]] if u in slot[t] else None

        losses.append(-naive_lattice_logprob(blank_lp, symbol_lp, num_frames, num_symbols))
    return torch.stack(losses)


# ----------------------------------------------------------------------------- fixtures


def make_batch(seed: int, lengths, vocab: int = 7, dtype=torch.float64):
    """Random logits/symbols padded to the longest (T_b, U_b) and the matching boundary."""
    gen = torch.Generator().manual_seed(seed)
    frames = max(t for t, _ in lengths)
    num_symbols = max(u for _, u in lengths)
    logits = torch.randn(len(lengths), frames, num_symbols + 1, vocab, generator=gen, dtype=dtype)
    symbols = torch.randint(1, vocab, (len(lengths), num_symbols), generator=gen)
    boundary = torch.tensor([[0, 0, u, t] for t, u in lengths], dtype=torch.int64)
    return logits, symbols, boundary


LENGTHS = [[8, 5], [5, 2], [7, 0], [6, 5]]  # (T_b, U_b), including an utterance with no symbols


def simple_batch(seed: int, lengths=LENGTHS, vocab: int = 7):
    gen = torch.Generator().manual_seed(seed)
    frames = max(t for t, _ in lengths)
    num_symbols = max(u for _, u in lengths)
    am = torch.randn(len(lengths), frames, vocab, generator=gen, dtype=torch.float64)
    lm = torch.randn(len(lengths), num_symbols + 1, vocab, generator=gen, dtype=torch.float64)
    symbols = torch.randint(1, vocab, (len(lengths), num_symbols), generator=gen)
    boundary = torch.tensor([[0, 0, u, t] for t, u in lengths], dtype=torch.int64)
    return am, lm, symbols, boundary


# ----------------------------------------------------------------------------- full loss


def test_full_loss_and_gradient_match_naive_dp():
    logits, symbols, boundary = make_batch(0, LENGTHS)
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    ours = L.rnnt_loss(ours_in, symbols, BLANK, boundary, reduction="none", backend="builtin")
    ref = naive_full_loss(ref_in, symbols, LENGTHS)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-5, rtol=0)


def test_full_loss_float32_matches_naive_dp():
    logits, symbols, boundary = make_batch(1, [[9, 4], [9, 6], [3, 1]], dtype=torch.float32)
    ours = L.rnnt_loss(logits, symbols, BLANK, boundary, reduction="none", backend="builtin")
    assert ours.dtype == torch.float32
    ref = naive_full_loss(logits, symbols, [[9, 4], [9, 6], [3, 1]])
    torch.testing.assert_close(ours.double(), ref, atol=1e-4, rtol=1e-6)


def test_full_loss_without_boundary_uses_whole_grid():
    logits, symbols, _ = make_batch(2, [[6, 3], [6, 3]])
    ours = L.rnnt_loss(logits, symbols, BLANK, reduction="none", backend="builtin")
    torch.testing.assert_close(ours, naive_full_loss(logits, symbols, [[6, 3], [6, 3]]), atol=1e-8, rtol=0)


def test_full_loss_gradcheck():
    logits, symbols, boundary = make_batch(3, [[3, 2], [2, 1]], vocab=4)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: L.rnnt_loss(x, symbols, BLANK, boundary, reduction="none", backend="builtin"), (logits,)
    )


def test_recursion_gradcheck_with_nonzero_begin():
    gen = torch.Generator().manual_seed(4)
    px = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    py = torch.randn(2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    boundary = torch.tensor([[1, 1, 3, 4], [0, 2, 2, 3]])
    assert torch.autograd.gradcheck(lambda a, b: L.mutual_information_recursion(a, b, boundary), (px, py))


def test_recursion_with_begin_offset_equals_cropped_lattice():
    gen = torch.Generator().manual_seed(5)
    px = torch.randn(1, 4, 7, generator=gen, dtype=torch.float64)
    py = torch.randn(1, 5, 6, generator=gen, dtype=torch.float64)
    offset = L.mutual_information_recursion(px, py, torch.tensor([[1, 2, 4, 6]]))
    cropped = L.mutual_information_recursion(px[:, 1:, 2:], py[:, 1:, 2:], torch.tensor([[0, 0, 3, 4]]))
    torch.testing.assert_close(offset, cropped, atol=1e-12, rtol=0)


def test_impossible_lattice_gives_inf_loss_and_zero_gradient():
    px = torch.full((1, 2, 4), float("-inf"), dtype=torch.float64, requires_grad=True)
    py = torch.zeros(1, 3, 3, dtype=torch.float64, requires_grad=True)
    total = L.mutual_information_recursion(px, py)
    assert torch.isinf(total).all()
    total.sum().backward()
    assert torch.equal(py.grad, torch.zeros_like(py)) and not torch.isnan(px.grad).any()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions(reduction):
    logits, symbols, boundary = make_batch(6, LENGTHS)
    per_utt = naive_full_loss(logits, symbols, LENGTHS)
    expected = {"none": per_utt, "sum": per_utt.sum(), "mean": per_utt.mean()}[reduction]
    ours = L.rnnt_loss(logits, symbols, BLANK, boundary, reduction=reduction, backend="builtin")
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-8, rtol=0)


def test_half_precision_and_autocast_compute_in_float32():
    logits, symbols, boundary = make_batch(7, LENGTHS, dtype=torch.float32)
    rounded = logits.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = L.rnnt_loss(rounded, symbols, BLANK, boundary, reduction="none", backend="builtin")
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    ref = naive_full_loss(rounded.float(), symbols, LENGTHS)
    torch.testing.assert_close(loss.double(), ref, atol=1e-4, rtol=1e-6)


# ----------------------------------------------------------------------------- simple / smoothed


def test_simple_loss_equals_full_loss_on_summed_logits():
    am, lm, symbols, boundary = simple_batch(8)
    am.requires_grad_(True)
    lm.requires_grad_(True)
    simple = L.rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none", backend="builtin")
    am2, lm2 = am.detach().clone().requires_grad_(True), lm.detach().clone().requires_grad_(True)
    full = L.rnnt_loss(am2[:, :, None, :] + lm2[:, None, :, :], symbols, BLANK, boundary, reduction="none",
                       backend="builtin")
    torch.testing.assert_close(simple, full, atol=1e-10, rtol=0)
    simple.sum().backward()
    full.sum().backward()
    torch.testing.assert_close(am.grad, am2.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(lm.grad, lm2.grad, atol=1e-10, rtol=0)


def test_simple_loss_return_grad_gives_occupation_probabilities():
    am, lm, symbols, boundary = simple_batch(9)
    loss, (px_grad, py_grad) = L.rnnt_loss_simple(lm, am, symbols, BLANK, boundary, return_grad=True,
                                                  backend="builtin")
    assert px_grad.shape == (4, 5, 9) and py_grad.shape == (4, 6, 8)
    # Every path takes exactly T_b blanks and U_b symbols: occupations sum to those counts.
    torch.testing.assert_close(py_grad.sum(dim=(1, 2)), boundary[:, 3].double(), atol=1e-9, rtol=0)
    torch.testing.assert_close(px_grad.sum(dim=(1, 2)), boundary[:, 2].double(), atol=1e-9, rtol=0)
    # ...and each frame t < T_b is left by exactly one blank.
    for b, (frames, _) in enumerate(LENGTHS):
        torch.testing.assert_close(py_grad[b, :, :frames].sum(0), torch.ones(frames, dtype=torch.float64))
    assert loss.shape == ()


def test_simple_loss_is_stable_for_large_logits():
    am, lm, symbols, boundary = simple_batch(10)
    # exp(am - max) * exp(lm - max) underflows for terms far below both maxima; with logits this peaked
    # those terms are negligible, so the loss stays finite and within float32-level relative error.
    loss = L.rnnt_loss_simple(lm * 300, am * 300, symbols, BLANK, boundary, reduction="none", backend="builtin")
    full = L.rnnt_loss((am[:, :, None] + lm[:, None]) * 300, symbols, BLANK, boundary, reduction="none",
                       backend="builtin")
    assert torch.isfinite(loss).all() and (loss > 100).all()
    torch.testing.assert_close(loss, full, atol=0, rtol=1e-6)


def _smoothed_reference(lm, am, symbols, lengths, lm_scale, am_scale):
    """Mix of joint, LM-only and AM-only (unigram-LM) log-probs, built directly with log_softmax."""
    lm_prob = lm.softmax(-1)
    unigram = lm_prob.mean(dim=(0, 1))
    joint = (am[:, :, None] + lm[:, None]).log_softmax(-1)  # (B, T, U+1, V)
    lm_only = lm.log_softmax(-1)[:, None].expand_as(joint)
    am_only = (am[:, :, None] + unigram.log()).log_softmax(-1).expand_as(joint)
    mixed = (1 - lm_scale - am_scale) * joint + lm_scale * lm_only + am_scale * am_only
    losses = []
    for b, (frames, num_symbols) in enumerate(lengths):
        y = symbols[b].tolist()
        losses.append(-naive_lattice_logprob(
            lambda t, u: mixed[b, t, u, BLANK], lambda t, u: mixed[b, t, u, y[u]], frames, num_symbols))
    return torch.stack(losses)


def test_smoothed_loss_matches_direct_mixture():
    am, lm, symbols, boundary = simple_batch(11)
    ours = L.rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.25, 0.15, boundary, reduction="none", backend="builtin")
    torch.testing.assert_close(ours, _smoothed_reference(lm, am, symbols, LENGTHS, 0.25, 0.15), atol=1e-8, rtol=0)
    zero = L.rnnt_loss_smoothed(lm, am, symbols, BLANK, 0.0, 0.0, boundary, reduction="none", backend="builtin")
    simple = L.rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none", backend="builtin")
    torch.testing.assert_close(zero, simple, atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------- pruning


def _ranges_for(seed: int, s_range: int, lengths=LENGTHS):
    am, lm, symbols, boundary = simple_batch(seed, lengths)
    _, (px_grad, py_grad) = L.rnnt_loss_simple(lm, am, symbols, BLANK, boundary, return_grad=True,
                                               backend="builtin")
    return L.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range), am, lm, symbols, boundary


@pytest.mark.parametrize("s_range", [2, 3, 4])
def test_prune_ranges_are_monotone_connected_and_reach_the_end(s_range):
    ranges, *_, boundary = _ranges_for(12, s_range)
    assert ranges.dtype == torch.int64 and ranges.shape == (4, 8, s_range)
    assert torch.equal(ranges - ranges[..., :1], torch.arange(s_range).expand_as(ranges))  # consecutive
    starts = ranges[..., 0]
    steps = starts[:, 1:] - starts[:, :-1]
    assert (steps >= 0).all() and (steps <= s_range - 1).all()
    assert (starts[:, 0] == 0).all()
    for b, (_, _, num_symbols, frames) in enumerate(boundary.tolist()):
        top = max(num_symbols, s_range - 1)
        assert 0 <= int(ranges[b].min()) and int(ranges[b].max()) <= top
        assert num_symbols in ranges[b, frames - 1].tolist()  # the final blank is inside the band


def test_prune_ranges_follow_a_confident_alignment():
    # Occupations of one certain path: symbols emitted at frames 1, 1, 4, 6 (U=4, T=8).
    frames, num_symbols = 8, 4
    emit_frames = [1, 1, 4, 6]
    px_grad = torch.zeros(1, num_symbols, frames + 1)
    py_grad = torch.zeros(1, num_symbols + 1, frames)
    u = 0
    for t in range(frames):
        while u < num_symbols and emit_frames[u] == t:
            px_grad[0, u, t] = 1.0
            u += 1
        py_grad[0, u, t] = 1.0
    ranges = L.get_rnnt_prune_ranges(px_grad, py_grad, torch.tensor([[0, 0, num_symbols, frames]]), 3)
    for t in range(frames):
        # cells the path visits on frame t: where it emits symbols and where it leaves by blank
        on_path = set(torch.nonzero(px_grad[0, :, t]).flatten().tolist())
        on_path |= set(torch.nonzero(py_grad[0, :, t]).flatten().tolist())
        assert on_path <= set(ranges[0, t].tolist()), (t, on_path, ranges[0, t].tolist())
    # ties go to the lowest window; frames 4-5 skip the window starting at 3 (entered from 2 on frame 4)
    assert ranges[0, :, 0].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]


def test_prune_ranges_cover_everything_when_s_range_exceeds_symbols():
    ranges, *_ = _ranges_for(13, 50)
    assert ranges.shape == (4, 8, 6)
    assert torch.equal(ranges, torch.arange(6).expand(4, 8, 6))


def test_do_rnnt_pruning_gathers_the_band():
    am = torch.randn(2, 3, 4)
    lm = torch.randn(2, 5, 6)
    ranges = torch.tensor([[[0, 1], [1, 2], [3, 4]], [[0, 1], [0, 1], [2, 3]]])
    am_p, lm_p = L.do_rnnt_pruning(am, lm, ranges)
    assert am_p.shape == (2, 3, 2, 4) and lm_p.shape == (2, 3, 2, 6)
    for b in range(2):
        for t in range(3):
            for k in range(2):
                assert torch.equal(lm_p[b, t, k], lm[b, ranges[b, t, k]])
                assert torch.equal(am_p[b, t, k], am[b, t])


def test_pruned_loss_with_full_band_equals_full_loss():
    logits, symbols, boundary = make_batch(14, LENGTHS)
    width = logits.shape[2]
    ranges = torch.arange(width).expand(logits.shape[0], logits.shape[1], width).contiguous()
    pruned = L.rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary, reduction="none", backend="builtin")
    full = L.rnnt_loss(logits, symbols, BLANK, boundary, reduction="none", backend="builtin")
    torch.testing.assert_close(pruned, full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("s_range", [2, 3])
def test_pruned_loss_and_gradient_match_naive_banded_dp(s_range):
    ranges, am, lm, symbols, boundary = _ranges_for(15, s_range)
    gen = torch.Generator().manual_seed(16)
    logits = torch.randn(*ranges.shape, 7, generator=gen, dtype=torch.float64)
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    ours = L.rnnt_loss_pruned(ours_in, symbols, ranges, BLANK, boundary, reduction="none", backend="builtin")
    ref = naive_pruned_loss(ref_in, symbols, ranges, LENGTHS)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-5, rtol=0)


def test_pruned_loss_of_summed_pruned_inputs_upper_bounds_simple_loss():
    # Pruning removes paths, so the pruned loss of the same trivial joiner can only be larger.
    ranges, am, lm, symbols, boundary = _ranges_for(17, 3)
    am_p, lm_p = L.do_rnnt_pruning(am, lm, ranges)
    pruned = L.rnnt_loss_pruned(am_p + lm_p, symbols, ranges, BLANK, boundary, reduction="none", backend="builtin")
    simple = L.rnnt_loss_simple(lm, am, symbols, BLANK, boundary, reduction="none", backend="builtin")
    assert (pruned >= simple - 1e-9).all() and (pruned - simple).max() > 1e-6


# ----------------------------------------------------------------------------- errors, backends, config


def test_bad_inputs_raise_one_line_errors():
    logits, symbols, boundary = make_batch(18, [[4, 2], [4, 2]])
    with pytest.raises(L.RNNTInputError, match="symbols must be int64"):
        L.rnnt_loss(logits, symbols.int(), backend="builtin")
    with pytest.raises(L.RNNTInputError, match=r"symbols must be in \[0, 7\)"):
        L.rnnt_loss(logits, symbols - 5, backend="builtin")
    with pytest.raises(L.RNNTInputError, match="boundary must be int64"):
        L.rnnt_loss(logits, symbols, boundary=boundary[:, :3], backend="builtin")
    with pytest.raises(L.LatticeShapeError, match=r"boundary\[1\]"):
        L.rnnt_loss(logits, symbols, boundary=torch.tensor([[0, 0, 2, 4], [0, 0, 3, 4]]), backend="builtin")
    with pytest.raises(L.RNNTInputError, match="reduction"):
        L.rnnt_loss(logits, symbols, reduction="avg", backend="builtin")
    bad_ranges = torch.full((2, 4, 2), 7)
    with pytest.raises(L.RNNTInputError, match=r"ranges must lie in \[0, 2\]"):
        L.rnnt_loss_pruned(logits[:, :, :2], symbols, bad_ranges, backend="builtin")


def test_unavailable_backend_names_what_to_install(monkeypatch):
    monkeypatch.setattr(backends, "backend_module", lambda name: None)
    logits, symbols, _ = make_batch(19, [[4, 2]])
    with pytest.raises(L.LossBackendError, match="'k2' is not installed: install a k2 wheel"):
        L.rnnt_loss(logits, symbols, backend="k2")
    with pytest.raises(L.LossBackendError, match="'fast_rnnt' is not installed: build it with tools/build_fast_rnnt.sh"):
        L.rnnt_loss(logits, symbols, backend="fast_rnnt")
    with pytest.raises(L.LossBackendError, match="unknown RNN-T loss backend 'warp'"):
        L.rnnt_loss(logits, symbols, backend="warp")
    with pytest.raises(L.LossBackendError, match="does not implement the pruned loss"):
        L.rnnt_loss_pruned(logits[:, :, :2], symbols, torch.arange(2).expand(1, 4, 2).contiguous(),
                           backend="torchaudio")
    assert backends.resolve_backend("auto", ("builtin", "k2"), "x", torch.device("cpu")) == "builtin"


def test_available_backends_lists_builtin_first():
    names = L.available_backends()
    assert names[0] == "builtin" and set(names) <= set(L.KNOWN_BACKENDS)


def test_importing_the_loss_package_stays_light():
    code = ("import sys, synthasr.loss; "
            "heavy = [m for m in ('lhotse', 'torchaudio', 'k2', 'fast_rnnt') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loss_config_validation_and_yaml_keys():
    cfg = from_dict(L.LossConfig, {"prune_range": 4, "kind": "full"}, where="conf/x.yaml")
    assert cfg.prune_range == 4 and cfg.kind == "full" and cfg.backend == "auto"
    with pytest.raises(ConfigError, match="prune_range: must be >= 2"):
        from_dict(L.LossConfig, {"prune_range": 1}, where="conf/x.yaml")
    with pytest.raises(ConfigError, match="backend: expected one of"):
        from_dict(L.LossConfig, {"backend": "warp"}, where="conf/x.yaml")
    with pytest.raises(ConfigError, match="am_scale \\+ lm_scale must be < 1"):
        from_dict(L.LossConfig, {"am_scale": 0.5, "lm_scale": 0.5}, where="conf/x.yaml")
    with pytest.raises(ConfigError, match="unknown key prune"):
        from_dict(L.LossConfig, {"prune": 3}, where="conf/x.yaml")


def test_loss_scales_follow_icefall_warmup():
    cfg = L.LossConfig(simple_loss_scale=0.5, warmup_steps=2000)
    assert L.loss_scales(cfg, 0) == pytest.approx((1.0, 0.1))
    assert L.loss_scales(cfg, 1000) == pytest.approx((0.75, 0.55))
    assert L.loss_scales(cfg, 2000) == pytest.approx((0.5, 1.0))
    assert L.loss_scales(cfg, 10**6) == pytest.approx((0.5, 1.0))
    assert L.loss_scales(L.LossConfig(warmup_steps=0), 0) == pytest.approx((0.5, 1.0))
    assert L.loss_scales(L.LossConfig(kind="full"), 10) == (0.0, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    logits, symbols, boundary = make_batch(20, LENGTHS, dtype=torch.float32)
    cpu = L.rnnt_loss(logits, symbols, BLANK, boundary, reduction="none", backend="builtin")
    gpu = L.rnnt_loss(logits.cuda(), symbols.cuda(), BLANK, boundary.cuda(), reduction="none", backend="builtin")
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------- wiring: config -> backend


def _transducer_batch():
    from synthasr.model import build_model

    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 12})
    feats = torch.randn(2, 48, 80)
    return model, feats, torch.tensor([48, 40]), [[3, 4, 5], [6, 7]]


@pytest.mark.parametrize("loss_kwargs, calls", [
    ({"kind": "pruned"}, ["the simple loss", "the pruned loss"]),
    ({"kind": "pruned", "am_scale": 0.1, "lm_scale": 0.1}, ["the smoothed loss", "the pruned loss"]),
    ({"kind": "full"}, ["the full loss"]),
])
def test_transducer_hands_the_configured_backend_to_every_loss(monkeypatch, loss_kwargs, calls):
    from synthasr.loss import losses

    seen = []
    real = losses.resolve_backend

    def spy(requested, supported, what, *args, **kwargs):
        seen.append((what, requested))
        return real(requested, supported, what, *args, **kwargs)

    monkeypatch.setattr(losses, "resolve_backend", spy)
    model, feats, lens, y = _transducer_batch()
    model(feats, lens, y, L.LossConfig(backend="builtin", **loss_kwargs))
    assert seen == [(what, "builtin") for what in calls]


def test_pruned_loss_with_a_missing_explicit_backend_fails_loudly(monkeypatch):
    monkeypatch.setattr(backends, "backend_module", lambda name: None)
    model, feats, lens, y = _transducer_batch()
    with pytest.raises(L.LossBackendError, match="'k2' is not installed: install a k2 wheel"):
        model(feats, lens, y, L.LossConfig(kind="pruned", backend="k2"))


@pytest.fixture
def fake_import(monkeypatch):
    """Make ``importlib.import_module(name)`` raise ``error`` for one module; the cache is reset around it."""
    real = backends.importlib.import_module

    def install(module: str, error: BaseException) -> None:
        def fake(name, *args, **kwargs):
            if name == module:
                raise error
            return real(name, *args, **kwargs)

        monkeypatch.setattr(backends.importlib, "import_module", fake)
        backends.backend_module.cache_clear()

    yield install
    backends.backend_module.cache_clear()
    backends._UNUSABLE.clear()


def test_broken_compiled_backend_is_logged_with_its_import_error(fake_import, caplog):
    fake_import("k2", OSError("libk2_torch_api.so: undefined symbol: _ZN3c104impl"))
    with caplog.at_level("WARNING", logger="synthasr.loss.backends"):
        assert backends.backend_module("k2") is None
        assert "k2" not in L.available_backends()
    assert "k2" in caplog.text and "undefined symbol" in caplog.text
    with pytest.raises(L.LossBackendError, match=r"'k2' is installed but unusable \(import failed: OSError: .*undefined symbol"):
        backends.require_backend("k2")


def test_backend_that_is_simply_not_installed_stays_silent(fake_import, caplog):
    error = ModuleNotFoundError("No module named 'k2'", name="k2")
    fake_import("k2", error)
    with caplog.at_level("WARNING", logger="synthasr.loss.backends"):
        assert backends.backend_module("k2") is None
    assert caplog.text == ""
    with pytest.raises(L.LossBackendError, match="'k2' is not installed"):
        backends.require_backend("k2")


def test_require_backend_accepts_auto_and_builtin_without_importing():
    backends.require_backend("auto")
    backends.require_backend("builtin")
    with pytest.raises(L.LossBackendError, match="unknown RNN-T loss backend 'warp'"):
        backends.require_backend("warp")


def test_torchaudio_backend_with_the_pruned_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="'torchaudio' implements only the full loss; set kind: full"):
        from_dict(L.LossConfig, {"backend": "torchaudio"}, where="t.yaml", key="loss")
    assert from_dict(L.LossConfig, {"backend": "torchaudio", "kind": "full"}).kind == "full"
