"""Real-time factor of greedy and modified beam search for the ``small`` model on one CPU thread.

The model is randomly initialised (RTF depends on shapes, not on weights; a random model emits
tokens at a plausible rate, which is what costs decoder/joiner calls). Input is ~60 s of random
80-dim features split into utterances of ``--utt-seconds``, decoded in one batch per method.
RTF = (encoder + search wall time) / audio seconds. Writes JSON to bench/results/decode_rtf.json.

Shallow fusion (``--lm-order`` > 0): modified beam search again with a Kneser-Ney token n-gram
(:mod:`synthasr.lm.ngram`) estimated from ``--lm-sentences`` Zipf-distributed random token sentences
(a table of realistic size: the default recipe's 4-gram holds ~1M n-grams), reported as the ratio
of its time to plain beam search in the same run.

    python bench/decode_rtf.py [--out PATH] [--seconds 60] [--beam-size 4] [--lm-order 4]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from synthasr.decode.search import ShallowFusion, greedy_search, modified_beam_search
from synthasr.model import build_model, parameter_counts
from synthasr.utils.io import atomic_write

GREEDY_TARGET_RTF = 0.02


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _zipf_sentences(num: int, vocab_size: int, seed: int):
    """Token-id sentences whose unigram counts fall off like text's (Zipf, exponent 1.1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size - 2, dtype=np.float64)
    probs = ranks ** -1.1 / (ranks ** -1.1).sum()
    lengths = rng.integers(4, 25, size=num)
    return [(rng.choice(len(ranks), size=int(n), p=probs) + 3).tolist() for n in lengths]


def _fusion_row(args, run, beam_s: float, audio_seconds: float):
    from synthasr.lm.ngram import estimate_kneser_ney, ngram_counts

    start = time.perf_counter()
    lm = estimate_kneser_ney(_zipf_sentences(args.lm_sentences, args.vocab_size, seed=0), args.lm_order,
                             args.vocab_size)
    build_s = time.perf_counter() - start
    fusion = ShallowFusion(lm, scale=0.5, token_bonus=2.0)
    fused_s = _time(run(lambda m, e, l: modified_beam_search(m, e, l, beam_size=args.beam_size, fusion=fusion)), 1)
    return {"lm_order": args.lm_order, "ngrams": sum(ngram_counts(lm).values()), "lm_build_seconds": round(build_s, 2),
            "seconds": round(fused_s, 4), "rtf": round(fused_s / audio_seconds, 5),
            "ratio_to_modified_beam_search": round(fused_s / beam_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode_rtf.json"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--utt-seconds", type=float, default=10.0)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lm-order", type=int, default=4, help="0: no shallow-fusion row")
    parser.add_argument("--lm-sentences", type=int, default=50000)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model({"preset": "small", "vocab_size": args.vocab_size}).eval()
    num_utts = max(1, round(args.seconds / args.utt_seconds))
    frames = int(args.utt_seconds * 100)
    x = torch.randn(num_utts, frames, 80)
    x_lens = torch.full((num_utts,), frames, dtype=torch.int64)
    audio_seconds = num_utts * frames / 100

    def run(search):
        def go():
            with torch.inference_mode():
                enc, enc_lens = model.encode(x, x_lens)
                return search(model, enc, enc_lens)
        return go

    with torch.inference_mode():
        enc, enc_lens = model.encode(x, x_lens)
        tokens_greedy = sum(len(h) for h in greedy_search(model, enc, enc_lens))
    with torch.inference_mode():
        encoder_s = _time(lambda: model.encode(x, x_lens), args.repeats)
    greedy_s = _time(run(greedy_search), args.repeats)
    beam_s = _time(run(lambda m, e, l: modified_beam_search(m, e, l, beam_size=args.beam_size)), 1)
    fused = _fusion_row(args, run, beam_s, audio_seconds) if args.lm_order > 0 else None

    result = {
        "model": "small (random init)",
        "parameters": parameter_counts(model),
        "threads": 1,
        "audio_seconds": audio_seconds,
        "utterances": num_utts,
        "encoder_seconds": round(encoder_s, 4),
        "greedy_search": {"seconds": round(greedy_s, 4), "rtf": round(greedy_s / audio_seconds, 5),
                          "tokens_emitted": tokens_greedy},
        "modified_beam_search": {"beam_size": args.beam_size, "seconds": round(beam_s, 4),
                                 "rtf": round(beam_s / audio_seconds, 5)},
        "modified_beam_search_lm": fused,
        "target_greedy_rtf": GREEDY_TARGET_RTF,
        "greedy_meets_target": greedy_s / audio_seconds <= GREEDY_TARGET_RTF,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    with atomic_write(args.out) as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
