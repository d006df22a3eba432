"""The RNN-T lattice recursion (k2's "mutual information recursion"), in plain PyTorch.

Every RNN-T loss here reduces to two arrays of log-probabilities on a grid of (symbols emitted ``s``,
frames consumed ``t``) cells:

* ``px[b, s, t]`` (B, S, T+1): log-prob of emitting symbol ``s`` while at cell (s, t), moving to (s+1, t);
* ``py[b, s, t]`` (B, S+1, T): log-prob of the blank/termination symbol at (s, t), moving to (s, t+1).

and the total log-probability of all paths from ``(begin_symbol, begin_frame)`` to
``(end_symbol, end_frame)``::

    alpha[s, t] = logaddexp(alpha[s-1, t] + px[s-1, t], alpha[s, t-1] + py[s, t-1])

Cells on one anti-diagonal ``d = s + t`` depend only on the previous anti-diagonal, so the recursion is a
Python loop over ``S + T`` diagonals with vector work of size ``B x (S+1)`` per step, not a loop over cells.
We store the lattice "skewed" (``buf[b, d, s]`` holds cell ``(s, d - s)``); because the skew is an affine
map of offsets, the ordinary ``(s, t)`` view of a skewed buffer is a zero-copy ``as_strided`` view.

The backward pass does not differentiate through the loop: we also run the beta (backward) recursion and
return the analytic gradient, which is the posterior occupation probability of each transition.  Those
occupation probabilities are what pruning needs, so they can be returned directly (``return_grad``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

NEG_INF = float("-inf")


class LatticeShapeError(ValueError):
    """px/py/boundary do not describe a consistent RNN-T lattice."""


def default_boundary(batch: int, num_symbols: int, num_frames: int, device: torch.device) -> Tensor:
    """The boundary used when none is given: every utterance spans the whole padded grid."""
    row = torch.tensor([0, 0, num_symbols, num_frames], dtype=torch.int64, device=device)
    return row.expand(batch, 4).contiguous()


def check_boundary(boundary: Tensor, batch: int, num_symbols: int, num_frames: int) -> List[List[int]]:
    """Validate a ``[B, 4]`` int64 boundary against the grid; return it as Python lists (one sync)."""
    if boundary.dtype != torch.int64 or tuple(boundary.shape) != (batch, 4):
        raise LatticeShapeError(
            f"boundary must be an int64 tensor of shape ({batch}, 4), got {boundary.dtype} {tuple(boundary.shape)}"
        )
    rows = boundary.tolist()
    for b, (s0, t0, s1, t1) in enumerate(rows):
        if not (0 <= s0 <= s1 <= num_symbols and 0 <= t0 <= t1 <= num_frames):
            raise LatticeShapeError(
                f"boundary[{b}] = {[s0, t0, s1, t1]} is outside the lattice "
                f"(need 0 <= begin_symbol <= end_symbol <= {num_symbols}, 0 <= begin_frame <= end_frame <= {num_frames})"
            )
    return rows


def _skewed_buffer(batch: int, num_symbols: int, num_frames: int, like: Tensor, width: int) -> Tensor:
    """A -inf buffer ``(B, D+1, width)`` with one spare diagonal so ``d + 1`` is always a valid index."""
    num_diagonals = num_symbols + num_frames + 1
    return torch.full((batch, num_diagonals + 1, width), NEG_INF, dtype=like.dtype, device=like.device)


def _grid_view(buf: Tensor, rows: int, cols: int, first_col: int = 0) -> Tensor:
    """The ``(B, rows, cols)`` cell view of a skewed buffer: cell (s, t) lives at ``buf[:, s + t, first_col + s]``."""
    width = buf.shape[2]
    return buf.as_strided(
        (buf.shape[0], rows, cols), (buf.stride(0), width + 1, width), buf.storage_offset() + first_col
    )


def _neighbour_pairs(buf: Tensor, diagonal: int, first_col: int, num_cells: int) -> Tensor:
    """Overlapping read-only view ``(B, 2, num_cells)`` of one diagonal: row 0 starts at ``first_col``,
    row 1 one column later.  Lets one add + one logaddexp do a whole diagonal step."""
    width = buf.shape[2]
    return buf.as_strided(
        (buf.shape[0], 2, num_cells), (buf.stride(0), 1, 1), buf.storage_offset() + diagonal * width + first_col
    )


def _cells_by_diagonal(rows: List[List[int]], symbol_col: int, frame_col: int) -> Dict[int, Tuple[List[int], List[int]]]:
    """Group utterances by the diagonal their begin (or end) cell lies on: ``{d: (batch_ids, symbols)}``."""
    groups: Dict[int, Tuple[List[int], List[int]]] = {}
    for b, row in enumerate(rows):
        d = row[symbol_col] + row[frame_col]
        ids, syms = groups.setdefault(d, ([], []))
        ids.append(b)
        syms.append(row[symbol_col])
    return groups


def _seed(buf: Tensor, diagonal: int, group: Tuple[List[int], List[int]], first_col: int) -> None:
    ids, syms = group
    cols = torch.tensor(syms, device=buf.device) + first_col
    buf[torch.tensor(ids, device=buf.device), diagonal, cols] = 0.0


# Skewed layouts (W = S + 2 columns).  alpha: cell (s, t) at [s + t, s + 1], column 0 is an s = -1 pad.
# beta: cell (s, t) at [s + t, s], column S + 1 is an s = S + 1 pad.  Pads stay -inf.


def _alpha(into_cell: Tensor, rows: List[List[int]]) -> Tensor:
    """Forward recursion; ``into_cell[:, d, 0/1, s]`` = log-prob of entering cell s of diagonal d + 1
    from (s - 1, t) / from (s, t - 1)."""
    batch, _, _, cells = into_cell.shape
    alpha = torch.full((batch, into_cell.shape[1], cells + 1), NEG_INF, dtype=into_cell.dtype, device=into_cell.device)
    starts = _cells_by_diagonal(rows, 0, 1)
    first = min(starts)
    last = max(r[2] + r[3] for r in rows)
    _seed(alpha, first, starts[first], 1)
    for d in range(first + 1, last + 1):
        step = _neighbour_pairs(alpha, d - 1, 0, cells) + into_cell[:, d - 1]
        torch.logaddexp(step[:, 0], step[:, 1], out=alpha[:, d, 1:])
        if d in starts:
            _seed(alpha, d, starts[d], 1)
    return alpha


def _beta(out_of_cell: Tensor, rows: List[List[int]]) -> Tensor:
    """Backward recursion; ``out_of_cell[:, d, 0/1, s]`` = log-prob of leaving cell s of diagonal d
    by a blank / by a symbol."""
    batch, _, _, cells = out_of_cell.shape
    beta = torch.full((batch, out_of_cell.shape[1], cells + 1), NEG_INF, dtype=out_of_cell.dtype,
                      device=out_of_cell.device)
    ends = _cells_by_diagonal(rows, 2, 3)
    first = min(r[0] + r[1] for r in rows)
    last = max(ends)
    _seed(beta, last, ends[last], 0)
    for d in range(last - 1, first - 1, -1):
        step = _neighbour_pairs(beta, d + 1, 0, cells) + out_of_cell[:, d]  # beta of (s, t+1), (s+1, t)
        torch.logaddexp(step[:, 0], step[:, 1], out=beta[:, d, :-1])
        if d in ends:
            _seed(beta, d, ends[d], 0)
    return beta


def _transition_tables(px: Tensor, py: Tensor) -> Tuple[Tensor, Tensor]:
    """Skewed ``(B, D+1, 2, S+1)`` tables of the log-probs entering (for alpha) and leaving (for beta)
    each cell, so each diagonal step reads one contiguous slice."""
    batch, num_symbols, num_frames = py.shape[0], py.shape[1] - 1, py.shape[2]
    px_skew = _skewed_buffer(batch, num_symbols, num_frames, px, num_symbols + 2)  # px of s at column s + 1
    py_skew = _skewed_buffer(batch, num_symbols, num_frames, px, num_symbols + 1)
    _grid_view(px_skew, num_symbols, num_frames + 1, first_col=1).copy_(px)
    _grid_view(py_skew, num_symbols + 1, num_frames).copy_(py)
    into_cell = torch.stack((px_skew[:, :, :-1], py_skew), dim=2)  # px of s - 1, py of s
    out_of_cell = torch.stack((py_skew, px_skew[:, :, 1:]), dim=2)  # py of s, px of s
    return into_cell, out_of_cell


def lattice_forward_backward(px: Tensor, py: Tensor, rows: List[List[int]]) -> Tuple[Tensor, Tensor, Tensor]:
    """Total log-prob per utterance and the occupation probabilities d(total)/d(px), d(total)/d(py).

    ``rows`` is the validated boundary as lists (see :func:`check_boundary`).  No autograd graph is built.
    """
    batch, num_symbols, num_frames = py.shape[0], py.shape[1] - 1, py.shape[2]
    into_cell, out_of_cell = _transition_tables(px, py)
    alpha = _alpha(into_cell, rows)
    del into_cell
    beta = _beta(out_of_cell, rows)
    alpha_grid = _grid_view(alpha, num_symbols + 1, num_frames + 1, first_col=1)
    beta_grid = _grid_view(beta, num_symbols + 1, num_frames + 1)
    ends = torch.tensor([[r[2], r[3]] for r in rows], dtype=torch.int64, device=px.device)
    total = alpha_grid[torch.arange(batch, device=px.device), ends[:, 0], ends[:, 1]]
    # An utterance with no surviving path (total = -inf) gets zero gradient instead of NaN.
    finite = torch.isfinite(total)
    shift = torch.where(finite, total, torch.zeros_like(total)).view(batch, 1, 1)
    px_occ = (alpha_grid[:, :num_symbols, :] + px + beta_grid[:, 1:, :] - shift).exp()
    py_occ = (alpha_grid[:, :, :num_frames] + py + beta_grid[:, :, 1:] - shift).exp()
    keep = finite.view(batch, 1, 1).to(px.dtype)
    return total, px_occ * keep, py_occ * keep


class _LatticeLogProb(torch.autograd.Function):
    """Autograd wrapper: forward computes totals and occupations once; backward just scales them."""

    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, rows: List[List[int]]):  # type: ignore[override]
        total, px_occ, py_occ = lattice_forward_backward(px.detach(), py.detach(), rows)
        ctx.save_for_backward(px_occ, py_occ)
        ctx.mark_non_differentiable(px_occ, py_occ)
        return total, px_occ, py_occ

    @staticmethod
    def backward(ctx, grad_total: Tensor, _grad_px_occ: Optional[Tensor], _grad_py_occ: Optional[Tensor]):  # type: ignore[override]
        px_occ, py_occ = ctx.saved_tensors
        scale = grad_total.view(-1, 1, 1)
        return px_occ * scale, py_occ * scale, None


def mutual_information_recursion(
    px: Tensor, py: Tensor, boundary: Optional[Tensor] = None, return_grad: bool = False
):
    """Total log-prob of the RNN-T lattice given by ``px`` (B,S,T+1) and ``py`` (B,S+1,T).

    Differentiable w.r.t. ``px`` and ``py``.  With ``return_grad=True`` also returns the (detached)
    occupation probabilities ``(px_grad, py_grad)``: the gradient of ``total.sum()``, as k2 does.
    """
    if px.ndim != 3 or py.ndim != 3:
        raise LatticeShapeError(f"px and py must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    batch, num_symbols, num_frames = py.shape[0], py.shape[1] - 1, py.shape[2]
    if tuple(px.shape) != (batch, num_symbols, num_frames + 1):
        raise LatticeShapeError(
            f"px must have shape (B, S, T+1) = {(batch, num_symbols, num_frames + 1)} for py of shape "
            f"{tuple(py.shape)}, got {tuple(px.shape)}"
        )
    if boundary is None:
        boundary = default_boundary(batch, num_symbols, num_frames, px.device)
    rows = check_boundary(boundary, batch, num_symbols, num_frames)
    total, px_occ, py_occ = _LatticeLogProb.apply(px, py, rows)
    return (total, (px_occ, py_occ)) if return_grad else total
