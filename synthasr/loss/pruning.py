"""Pruning bounds for pruned RNN-T (Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR
training", section 3.2) and the gather that builds the pruned joiner inputs.

For each frame we keep a window of ``s_range`` consecutive symbol positions.  The window start is
chosen where the occupation mass of the simple loss is largest, then forced to be non-decreasing in
time, to start at symbol 0, to advance by at most ``s_range - 1`` per frame (so no symbol is skipped)
and to cover the final symbol ``U_b`` on each utterance's last frame, so the band always holds a path.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


class PruneRangeError(ValueError):
    """Bad arguments for computing or applying pruning ranges."""


def _suffix_min(x: Tensor) -> Tensor:
    """``out[..., i] = min(x[..., i:])``: the largest non-decreasing sequence bounded above by ``x``."""
    return x.flip(-1).cummin(dim=-1).values.flip(-1)


def _make_window_starts_valid(starts: Tensor, s_range: int) -> Tensor:
    """Non-decreasing starts, beginning at 0, each step ``<= s_range - 1``; never raises a start.

    Writing ``g[t] = (s_range - 1) * t - starts[t]``, the step constraint is ``g`` non-decreasing, so we
    take the largest non-decreasing sequence below ``g`` (a suffix minimum), clamp it at 0 (which pins the
    first start to 0 and keeps starts <= (s_range - 1) * t) and map back.
    """
    frames = starts.shape[-1]
    slope = (s_range - 1) * torch.arange(frames, device=starts.device)
    starts = _suffix_min(starts)
    slack = _suffix_min(slope - starts).clamp(min=0)
    return slope - slack


def get_rnnt_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int) -> Tensor:
    """Symbol positions to keep per frame, ``(B, T, s_range)`` int64, from the simple loss's occupations.

    Args:
      px_grad: (B, S, T+1) occupation of symbol transitions (``return_grad`` of the simple loss).
      py_grad: (B, S+1, T) occupation of blank transitions.
      boundary: (B, 4) int64 ``[begin_symbol, begin_frame, U_b, T_b]``.
      s_range: symbols kept per frame; values above S are reduced to S + 1 (nothing is pruned).
    """
    if px_grad.ndim != 3 or py_grad.ndim != 3:
        raise PruneRangeError(f"px_grad and py_grad must be 3-D, got {tuple(px_grad.shape)}, {tuple(py_grad.shape)}")
    batch, num_symbols, frames = py_grad.shape[0], py_grad.shape[1] - 1, py_grad.shape[2]
    if tuple(px_grad.shape) != (batch, num_symbols, frames + 1):
        raise PruneRangeError(f"px_grad must be (B, S, T+1) = {(batch, num_symbols, frames + 1)}, got {tuple(px_grad.shape)}")
    if tuple(boundary.shape) != (batch, 4):
        raise PruneRangeError(f"boundary must be ({batch}, 4), got {tuple(boundary.shape)}")
    if s_range < 2:
        raise PruneRangeError(f"s_range must be >= 2 for the regular RNN-T (no path survives otherwise), got {s_range}")
    s_range = min(s_range, num_symbols + 1)
    num_windows = num_symbols + 2 - s_range

    # Blank mass of frame t inside window [s0, s0 + s_range): each path leaves frame t by exactly one blank.
    blank_cumsum = torch.nn.functional.pad(py_grad.cumsum(dim=1), (0, 0, 1, 0))  # (B, S+2, T)
    window_mass = blank_cumsum[:, s_range:] - blank_cumsum[:, :num_windows]
    # Paths that enter s0 from s0 - 1 on frame t were outside the window on that frame: penalise them.
    entering = torch.nn.functional.pad(px_grad[:, :, :frames], (0, 0, 1, 0))[:, :num_windows]
    starts = (window_mass - entering).argmax(dim=1)  # (B, T)

    # From each utterance's last frame on, the window must reach the final symbol U_b.
    last_start = (boundary[:, 2] - s_range + 1).clamp(min=0).view(batch, 1)
    frame_ids = torch.arange(frames, device=py_grad.device).view(1, frames)
    starts = torch.where(frame_ids < boundary[:, 3].view(batch, 1) - 1, starts, last_start)
    starts = _make_window_starts_valid(starts, s_range)
    return starts.unsqueeze(2) + torch.arange(s_range, device=py_grad.device)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> Tuple[Tensor, Tensor]:
    """Expand encoder output ``am`` (B,T,C) and gather prediction output ``lm`` (B,S+1,C') to the band.

    Returns ``(am_pruned, lm_pruned)`` of shapes (B, T, s_range, C) and (B, T, s_range, C'); ``am_pruned``
    is a broadcast view (no copy).
    """
    if am.ndim != 3 or lm.ndim != 3 or ranges.ndim != 3:
        raise PruneRangeError(f"expected am (B,T,C), lm (B,S+1,C), ranges (B,T,s_range); got "
                              f"{tuple(am.shape)}, {tuple(lm.shape)}, {tuple(ranges.shape)}")
    batch, frames, s_range = ranges.shape
    if am.shape[:2] != (batch, frames) or lm.shape[0] != batch:
        raise PruneRangeError(f"ranges {tuple(ranges.shape)} do not match am {tuple(am.shape)} / lm {tuple(lm.shape)}")
    lm_dim = lm.shape[2]
    am_pruned = am.unsqueeze(2).expand(batch, frames, s_range, am.shape[2])
    index = ranges.unsqueeze(3).expand(batch, frames, s_range, lm_dim)
    lm_pruned = lm.unsqueeze(1).expand(batch, frames, lm.shape[1], lm_dim).gather(2, index)
    return am_pruned, lm_pruned
