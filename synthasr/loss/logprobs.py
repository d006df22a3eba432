"""Turn joiner outputs into the lattice arrays ``px`` (B,S,T+1) and ``py`` (B,S+1,T).

Three producers, one per loss:

* full: joiner logits for every (t, u) cell, ``(B, T, S+1, V)``;
* pruned: joiner logits for a band of ``s_range`` symbols per frame, ``(B, T, s_range, V)``;
* simple: a "trivial joiner" ``am[t] + lm[u]`` that is never materialised over (T, U, V).

The big logits tensors go through :class:`_TokenAndBlankLogProbs`, which normalises with a chunked
logsumexp and writes the softmax gradient straight into one output buffer in backward: it never stores a
full log-softmax, so peak memory is about logits + their gradient.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .recursion import NEG_INF

# Elements per chunk for the big (B, T, K, V) passes: bounds the temporaries to ~64 MiB of float32.
_CHUNK_ELEMENTS = 1 << 24


class RNNTInputError(ValueError):
    """Loss inputs have inconsistent shapes, dtypes or out-of-range symbol ids."""


def _frame_chunks(logits: Tensor):
    batch, frames, width, vocab = logits.shape
    step = max(1, _CHUNK_ELEMENTS // max(1, batch * width * vocab))
    for start in range(0, frames, step):
        yield slice(start, min(frames, start + step))


class _TokenAndBlankLogProbs(torch.autograd.Function):
    """``log_softmax(logits)`` gathered at ``symbol_ids`` and at ``blank``, without storing the softmax."""

    @staticmethod
    def forward(ctx, logits: Tensor, symbol_ids: Tensor, blank: int):  # type: ignore[override]
        symbol_lp = torch.empty(logits.shape[:3], dtype=logits.dtype, device=logits.device)
        blank_lp = torch.empty_like(symbol_lp)
        for chunk in _frame_chunks(logits):
            # one fused pass per chunk; the chunk's log-softmax is dropped right after the gathers
            log_probs = torch.log_softmax(logits[:, chunk], dim=3)
            symbol_lp[:, chunk] = log_probs.gather(3, symbol_ids[:, chunk].unsqueeze(3)).squeeze(3)
            blank_lp[:, chunk] = log_probs[..., blank]
        norm = logits[..., blank] - blank_lp  # the log-normaliser, all backward needs besides logits
        ctx.save_for_backward(logits, symbol_ids, norm)
        ctx.blank = blank
        return symbol_lp, blank_lp

    @staticmethod
    def backward(ctx, grad_symbol: Optional[Tensor], grad_blank: Optional[Tensor]):  # type: ignore[override]
        logits, symbol_ids, norm = ctx.saved_tensors
        if grad_symbol is None:
            grad_symbol = torch.zeros_like(norm)
        if grad_blank is None:
            grad_blank = torch.zeros_like(norm)
        grad = torch.empty_like(logits)
        for chunk in _frame_chunks(logits):
            g_sym, g_blank = grad_symbol[:, chunk], grad_blank[:, chunk]
            part = grad[:, chunk]
            # d log_softmax[v] / d logits[w] = [v == w] - softmax[w]
            torch.sub(logits[:, chunk], norm[:, chunk].unsqueeze(3), out=part)
            part.exp_().mul_(-(g_sym + g_blank).unsqueeze(3))
            part.scatter_add_(3, symbol_ids[:, chunk].unsqueeze(3), g_sym.unsqueeze(3))
            part[..., ctx.blank] += g_blank
        return grad, None, None


def token_and_blank_logprobs(logits: Tensor, symbol_ids: Tensor, blank: int) -> Tuple[Tensor, Tensor]:
    """Log-probs of ``symbol_ids`` (B,T,K) and of ``blank`` under ``log_softmax(logits, -1)``."""
    return _TokenAndBlankLogProbs.apply(logits, symbol_ids, blank)


def with_terminal(symbols: Tensor, termination_symbol: int) -> Tensor:
    """``symbols`` (B,S) with the termination symbol appended: (B, S+1)."""
    tail = torch.full((symbols.shape[0], 1), termination_symbol, dtype=symbols.dtype, device=symbols.device)
    return torch.cat((symbols, tail), dim=1)


def fix_for_boundary(px: Tensor, boundary: Optional[Tensor]) -> Tensor:
    """Forbid emitting symbols on the one-past-the-end frame ``end_frame`` of each utterance.

    With padding, column ``end_frame`` of ``px`` holds real numbers from padded frames; without this,
    paths could emit symbols after their final blank.
    """
    if boundary is None:
        return px
    frames = torch.arange(px.shape[2], device=px.device).view(1, 1, -1)
    return px.masked_fill(frames == boundary[:, 3].view(-1, 1, 1), NEG_INF)


def _append_neg_inf_frame(px: Tensor) -> Tensor:
    """(B,S,T) -> (B,S,T+1): no symbol can be emitted after the last frame's blank."""
    pad = torch.full((px.shape[0], px.shape[1], 1), NEG_INF, dtype=px.dtype, device=px.device)
    return torch.cat((px, pad), dim=2)


def full_logprobs(logits: Tensor, symbols: Tensor, termination_symbol: int, boundary: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """px, py from full joiner logits (B, T, S+1, V)."""
    batch, frames, width, _ = logits.shape
    targets = with_terminal(symbols, termination_symbol).unsqueeze(1).expand(batch, frames, width)
    symbol_lp, blank_lp = token_and_blank_logprobs(logits, targets, termination_symbol)
    px = _append_neg_inf_frame(symbol_lp[:, :, : width - 1].transpose(1, 2))
    py = blank_lp.transpose(1, 2)
    return fix_for_boundary(px, boundary), py


def pruned_logprobs(
    logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int, boundary: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """px, py from pruned logits (B, T, s_range, V); cells outside ``ranges`` get -inf."""
    batch, frames, _, _ = logits.shape
    num_symbols = symbols.shape[1]
    targets_all = with_terminal(symbols, termination_symbol).unsqueeze(1).expand(batch, frames, num_symbols + 1)
    band_targets = targets_all.gather(2, ranges)
    symbol_lp, blank_lp = token_and_blank_logprobs(logits, band_targets, termination_symbol)
    grid = torch.full((batch, frames, num_symbols + 1), NEG_INF, dtype=symbol_lp.dtype, device=symbol_lp.device)
    px = _append_neg_inf_frame(grid.scatter(2, ranges, symbol_lp)[:, :, :num_symbols].transpose(1, 2))
    py = grid.scatter(2, ranges, blank_lp).transpose(1, 2)
    return fix_for_boundary(px, boundary), py


class _JointNormalizer(torch.autograd.Function):
    """``log sum_v exp(am[t, v] + lm[s, v])`` for all (s, t) as one matmul of shifted exponentials.

    The row maxima are subtracted before exp() so nothing overflows.  Backward is written out (two
    batched matmuls with contiguous operands) instead of autograd's chain through max/exp/matmul/log,
    which on CPU costs several times more.
    """

    @staticmethod
    def forward(ctx, lm: Tensor, am: Tensor):  # type: ignore[override]
        am_max = am.amax(dim=2, keepdim=True)
        lm_max = lm.amax(dim=2, keepdim=True)
        am_probs = (am - am_max).exp()
        lm_probs = (lm - lm_max).exp()
        shifted_sums = torch.bmm(lm_probs, am_probs.transpose(1, 2)).add_(torch.finfo(am.dtype).tiny)
        ctx.save_for_backward(lm_probs, am_probs, shifted_sums)
        return shifted_sums.log() + lm_max + am_max.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        lm_probs, am_probs, shifted_sums = ctx.saved_tensors
        weights = grad / shifted_sums  # (B, S+1, T); the maxima cancel out of the gradient
        grad_lm = torch.bmm(weights, am_probs).mul_(lm_probs)
        grad_am = torch.bmm(weights.transpose(1, 2).contiguous(), lm_probs).mul_(am_probs)
        return grad_lm, grad_am


def _joint_normalizers(lm: Tensor, am: Tensor) -> Tensor:
    """(B, S+1, T) log-normalisers of the trivial joiner ``am[t] + lm[s]``."""
    return _JointNormalizer.apply(lm, am)


def _symbol_scores(lm: Tensor, am: Tensor, symbols: Tensor) -> Tuple[Tensor, Tensor]:
    """``am[b, t, symbols[b, s]]`` as (B,S,T) and ``lm[b, s, symbols[b, s]]`` as (B,S,1)."""
    batch, num_symbols = symbols.shape
    frames = am.shape[1]
    am_part = am.transpose(1, 2).gather(1, symbols.unsqueeze(2).expand(batch, num_symbols, frames))
    lm_part = lm[:, :num_symbols].gather(2, symbols.unsqueeze(2))
    return am_part, lm_part


def simple_logprobs(
    lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int, boundary: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """px, py for logits ``am[:, t] + lm[:, s]`` (trivial joiner), normalised over the vocabulary."""
    num_symbols = symbols.shape[1]
    normalizers = _joint_normalizers(lm, am)
    am_part, lm_part = _symbol_scores(lm, am, symbols)
    px = _append_neg_inf_frame(am_part + lm_part - normalizers[:, :num_symbols])
    py = am[:, :, termination_symbol].unsqueeze(1) + lm[:, :, termination_symbol].unsqueeze(2) - normalizers
    return fix_for_boundary(px, boundary), py


def smoothed_logprobs(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float,
    am_only_scale: float,
    boundary: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """Log-linear mix of the joint, LM-only and AM-only (unigram-LM) lattices, as in k2's smoothed loss.

    ``(1 - a - l) * joint + l * lm_only + a * am_only`` where am_only uses the batch-average LM
    distribution (a unigram) in place of the per-history LM.
    """
    num_symbols = symbols.shape[1]
    batch, frames, vocab = am.shape
    normalizers = _joint_normalizers(lm, am)
    am_max = am.max(dim=2, keepdim=True).values
    lm_max = lm.max(dim=2, keepdim=True).values
    am_probs = (am - am_max).exp()
    lm_probs = (lm - lm_max).exp()
    lm_sums = lm_probs.sum(dim=2, keepdim=True)  # (B, S+1, 1)
    unigram = (lm_probs / lm_sums).mean(dim=(0, 1)) + torch.finfo(am.dtype).tiny  # (V,)
    am_only_norm = ((am_probs.reshape(-1, vocab) @ unigram).view(batch, frames, 1).log() + am_max).transpose(1, 2)
    lm_only_norm = lm_sums.log() + lm_max  # (B, S+1, 1)
    log_unigram = unigram.log()

    am_part, lm_part = _symbol_scores(lm, am, symbols)
    joint_px = am_part + lm_part - normalizers[:, :num_symbols]
    am_only_px = am_part + log_unigram[symbols].unsqueeze(2) - am_only_norm
    lm_only_px = (lm_part - lm_only_norm[:, :num_symbols]).expand(-1, -1, frames)

    am_blank = am[:, :, termination_symbol].unsqueeze(1)
    lm_blank = lm[:, :, termination_symbol].unsqueeze(2)
    joint_py = am_blank + lm_blank - normalizers
    am_only_py = am_blank + log_unigram[termination_symbol] - am_only_norm
    lm_only_py = lm_blank - lm_only_norm

    joint_scale = 1.0 - lm_only_scale - am_only_scale
    px = joint_scale * joint_px + lm_only_scale * lm_only_px + am_only_scale * am_only_px
    py = joint_scale * joint_py + lm_only_scale * lm_only_py + am_only_scale * am_only_py
    return fix_for_boundary(_append_neg_inf_frame(px), boundary), py
