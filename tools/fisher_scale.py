"""How much larger the per-utterance EWC Fisher is than the old batch-mean estimate, on your data.

A calibration tool (not a benchmark: it needs your checkpoint and manifest).

Until issue 12 the schedule squared the *batch-mean* per-frame gradient; now it averages squared
*per-utterance* gradients (``synthasr.train.regularization.estimate_fisher``). With independent
per-utterance gradients the old estimate is about 1/B of the new one (B = utterances per batch), so
an EWC ``lambda`` tuned with the old estimate must shrink by the measured ratio to keep the same
penalty. This script measures that ratio at a checkpoint on a cut manifest, per top-level module,
on the same batches for both estimators (the first ``--batches`` batches of ``--max-duration``
seconds of a seeded shuffle, as the schedule samples them).

    python tools/fisher_scale.py --checkpoint exp/general/final.pt --cuts data/fbank/general_cuts.jsonl.gz \\
        --max-duration 60 --batches 8 [--out fisher_scale.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthasr.utils.io import atomic_write  # noqa: E402


def _batch_mean_fisher(model, batches, loss_fn) -> Dict[str, torch.Tensor]:
    """The old estimate: mean over batches of the squared gradient of the batch's per-frame loss."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {n: torch.zeros_like(p) for n, p in params}
    model.eval()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for n, p in params:
            if p.grad is not None:
                out[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    return {n: f / len(batches) for n, f in out.items()}


def _by_module(fisher: Dict[str, torch.Tensor]) -> Dict[str, float]:
    sums: Dict[str, float] = defaultdict(float)
    for name, f in fisher.items():
        sums[name.split(".")[0]] += float(f.double().sum())
        sums["all"] += float(f.double().sum())
    return dict(sums)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cuts", required=True)
    ap.add_argument("--max-duration", type=float, default=60.0)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="fisher_scale.json", help="JSON with the sums per module and the ratios")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lhotse import CutSet

    from synthasr.checkpoint import load_checkpoint, tokenizer_proto
    from synthasr.data.dataset import sample_loader
    from synthasr.data.features import FeatureConfig
    from synthasr.loss import LossConfig
    from synthasr.model import build_model
    from synthasr.tokenizer import Tokenizer
    from synthasr.train.regularization import estimate_fisher, rnnt_frame_loss

    ckpt = load_checkpoint(args.checkpoint)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    proto = tokenizer_proto(ckpt)
    if proto is None:
        raise SystemExit(f"{args.checkpoint}: no embedded tokenizer")
    tokenizer = Tokenizer.from_bytes(proto)
    features = FeatureConfig(**ckpt["feature_config"]) if ckpt.get("feature_config") else FeatureConfig()
    cuts = CutSet.from_file(args.cuts).to_eager()
    loader = sample_loader(cuts, features, args.max_duration, seed=args.seed)
    batches = [b for _, b in zip(range(args.batches), loader)]
    loss_fn = rnnt_frame_loss(tokenizer, LossConfig(warmup_steps=0))

    old = _by_module(_batch_mean_fisher(model, batches, loss_fn))
    new = _by_module(estimate_fisher(model, batches, loss_fn, num_batches=len(batches), progress=False))
    sizes = [len(b["texts"]) for b in batches]
    result = {
        "checkpoint": str(args.checkpoint), "cuts": str(args.cuts), "max_duration": args.max_duration,
        "batches": len(batches), "utterances": sum(sizes), "utterances_per_batch": statistics.mean(sizes),
        "mean_utterance_seconds": statistics.mean(c.duration for b in batches for c in cuts.subset(cut_ids=b["cut_ids"])),
        "fisher_sum_old": old, "fisher_sum_new": new,
        "ratio_new_over_old": {k: new[k] / old[k] for k in new if old.get(k)},
        "torch": torch.__version__, "machine": platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(Path(args.out)) as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("utterances_per_batch", "ratio_new_over_old")}, indent=2))


if __name__ == "__main__":
    main()
