"""Parameter regularisation against forgetting: EWC, online EWC and L2-SP.

EWC (Kirkpatrick et al. 2017) adds ``(lambda/2) * sum_i F_i (theta_i - theta*_i)^2`` to the loss, where
``theta*`` are the weights after the previous stage and ``F`` is the diagonal (empirical) Fisher
information estimated at ``theta*`` on *old-domain* data: parameters the general domain depends on
get stiff springs, the rest stay free. L2-SP (Li et al. 2018) is the same spring with ``F = 1``.
Online EWC (Schwarz et al. 2018) keeps one running Fisher ``F = gamma * F_prev + F_new`` and moves the
anchor to the newest ``theta*`` each stage, so the cost does not grow with the number of stages.

Scale convention: the trainer minimises the per-frame RNN-T loss, so the Fisher here is estimated from
gradients of each utterance's per-frame loss (:func:`rnnt_frame_loss`), one utterance at a time:
``F = mean_n (d loss_n / d theta)^2``. Squaring a batch-mean gradient instead would shrink ``F`` by
about the number of utterances per batch (independent per-utterance gradients average out), making
``lambda`` depend on the Fisher batch size. The penalty is a callable ``regularizer(model) -> scalar
tensor`` as ``trainer.fit`` expects; lambdas are given per module prefix (``{"encoder": 1000}``
applies EWC to the encoder only; ``""`` is the default for everything else).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from synthasr.utils.io import atomic_path

log = logging.getLogger(__name__)

Lambdas = Union[float, Mapping[str, float]]
LossFn = Callable[[nn.Module, Any], torch.Tensor]
FISHER_FORMAT = "synthasr-fisher"


class RegularizationError(ValueError):
    """Bad regularisation input (unknown module prefix, shape mismatch, empty Fisher data)."""


# --------------------------------------------------------------------------------------------- #
# Fisher estimation
# --------------------------------------------------------------------------------------------- #
def estimate_fisher(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    num_batches: int,
    max_utterances: Optional[int] = None,
    split: Optional[Callable[[Any], Iterable[Any]]] = None,
    progress: bool = True,
) -> Dict[str, torch.Tensor]:
    """Diagonal empirical Fisher at the current weights: the mean over utterances of the squared
    gradient of ``loss_fn(model, utterance)`` w.r.t. every parameter that requires grad.

    Utterances come from the first ``num_batches`` of ``batches`` (give a shuffled, seeded loader for
    a random sample), each split by ``split`` (default :func:`split_batch`, the trainer's batch
    format) into one-utterance batches, at most ``max_utterances`` in all. The model is put in eval
    mode (no dropout: the Fisher belongs to ``theta*``, not to a random sub-network) and restored
    afterwards; its ``.grad`` fields are left as they were.
    """
    from tqdm import tqdm

    if num_batches <= 0:
        raise RegularizationError(f"fisher: num_batches must be positive, got {num_batches}")
    if max_utterances is not None and max_utterances <= 0:
        raise RegularizationError(f"fisher: max_utterances must be positive, got {max_utterances}")
    split = split or split_batch
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise RegularizationError("fisher: the model has no parameters with requires_grad=True")
    saved_grads = [p.grad for _, p in params]
    was_training = model.training
    model.eval()
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    used = skipped = 0
    try:
        for batch_index, batch in enumerate(tqdm(batches, total=num_batches, desc="fisher", disable=not progress)):
            if batch_index >= num_batches or used == max_utterances:
                break
            for utterance in split(batch):
                if used == max_utterances:
                    break
                if _accumulate_squared_grad(model, params, fisher, loss_fn, utterance):
                    used += 1
                else:
                    skipped += 1
    finally:
        for (_, p), g in zip(params, saved_grads):
            p.grad = g
        model.train(was_training)
    if skipped:
        log.warning("fisher: skipped %d utterance(s) with a non-finite loss", skipped)
    if used == 0:
        raise RegularizationError("fisher: no usable utterances (empty old-domain data or all losses non-finite)")
    log.info("fisher: estimated from %d utterances", used)
    return {n: (f / used).cpu() for n, f in fisher.items()}


def _accumulate_squared_grad(model: nn.Module, params, fisher: Dict[str, torch.Tensor], loss_fn: LossFn,
                             utterance: Any) -> bool:
    """Add one utterance's squared gradient to ``fisher``; False (nothing added) on a non-finite loss."""
    for _, p in params:
        p.grad = None
    loss = loss_fn(model, utterance)
    if not torch.isfinite(loss):
        return False
    loss.backward()
    for n, p in params:
        if p.grad is not None:
            fisher[n] += p.grad.detach().float() ** 2
    return True


def split_batch(batch: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """One-utterance batches (features cut to their own length) from a trainer batch."""
    lens = batch["feature_lens"]
    for i in range(len(lens)):
        n = int(lens[i])
        yield {
            "features": batch["features"][i : i + 1, :n],
            "feature_lens": lens[i : i + 1],
            "texts": list(batch["texts"][i : i + 1]),
            "cut_ids": list(batch.get("cut_ids", [])[i : i + 1]),
        }


def rnnt_frame_loss(tokenizer: Any, loss_cfg: Any, step: Optional[int] = None) -> LossFn:
    """``loss_fn`` for trainer batches: the transducer loss per encoder frame (the trainer's objective).

    ``step`` defaults to past the loss warm-up, so the simple/pruned scales are those of a trained model.
    """
    step = int(getattr(loss_cfg, "warmup_steps", 0)) * 2 if step is None else step

    def loss_fn(model: nn.Module, batch: Dict[str, Any]) -> torch.Tensor:
        device = next(model.parameters()).device
        tokens = tokenizer.encode(list(batch["texts"]))
        out = model(batch["features"].to(device), batch["feature_lens"].to(device), tokens, loss_cfg, step)
        frames = torch.as_tensor(out["num_frames"], dtype=torch.float32).clamp(min=1.0)
        return out["loss"].float() / frames.to(out["loss"].device)

    return loss_fn


def consolidate_fisher(
    previous: Optional[Mapping[str, torch.Tensor]], new: Mapping[str, torch.Tensor], gamma: float
) -> Dict[str, torch.Tensor]:
    """Online EWC: ``gamma * F_prev + F_new`` (parameters missing from one side count as zero)."""
    if not 0.0 <= gamma <= 1.0:
        raise RegularizationError(f"online EWC: gamma must be in [0, 1], got {gamma}")
    out = {n: f.detach().clone().float() for n, f in new.items()}
    for n, f in (previous or {}).items():
        if n in out:
            if out[n].shape != f.shape:
                raise RegularizationError(f"online EWC: Fisher shape mismatch for {n}: {tuple(f.shape)} vs {tuple(out[n].shape)}")
            out[n] += gamma * f.float()
        else:
            out[n] = gamma * f.detach().clone().float()
    return out


def save_fisher(path: Union[str, Path], fisher: Mapping[str, torch.Tensor], meta: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``{format, fisher: {name: tensor}, meta: {plain values}}`` atomically."""
    payload = {
        "format": FISHER_FORMAT,
        "fisher": {n: t.detach().cpu().float() for n, t in fisher.items()},
        "meta": dict(meta or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_fisher(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a Fisher file safely (``weights_only=True``); returns ``(fisher, meta)``."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RegularizationError(f"{path}: unreadable Fisher file: {first}") from None
    if not isinstance(data, dict) or data.get("format") != FISHER_FORMAT:
        raise RegularizationError(f"{path}: not a SynthASR Fisher file")
    return dict(data["fisher"]), dict(data.get("meta", {}))


def fisher_cached(
    path: Union[str, Path],
    compute: Callable[[], Dict[str, torch.Tensor]],
    meta: Optional[Dict[str, Any]] = None,
) -> Dict[str, torch.Tensor]:
    """Return the Fisher stored at ``path`` if its ``meta`` matches, else ``compute()`` and store it."""
    path = Path(path)
    meta = dict(meta or {})
    if path.is_file():
        try:
            fisher, stored = load_fisher(path)
        except RegularizationError as e:
            log.warning("%s; recomputing", e)
        else:
            if stored == meta:
                log.info("reusing Fisher from %s", path)
                return fisher
            log.info("Fisher at %s was computed with %s, need %s; recomputing", path, stored, meta)
    fisher = compute()
    save_fisher(path, fisher, meta)
    return fisher


# --------------------------------------------------------------------------------------------- #
# Penalties
# --------------------------------------------------------------------------------------------- #
def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Detached copies of all parameters: the anchor ``theta*`` for EWC / L2-SP."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def resolve_lambdas(names: Iterable[str], lambdas: Lambdas) -> Dict[str, float]:
    """Per-parameter lambda from per-prefix lambdas (longest matching prefix wins; ``""`` = default).

    A prefix matching no parameter is an error (a typo must not silently disable the penalty).
    """
    names = list(names)
    table = {"": float(lambdas)} if isinstance(lambdas, (int, float)) else {k: float(v) for k, v in lambdas.items()}
    for prefix, value in table.items():
        if value < 0 or math.isnan(value):
            raise RegularizationError(f"lambda for {prefix or 'all parameters'!r} must be >= 0, got {value}")
        if prefix and not any(_under(n, prefix) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise RegularizationError(f"lambda prefix {prefix!r} matches no parameter (top-level modules: {', '.join(tops)})")
    out = {}
    for n in names:
        matching = [p for p in table if p == "" or _under(n, p)]
        if matching:
            out[n] = table[max(matching, key=len)]
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class AnchoredPenalty:
    """``sum_p (lambda_p / 2) * sum(weight_p * (theta_p - anchor_p)^2)``; weight = Fisher or 1."""

    kind = "anchored"

    def __init__(
        self,
        model: nn.Module,
        anchor_params: Mapping[str, torch.Tensor],
        lambdas: Lambdas,
        weights: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> None:
        params = dict(model.named_parameters())
        names = list(weights) if weights is not None else list(anchor_params)
        for n in names:
            if n not in params:
                raise RegularizationError(f"{self.kind}: model has no parameter {n!r}")
            if n not in anchor_params:
                raise RegularizationError(f"{self.kind}: no anchor value for parameter {n!r}")
            if anchor_params[n].shape != params[n].shape:
                raise RegularizationError(
                    f"{self.kind}: anchor shape {tuple(anchor_params[n].shape)} != parameter shape "
                    f"{tuple(params[n].shape)} for {n}"
                )
            if weights is not None and weights[n].shape != params[n].shape:
                raise RegularizationError(f"{self.kind}: Fisher shape mismatch for {n}")
        per_param = resolve_lambdas(names, lambdas)
        self.terms: List[Tuple[str, float, torch.Tensor, Optional[torch.Tensor]]] = [
            (n, lam, anchor_params[n].detach().clone(), None if weights is None else weights[n].detach().clone())
            for n, lam in per_param.items()
            if lam > 0
        ]

    def __call__(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        device = next(iter(params.values())).device
        total = torch.zeros((), device=device, dtype=torch.float32)
        for i, (name, lam, anchor, weight) in enumerate(self.terms):
            p = params[name]
            if anchor.device != p.device:  # move once, on first use on the training device
                anchor = anchor.to(p.device)
                weight = None if weight is None else weight.to(p.device)
                self.terms[i] = (name, lam, anchor, weight)
            diff2 = (p.float() - anchor.float()) ** 2
            term = diff2.sum() if weight is None else (weight * diff2).sum()
            total = total + 0.5 * lam * term
        return total

    @property
    def num_regularized(self) -> int:
        """Number of scalar parameters under a spring (lambda > 0)."""
        return sum(a.numel() for _, _, a, _ in self.terms)


class EWC(AnchoredPenalty):
    """Elastic weight consolidation: ``(lambda/2) sum F (theta - theta*)^2`` with per-module lambdas."""

    kind = "ewc"

    def __init__(
        self,
        model: nn.Module,
        anchor_params: Mapping[str, torch.Tensor],
        fisher: Mapping[str, torch.Tensor],
        lambdas: Lambdas,
    ) -> None:
        if not fisher:
            raise RegularizationError("ewc: empty Fisher")
        if any(bool((f < 0).any()) for f in fisher.values()):
            raise RegularizationError("ewc: Fisher has negative entries")
        super().__init__(model, anchor_params, lambdas, weights=fisher)


class L2SP(AnchoredPenalty):
    """L2-SP: ``(lambda/2) sum (theta - theta*)^2``, a pull toward the previous stage's weights."""

    kind = "l2sp"

    def __init__(self, model: nn.Module, anchor_params: Mapping[str, torch.Tensor], lambdas: Lambdas) -> None:
        super().__init__(model, anchor_params, lambdas, weights=None)
