#!/usr/bin/env python3
"""What Whisper's 30-second padding does to a SynthASR model's WER and encoder time (issue 10).

Whisper was trained on 30-s windows: audio zero-padded to 30 s, every attention layer seeing all
1500 positions. SynthASR runs its Whisper encoder on the utterance alone (variable length, no
padding), which is what makes it cheap on a CPU. This tool decodes a manifest both ways with the same
model and greedy search:

* ``variable``: features of the utterance, as training and ``synthasr.decode`` compute them;
* ``padded30``: features of the utterance zero-padded to 30 s (3000 frames; Whisper's log-mel clamp
  then sees the padding too, as in Whisper), the encoder run over the whole window with no mask, and
  its output cut back to the utterance's frames before the search.

    python tools/padding_effect.py --model exp/default/general/final.pt \\
        --cuts data/default/fbank/general_real_cuts_fbank.jsonl.gz --out padding.json [--limit N]

Writes JSON: WER per condition, the encoder's CPU seconds per condition and their ratio, utterances
skipped (longer than 30 s). Audio is read from the cuts' recordings (features are recomputed).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import click
import numpy as np
import torch

WINDOW_SECONDS = 30.0


def _encode(model, feats: torch.Tensor, length: int) -> Tuple[torch.Tensor, torch.Tensor, float]:
    start = time.process_time()
    enc, enc_lens = model.encode(feats[None], torch.tensor([length]))
    return enc, enc_lens, time.process_time() - start


def decode_both(bundle, samples: np.ndarray, rate: int) -> Tuple[str, str, float, float]:
    """(variable-length text, padded-window text, encoder CPU seconds of each)."""
    from synthasr.decode.search import greedy_search

    model, unk = bundle.model, bundle.tokenizer.unk_id
    feats = bundle._features(samples)
    enc, enc_lens, t_var = _encode(model, feats, feats.size(0))
    text_var = bundle.tokenizer.decode(greedy_search(model, enc, enc_lens, unk_id=unk))[0]

    window = int(WINDOW_SECONDS * rate)
    padded = np.pad(samples, (0, window - len(samples)))
    feats_pad = bundle._features(padded)[: int(WINDOW_SECONDS * 100)]
    enc_pad, _, t_pad = _encode(model, feats_pad, feats_pad.size(0))
    keep = model.encoder.output_lengths(torch.tensor([feats.size(0)]))
    text_pad = bundle.tokenizer.decode(greedy_search(model, enc_pad[:, : int(keep[0])], keep, unk_id=unk))[0]
    return text_var, text_pad, t_var, t_pad


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N cuts only.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads.")
def main(model_path: str, cuts_path: str, out: Path, limit: Optional[int], threads: Optional[int]) -> None:
    """Decode CUTS with and without Whisper's 30-s padding; write the WERs and encoder times to OUT."""
    from lhotse import load_manifest_lazy

    from synthasr.decode.bundle import ASRBundle
    from synthasr.score import compute_wer
    from synthasr.utils.io import atomic_write

    if threads:
        torch.set_num_threads(threads)
    bundle = ASRBundle.from_checkpoint(model_path)
    if getattr(bundle.model.encoder, "n_ctx", None) is None:
        raise click.ClickException(f"{model_path}: not a Whisper-encoder model (no 30-s window to pad to)")
    rate = bundle.feature_config.sampling_rate
    pairs: Dict[str, List[Tuple[str, str, str]]] = {"variable": [], "padded30": []}
    seconds = {"variable": 0.0, "padded30": 0.0}
    skipped, audio_seconds = 0, 0.0
    with torch.inference_mode():
        for k, cut in enumerate(load_manifest_lazy(cuts_path)):
            if limit is not None and k >= limit:
                break
            samples = bundle.load_audio(cut.load_audio()[0], sample_rate=cut.sampling_rate)
            if len(samples) > WINDOW_SECONDS * rate:
                skipped += 1
                continue
            ref = " ".join(s.text or "" for s in cut.supervisions)
            text_var, text_pad, t_var, t_pad = decode_both(bundle, samples, rate)
            pairs["variable"].append((cut.id, ref, text_var))
            pairs["padded30"].append((cut.id, ref, text_pad))
            seconds["variable"] += t_var
            seconds["padded30"] += t_pad
            audio_seconds += len(samples) / rate
    result = {
        "model": str(model_path), "cuts": str(cuts_path), "utterances": len(pairs["variable"]),
        "skipped_longer_than_30s": skipped, "audio_seconds": round(audio_seconds, 1),
        "threads": torch.get_num_threads(),
        "wer": {name: round(compute_wer(p).wer, 2) for name, p in pairs.items()},
        "encoder_cpu_seconds": {name: round(s, 2) for name, s in seconds.items()},
        "padded_over_variable_time": round(seconds["padded30"] / max(seconds["variable"], 1e-9), 2),
    }
    with atomic_write(out) as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
