"""Public RNN-T losses with k2's names and conventions (boundary ``[B, 4]`` =
``[begin_symbol, begin_frame, U_b, T_b]``, termination symbol = blank).

Each loss validates its inputs, picks a backend, and for the builtin backend builds ``px``/``py`` (see
:mod:`.logprobs`) and runs the lattice recursion (see :mod:`.recursion`).  All arithmetic is float32 (or
float64 when given float64) with autocast disabled, so half-precision training cannot overflow the loss.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple, Union

import torch
from torch import Tensor

from . import logprobs as lp
from .backends import LossBackendError, backend_module, resolve_backend
from .logprobs import RNNTInputError
from .recursion import mutual_information_recursion

REDUCTIONS = ("none", "mean", "sum")
LossAndGrad = Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]


@contextlib.contextmanager
def _float32_region(device: torch.device) -> Iterator[None]:
    """Disable autocast so the recursion is never run in half precision."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _as_float(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise RNNTInputError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _reduce(neg_loss: Tensor, reduction: str) -> Tensor:
    loss = -neg_loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def _check_symbols(symbols: Tensor, batch: int, num_symbols: int, vocab: int, termination_symbol: int) -> None:
    if symbols.dtype != torch.int64 or tuple(symbols.shape) != (batch, num_symbols):
        raise RNNTInputError(
            f"symbols must be int64 of shape ({batch}, {num_symbols}), got {symbols.dtype} {tuple(symbols.shape)}"
        )
    if not 0 <= termination_symbol < vocab:
        raise RNNTInputError(f"termination_symbol {termination_symbol} is outside the vocabulary [0, {vocab})")
    if symbols.numel() and (int(symbols.min()) < 0 or int(symbols.max()) >= vocab):
        raise RNNTInputError(
            f"symbols must be in [0, {vocab}) (pad with the blank id, not -1); got range "
            f"[{int(symbols.min())}, {int(symbols.max())}]"
        )


def _check_boundary_shape(boundary: Optional[Tensor], batch: int) -> None:
    if boundary is not None and (boundary.dtype != torch.int64 or tuple(boundary.shape) != (batch, 4)):
        raise RNNTInputError(
            f"boundary must be int64 of shape ({batch}, 4) [begin_symbol, begin_frame, U_b, T_b], "
            f"got {boundary.dtype} {tuple(boundary.shape)}"
        )


def _compiled_ok(boundary: Optional[Tensor], num_symbols: int, frames: int) -> bool:
    """k2/fast_rnnt assert S >= 1 and T >= S; torchaudio cannot start mid-lattice."""
    if num_symbols < 1 or frames < num_symbols:
        return False
    return boundary is None or bool((boundary[:, :2] == 0).all())


# ----------------------------------------------------------------------------------------- full loss


def rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int = 0,
    boundary: Optional[Tensor] = None,
    reduction: str = "sum",
    backend: str = "auto",
) -> Tensor:
    """Full RNN-T loss (negative log-likelihood) from joiner logits ``(B, T, U+1, V)``.

    Args:
      logits: unnormalised joiner output for every (frame, symbol-position) cell.
      symbols: (B, U) int64 targets, padded (with any valid id) beyond each ``U_b``.
      termination_symbol: the blank id.
      boundary: (B, 4) int64 ``[begin_symbol, begin_frame, U_b, T_b]``; default ``[0, 0, U, T]``.
      reduction: "sum" | "mean" (over the batch) | "none" (shape (B,)).
      backend: "auto" | "builtin" | "k2" | "fast_rnnt" | "torchaudio".
    """
    if logits.ndim != 4:
        raise RNNTInputError(f"logits must be (B, T, U+1, V), got shape {tuple(logits.shape)}")
    batch, frames, width, vocab = logits.shape
    _check_symbols(symbols, batch, width - 1, vocab, termination_symbol)
    _check_boundary_shape(boundary, batch)
    _check_reduction(reduction)
    name = resolve_backend(
        backend, ("builtin", "k2", "fast_rnnt", "torchaudio"), "the full loss", logits.device,
        _compiled_ok(boundary, width - 1, frames),
        # fast_rnnt's full loss measured slower and ~4x more memory than builtin (bench/rnnt_loss.py)
        auto_candidates=("k2", "torchaudio"),
    )
    with _float32_region(logits.device):
        logits = _as_float(logits)
        if name == "torchaudio":
            return _torchaudio_loss(logits, symbols, termination_symbol, boundary, reduction)
        if name != "builtin":
            return backend_module(name).rnnt_loss(
                logits=logits, symbols=symbols, termination_symbol=termination_symbol,
                boundary=boundary, reduction=reduction,
            )
        px, py = lp.full_logprobs(logits, symbols, termination_symbol, boundary)
        return _reduce(mutual_information_recursion(px, py, boundary), reduction)


def _torchaudio_loss(
    logits: Tensor, symbols: Tensor, blank: int, boundary: Optional[Tensor], reduction: str
) -> Tensor:
    """torchaudio wants lengths, not a boundary, and padding no larger than the longest utterance."""
    batch, frames, width, _ = logits.shape
    if boundary is None:
        boundary = torch.tensor([[0, 0, width - 1, frames]] * batch, dtype=torch.int64, device=logits.device)
    frame_lengths = boundary[:, 3].to(torch.int32)
    target_lengths = boundary[:, 2].to(torch.int32)
    max_t, max_u = int(frame_lengths.max()), int(target_lengths.max())
    return backend_module("torchaudio").rnnt_loss(
        logits[:, :max_t, : max_u + 1].contiguous(),
        symbols[:, :max_u].to(torch.int32).contiguous(),
        frame_lengths,
        target_lengths,
        blank=blank,
        reduction=reduction,
    )


# --------------------------------------------------------------------------------------- simple loss


def _check_am_lm(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int) -> None:
    if lm.ndim != 3 or am.ndim != 3 or lm.shape[0] != am.shape[0] or lm.shape[2] != am.shape[2]:
        raise RNNTInputError(f"expected lm (B, U+1, V) and am (B, T, V), got {tuple(lm.shape)} and {tuple(am.shape)}")
    _check_symbols(symbols, lm.shape[0], lm.shape[1] - 1, lm.shape[2], termination_symbol)


def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int = 0,
    boundary: Optional[Tensor] = None,
    reduction: str = "sum",
    return_grad: bool = False,
    backend: str = "auto",
) -> LossAndGrad:
    """RNN-T loss for the trivial joiner ``logits[b, t, u] = am[b, t] + lm[b, u]``, without building
    (B, T, U+1, V).

    With ``return_grad=True`` returns ``(loss, (px_grad, py_grad))``: the occupation probabilities used by
    :func:`get_rnnt_prune_ranges`.
    """
    _check_am_lm(lm, am, symbols, termination_symbol)
    _check_boundary_shape(boundary, lm.shape[0])
    _check_reduction(reduction)
    name = resolve_backend(
        backend, ("builtin", "k2", "fast_rnnt"), "the simple loss", am.device,
        _compiled_ok(boundary, symbols.shape[1], am.shape[1]),
    )
    with _float32_region(am.device):
        lm, am = _as_float(lm), _as_float(am)
        if name != "builtin":
            return backend_module(name).rnnt_loss_simple(
                lm=lm, am=am, symbols=symbols, termination_symbol=termination_symbol,
                boundary=boundary, reduction=reduction, return_grad=return_grad,
            )
        px, py = lp.simple_logprobs(lm, am, symbols, termination_symbol, boundary)
        return _finish(px, py, boundary, reduction, return_grad)


def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int = 0,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
    reduction: str = "sum",
    return_grad: bool = False,
    backend: str = "auto",
) -> LossAndGrad:
    """The simple loss on a log-linear mix of the joint, LM-only and AM-only lattices (k2's
    ``rnnt_loss_smoothed``, icefall's ``lm_scale``/``am_scale``).  Scales of 0 give :func:`rnnt_loss_simple`.
    """
    _check_am_lm(lm, am, symbols, termination_symbol)
    _check_boundary_shape(boundary, lm.shape[0])
    _check_reduction(reduction)
    if lm_only_scale < 0 or am_only_scale < 0 or lm_only_scale + am_only_scale >= 1:
        raise RNNTInputError(f"need lm_only_scale, am_only_scale >= 0 with sum < 1, got {lm_only_scale}, {am_only_scale}")
    name = resolve_backend(
        backend, ("builtin", "k2", "fast_rnnt"), "the smoothed loss", am.device,
        _compiled_ok(boundary, symbols.shape[1], am.shape[1]),
    )
    with _float32_region(am.device):
        lm, am = _as_float(lm), _as_float(am)
        if name != "builtin":
            return backend_module(name).rnnt_loss_smoothed(
                lm=lm, am=am, symbols=symbols, termination_symbol=termination_symbol,
                lm_only_scale=lm_only_scale, am_only_scale=am_only_scale,
                boundary=boundary, reduction=reduction, return_grad=return_grad,
            )
        px, py = lp.smoothed_logprobs(lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary)
        return _finish(px, py, boundary, reduction, return_grad)


def _finish(px: Tensor, py: Tensor, boundary: Optional[Tensor], reduction: str, return_grad: bool) -> LossAndGrad:
    if not return_grad:
        return _reduce(mutual_information_recursion(px, py, boundary), reduction)
    total, grads = mutual_information_recursion(px, py, boundary, return_grad=True)
    return _reduce(total, reduction), grads


# --------------------------------------------------------------------------------------- pruned loss


def _check_ranges(ranges: Tensor, batch: int, frames: int, s_range: int, num_symbols: int) -> None:
    if ranges.dtype != torch.int64 or tuple(ranges.shape) != (batch, frames, s_range):
        raise RNNTInputError(
            f"ranges must be int64 of shape ({batch}, {frames}, {s_range}) to match logits, "
            f"got {ranges.dtype} {tuple(ranges.shape)}"
        )
    if int(ranges.min()) < 0 or int(ranges.max()) > num_symbols:
        raise RNNTInputError(f"ranges must lie in [0, {num_symbols}], got [{int(ranges.min())}, {int(ranges.max())}]")
    if s_range > 1 and not bool((ranges[..., 1:] > ranges[..., :-1]).all()):
        raise RNNTInputError("ranges must be strictly increasing along the s_range axis")


def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int = 0,
    boundary: Optional[Tensor] = None,
    reduction: str = "sum",
    backend: str = "auto",
) -> Tensor:
    """RNN-T loss over the pruned band: ``logits[b, t, k]`` is the joiner output at symbol position
    ``ranges[b, t, k]``; all other cells of the lattice are treated as impossible."""
    if logits.ndim != 4:
        raise RNNTInputError(f"logits must be (B, T, s_range, V), got shape {tuple(logits.shape)}")
    batch, frames, s_range, vocab = logits.shape
    num_symbols = symbols.shape[1] if symbols.ndim == 2 else -1
    _check_symbols(symbols, batch, num_symbols, vocab, termination_symbol)
    _check_ranges(ranges, batch, frames, s_range, num_symbols)
    _check_boundary_shape(boundary, batch)
    _check_reduction(reduction)
    name = resolve_backend(
        backend, ("builtin", "k2", "fast_rnnt"), "the pruned loss", logits.device,
        _compiled_ok(boundary, num_symbols, frames),
    )
    with _float32_region(logits.device):
        logits = _as_float(logits)
        if name != "builtin":
            return backend_module(name).rnnt_loss_pruned(
                logits=logits, symbols=symbols, ranges=ranges, termination_symbol=termination_symbol,
                boundary=boundary, reduction=reduction,
            )
        px, py = lp.pruned_logprobs(logits, symbols, ranges, termination_symbol, boundary)
        return _reduce(mutual_information_recursion(px, py, boundary), reduction)


__all__ = [
    "LossBackendError",
    "RNNTInputError",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]
