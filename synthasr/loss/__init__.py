"""RNN-T losses in plain PyTorch (CPU and CUDA), with k2's names and conventions.

    rnnt_loss(logits, symbols, termination_symbol=0, boundary=None, reduction="sum", backend="auto")
    rnnt_loss_simple(lm, am, symbols, termination_symbol=0, boundary=None, reduction="sum", return_grad=False)
    rnnt_loss_smoothed(lm, am, symbols, ..., lm_only_scale, am_only_scale, ...)
    get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range) -> ranges (B, T, s_range)
    do_rnnt_pruning(am, lm, ranges) -> (am_pruned, lm_pruned)
    rnnt_loss_pruned(logits, symbols, ranges, termination_symbol=0, boundary=None, reduction="sum")

``boundary`` is ``[B, 4]`` int64 ``[begin_symbol, begin_frame, U_b, T_b]``; the termination symbol is the
blank.  Backends: builtin (always), k2, fast_rnnt, torchaudio (full loss only) when importable.
Importing this package imports only torch (and yaml via the config module).
"""
from .backends import KNOWN_BACKENDS, LossBackendError, available_backends
from .config import LossConfig, loss_scales
from .logprobs import RNNTInputError
from .losses import rnnt_loss, rnnt_loss_pruned, rnnt_loss_simple, rnnt_loss_smoothed
from .pruning import PruneRangeError, do_rnnt_pruning, get_rnnt_prune_ranges
from .recursion import LatticeShapeError, mutual_information_recursion

__all__ = [
    "KNOWN_BACKENDS",
    "LatticeShapeError",
    "LossBackendError",
    "LossConfig",
    "PruneRangeError",
    "RNNTInputError",
    "available_backends",
    "do_rnnt_pruning",
    "get_rnnt_prune_ranges",
    "loss_scales",
    "mutual_information_recursion",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]
