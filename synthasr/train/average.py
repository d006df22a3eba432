"""Checkpoint averaging, icefall's conventions: ``--epoch E --avg K`` averages ``epoch-(E-K+1) .. epoch-E``;
``--iter N --avg K`` averages the K newest ``checkpoint-STEP.pt`` with STEP <= N (``checkpoint-N.pt`` itself
must exist). The step form is the one for runs bounded by ``max_steps`` (every recipe stage), which
may never close an epoch.

Averaging the weights of the last few epochs is a cheap, reliable WER gain for transducers; the
result is a ``pretrained.pt``-style file (weights + configs + tokenizer, no train_state).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from synthasr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, tokenizer_proto

PathLike = Union[str, Path]
_STEP_FILE = re.compile(r"checkpoint-(\d+)\.pt")


class AverageError(ValueError):
    """The requested checkpoints cannot be averaged (missing, mismatched keys or shapes)."""


def find_checkpoints(exp_dir: PathLike, epoch: int, avg: int) -> List[Path]:
    """``epoch-{E-avg+1}.pt .. epoch-{E}.pt`` in ``exp_dir``; error naming the first missing file."""
    if avg < 1:
        raise AverageError(f"--avg must be >= 1, got {avg}")
    if epoch - avg + 1 < 1:
        raise AverageError(f"--epoch {epoch} --avg {avg}: would need epoch-{epoch - avg + 1}.pt (epochs start at 1)")
    paths = [Path(exp_dir) / f"epoch-{e}.pt" for e in range(epoch - avg + 1, epoch + 1)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise AverageError(f"{missing[0]}: checkpoint not found (needed for --epoch {epoch} --avg {avg})")
    return paths


def find_step_checkpoints(exp_dir: PathLike, iteration: int, avg: int) -> List[Path]:
    """The ``avg`` newest ``checkpoint-STEP.pt`` in ``exp_dir`` with STEP <= ``iteration``, oldest first.

    ``checkpoint-{iteration}.pt`` must exist (a typo in ``--iter`` should not silently average older
    files); steps need not be consecutive (checkpoints are written every ``checkpoint_every_n_steps``).
    """
    if avg < 1:
        raise AverageError(f"--avg must be >= 1, got {avg}")
    if iteration < 1:
        raise AverageError(f"--iter must be >= 1, got {iteration}")
    exp_dir = Path(exp_dir)
    last = exp_dir / f"checkpoint-{iteration}.pt"
    if not last.is_file():
        raise AverageError(f"{last}: checkpoint not found (needed for --iter {iteration} --avg {avg})")
    named = (_STEP_FILE.fullmatch(p.name) for p in exp_dir.glob("checkpoint-*.pt"))
    steps = sorted(int(m.group(1)) for m in named if m and int(m.group(1)) <= iteration)
    if len(steps) < avg:
        found = ", ".join(f"checkpoint-{s}.pt" for s in steps)
        raise AverageError(f"{exp_dir}: --iter {iteration} --avg {avg} needs {avg} checkpoint-STEP.pt with "
                           f"STEP <= {iteration}, found {len(steps)} ({found})")
    return [exp_dir / f"checkpoint-{s}.pt" for s in steps[-avg:]]


def average_state_dicts(
    states: Sequence[Dict[str, torch.Tensor]], names: Sequence[str] = (), weights: Optional[Sequence[float]] = None
) -> Dict[str, torch.Tensor]:
    """Elementwise (weighted) mean of floating tensors (accumulated in float64); other tensors from the last.

    ``weights`` (normalised to sum 1) interpolate between models, e.g. a base model and its adapted
    version (weight averaging against forgetting: Wortsman et al. 2022, Vander Eeckt & Van hamme 2023)."""
    if not states:
        raise AverageError("nothing to average: no checkpoints given")
    names = list(names) or [f"#{i}" for i in range(len(states))]
    coefficients = _coefficients(weights, len(states))
    ref_keys = list(states[-1].keys())
    for state, name in zip(states, names):
        if set(state) != set(ref_keys):
            diff = sorted(set(state) ^ set(ref_keys))
            raise AverageError(f"{name}: parameter names differ from {names[-1]} (e.g. {diff[0]})")
    out: Dict[str, torch.Tensor] = {}
    for key in ref_keys:
        last = states[-1][key]
        if not torch.is_floating_point(last):
            out[key] = last.clone()  # step counters, num_batches_tracked, ...
            continue
        total = torch.zeros(last.shape, dtype=torch.float64)
        for state, name, c in zip(states, names, coefficients):
            t = state[key]
            if t.shape != last.shape:
                raise AverageError(f"{name}: {key} has shape {tuple(t.shape)}, expected {tuple(last.shape)}")
            total += c * t.to(torch.float64)
        out[key] = total.to(last.dtype)
    return out


def _coefficients(weights: Optional[Sequence[float]], n: int) -> List[float]:
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise AverageError(f"{len(weights)} weights for {n} checkpoints")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise AverageError(f"weights must be >= 0 with a positive sum, got {weights}")
    return [w / sum(weights) for w in weights]


def average_checkpoints(paths: Sequence[PathLike], weights: Optional[Sequence[float]] = None
                        ) -> Dict[str, torch.Tensor]:
    """(Weighted) average of the ``model`` weights of the given checkpoint files."""
    paths = [Path(p) for p in paths]
    states = [load_checkpoint(p)["model"] for p in paths]
    return average_state_dicts(states, [str(p) for p in paths], weights)


def write_averaged(paths: Sequence[PathLike], out: PathLike, weights: Optional[Sequence[float]] = None) -> Path:
    """Average ``paths`` (weighted: ``weights``) and write a pretrained-style checkpoint (configs and
    tokenizer from the last)."""
    paths = [Path(p) for p in paths]
    averaged = average_checkpoints(paths, weights)
    last = load_checkpoint(paths[-1])
    meta = dict(last.get("meta", {}))
    one_dir = len({p.parent for p in paths}) == 1  # checkpoints of one run: names; models of several: paths
    meta["averaged_from"] = [p.name if one_dir else str(p) for p in paths]
    if weights is not None:
        meta["average_weights"] = _coefficients(weights, len(paths))
    if last.get("model_config") is None:
        raise CheckpointError(f"{paths[-1]}: checkpoint lacks model_config")
    return save_checkpoint(
        out, averaged, last["model_config"], last.get("feature_config"), tokenizer_proto(last),
        train_state=None, meta=meta,
    )
