"""Real-time factor of greedy and modified beam search for the ``small`` model on one CPU thread.

The model is randomly initialised (RTF depends on shapes, not on weights; a random model emits
tokens at a plausible rate, which is what costs decoder/joiner calls). Input is ~60 s of random
80-dim features split into utterances of ``--utt-seconds``, decoded in one batch per method.
RTF = (encoder + search wall time) / audio seconds. Writes JSON to bench/results/decode_rtf.json.

    python bench/decode_rtf.py [--out PATH] [--seconds 60] [--beam-size 4]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from synthasr.decode.search import greedy_search, modified_beam_search
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode_rtf.json"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--utt-seconds", type=float, default=10.0)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
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
