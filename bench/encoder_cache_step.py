"""Training step time with a frozen encoder: from stored encoder outputs vs. from features (CPU).

What a frozen-encoder stage costs per step either way, measured end to end as the trainer does a
step: build the batch (read lilcom features, or float16 encoder outputs, from disk), forward, pruned
RNN-T loss, backward, gradient clipping, AdamW step. Both paths see the same batches (the trainer's
bucketing sampler, fixed seed) and start from the same weights. Also timed: building the cache once.

Data: ``--num-cuts`` utterances of noise audio, 1.5-5 s (the recipe's sentence lengths), with random
transcripts of about 2.5 words/s -- step time depends on shapes, not on content. The model defaults
to the default recipe's Conformer (recipes/medication/conf/schedule/default.yaml); ``--model`` takes
any ModelConfig as JSON, e.g. another encoder family.

    python bench/encoder_cache_step.py [--threads 1 2] [--steps 8]    # JSON -> bench/results/
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthasr.utils.io import atomic_write  # noqa: E402

DEFAULT_MODEL = {"preset": "tiny", "encoder_dim": 128, "num_encoder_layers": 4, "num_heads": 4, "ff_dim": 512,
                 "conv_kernel_size": 15, "decoder_dim": 128, "joiner_dim": 128}
WORDS = ("take two tablets of metformin daily with water before meals call the doctor if the pain gets worse "
         "open the door please the weather is nice today we walked to the station").split()


def make_corpus(root: Path, num_cuts: int, seed: int):
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.utils import fastcopy

    rng = np.random.default_rng(seed)
    cuts = []
    for i in range(num_cuts):
        dur = float(rng.uniform(1.5, 5.0))
        path = root / f"utt{i:04d}.flac"
        sf.write(str(path), (0.05 * rng.standard_normal(int(dur * 16000))).astype(np.float32), 16000)
        rec = Recording.from_file(path, recording_id=f"utt{i:04d}")
        text = " ".join(rng.choice(WORDS, size=max(2, round(2.5 * dur))))
        sup = SupervisionSegment(rec.id, rec.id, 0.0, rec.duration, text=text)
        cuts.append(fastcopy(rec.to_cut(), id=rec.id, supervisions=[sup]))
    return CutSet.from_cuts(cuts)


def time_steps(model, dataset, batches: List[Any], tokenizer, warmup: int, cached: bool) -> Dict[str, Any]:
    """Median seconds per step (batch building + forward/backward/update) over ``batches[warmup:]``."""
    from synthasr.loss import LossConfig
    from synthasr.train.config import OptimConfig
    from synthasr.train.optim import build_optimizer, trainable_parameters

    optimizer = build_optimizer(trainable_parameters(model), OptimConfig(lr=1e-4))
    params = [p for p in model.parameters() if p.requires_grad]
    loss_cfg = LossConfig(kind="pruned", prune_range=5)
    model.train()
    model.encoder.eval()
    load_times, step_times = [], []
    for index, cuts in enumerate(batches):
        t0 = time.perf_counter()
        batch = dataset[(1, index, cuts)]
        t1 = time.perf_counter()
        x = batch["encoder_out" if cached else "features"]
        x_lens = batch["encoder_out_lens" if cached else "feature_lens"]
        extra = {"from_encoder_out": True} if cached else {}
        out = model(x, x_lens, tokenizer.encode(batch["texts"]), loss_cfg, 10_000, **extra)
        (out["loss"] / out["num_frames"]).backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if index >= warmup:
            load_times.append(t1 - t0)
            step_times.append(t2 - t0)
    return {"step_s_median": statistics.median(step_times), "batch_build_s_median": statistics.median(load_times),
            "step_s": step_times}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from synthasr.data.dataset import AsrDataset, EncoderOutDataset, make_sampler
    from synthasr.data.encoder_cache import build_encoder_cache
    from synthasr.data.features import FeatureConfig, compute_fbank
    from synthasr.model import build_model
    from synthasr.tokenizer import Tokenizer, train_bpe
    from synthasr.train.freeze import freeze

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "audio").mkdir()
        raw = make_corpus(root / "audio", args.num_cuts, args.seed)
        torch.set_num_threads(1)
        cuts = compute_fbank(raw, root / "fbank", "bench")
        texts = [c.supervisions[0].text for c in cuts]
        tok = Tokenizer.load(train_bpe(texts, root / "lang", vocab_size=args.vocab_size, hard_vocab_limit=False))
        torch.manual_seed(0)
        model = build_model({**json.loads(args.model), "vocab_size": tok.vocab_size})
        freeze(model, ["encoder"], eval_mode=True)
        sampler = make_sampler(cuts, max_duration=args.max_duration, shuffle=True, seed=0, bucketing=True)
        sampler.set_epoch(1)
        batches = [b for _, b in zip(range(args.steps + args.warmup), sampler)]
        audio_s = statistics.median(sum(c.duration for c in b) for b in batches[args.warmup:])

        torch.set_num_threads(max(args.threads))
        t0 = time.perf_counter()
        cached = build_encoder_cache(model, cuts, root / "cache", FeatureConfig(), max_duration=args.max_duration)
        build_s = time.perf_counter() - t0
        cached_batches = [cached.subset(cut_ids=[c.id for c in b]) for b in batches]

        per_threads = {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            feats = time_steps(copy.deepcopy(model), AsrDataset(FeatureConfig(), spec_augment=None), batches, tok,
                               args.warmup, cached=False)
            cache = time_steps(copy.deepcopy(model), EncoderOutDataset(), cached_batches, tok, args.warmup,
                               cached=True)
            per_threads[str(threads)] = {
                "from_features": feats, "from_cache": cache,
                "speedup": feats["step_s_median"] / cache["step_s_median"],
            }
    return {
        "benchmark": "encoder_cache_step",
        "model": json.loads(args.model),
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "num_cuts": args.num_cuts,
        "audio_seconds": sum(c.duration for c in cuts),
        "max_duration": args.max_duration,
        "audio_seconds_per_step_median": audio_s,
        "measured_steps": args.steps,
        "cache_build_s": build_s,
        "cache_build_threads": max(args.threads),
        "threads": per_threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=json.dumps(DEFAULT_MODEL), help="ModelConfig as JSON (vocab_size is set)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num-cuts", type=int, default=160)
    p.add_argument("--max-duration", type=float, default=60.0)
    p.add_argument("--vocab-size", type=int, default=200)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "encoder_cache_step.json"))
    args = p.parse_args()
    result = run(args)
    with atomic_write(args.out) as f:
        json.dump(result, f, indent=2)
    summary = {t: {"features_s": round(r["from_features"]["step_s_median"], 4),
                   "cache_s": round(r["from_cache"]["step_s_median"], 4), "speedup": round(r["speedup"], 2)}
               for t, r in result["threads"].items()}
    print(json.dumps({"cache_build_s": round(result["cache_build_s"], 2), "steps": summary}, indent=2))


if __name__ == "__main__":
    main()
