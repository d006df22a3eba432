"""``synthasr tts-gen`` / ``tts-combine`` / ``tts-voices``: thin click wrappers over :mod:`tts_gen`.

Library errors (bad input, missing engine, unknown voice, too many failures) become one-line
``click.ClickException``s; everything else is the library's job.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from synthasr.config import ConfigError
from tts_gen.engines.base import EngineError, UnknownEngineError, canonical_engine_name, get_engine
from tts_gen.pronounce import PronunciationError
from synthasr.data.shar import DEFAULT_SHARD_SIZE, SharError
from tts_gen.executors import EXECUTORS, ExecutorError, make_executor
from tts_gen.generate import (MAX_CHARS, MAX_WORDS, CombineError, FailureThresholdExceeded, InputError,
                              OutputNotWritableError, ShardSpecError, combine_shards, generate, parse_shard,
                              write_cuts_shar)
from tts_gen.voices import (UnknownVoiceError, Voice, VoicePoolError, VoiceSpecError, build_pools, make_matcher,
                            parse_voices,
                            read_voice_file, sample_from_pools, sample_voices, split_voices, voices_by_engine,
                            write_voice_file)

LIBRARY_ERRORS: Tuple[type, ...] = (
    InputError, ShardSpecError, OutputNotWritableError, CombineError, VoiceSpecError, UnknownVoiceError,
    VoicePoolError, EngineError, UnknownEngineError, ConfigError, PronunciationError, ExecutorError, SharError,
)
DEFAULT_NUM_VOICES = 60


def _engine_list(spec: str) -> List[str]:
    names = [canonical_engine_name(s) for s in spec.split(",") if s.strip()]
    if not names:
        raise click.BadParameter("give at least one engine", param_hint="--engines")
    return list(dict.fromkeys(names))


def _weights(spec: Optional[str]) -> Optional[Dict[str, float]]:
    """``espeak=0.85,piper=0.15`` -> dict; errors name the bad entry."""
    if not spec:
        return None
    out: Dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[canonical_engine_name(name)] = float(value)
        except ValueError:
            raise click.BadParameter(f"bad entry {part!r}: expected ENGINE=WEIGHT", param_hint="--engine-weights")
    return out


def _engine_opts(espeak_binary: Optional[str], piper_voices: Sequence[str], coqui_model: Optional[str],
                 coqui_config: Optional[str]) -> Dict[str, Dict[str, Any]]:
    opts: Dict[str, Dict[str, Any]] = {}
    if espeak_binary:
        opts["espeak"] = {"binary": espeak_binary}
    if piper_voices:
        opts["piper"] = {"voices": list(piper_voices)}
    if coqui_model or coqui_config:
        opts["coqui"] = {"model_path": coqui_model, "config_path": coqui_config}
    return opts


def engine_options(func):
    """Options shared by every command that builds engines."""
    func = click.option("--coqui-config-path", type=click.Path(), help="Coqui config.json (local only).")(func)
    func = click.option("--coqui-model-path", type=click.Path(), help="Coqui checkpoint or model dir (local only).")(func)
    func = click.option("--piper-voice", "piper_voices", multiple=True, type=click.Path(),
                        help="Extra local piper .onnx voice (its .onnx.json beside it). Repeatable.")(func)
    func = click.option("--espeak-binary", default=None, help="espeak-ng executable (default: from PATH).")(func)
    return func


def _build_engines(names: Sequence[str], opts: Dict[str, Dict[str, Any]]):
    return [get_engine(n, **opts.get(n, {})) for n in names]


def _choose_voices(engines_spec: str, num_voices: Optional[int], voices_file: Optional[str],
                   exclude_file: Optional[str], seed: int, weights: Optional[Dict[str, float]],
                   opts: Dict[str, Dict[str, Any]]) -> List[Voice]:
    """Voices for a run: from ``voices_file`` (optionally sub-sampled) or sampled from the engines."""
    exclude = read_voice_file(exclude_file) if exclude_file else []
    excluded = make_matcher(exclude)
    if voices_file:
        voices = parse_voices(read_voice_file(voices_file))
        if not voices:
            raise VoiceSpecError(f"{voices_file}: no voice ids in file")
        clash = [v.id for v in voices if excluded(v)]
        if clash:
            raise VoiceSpecError(f"{voices_file}: voice {clash[0]} is excluded by {exclude_file} ({len(clash)} clashes)")
        if num_voices is not None and num_voices < len(voices):
            voices = sample_from_pools(voices_by_engine(voices), num_voices, seed, weights)
        return voices
    engines = _build_engines(_engine_list(engines_spec), opts)
    return sample_voices(engines, num_voices or DEFAULT_NUM_VOICES, seed, exclude, weights)


@click.command("tts-gen")
@click.argument("text_file", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--domain", required=True, help="Domain tag stored in supervision.custom['domain'].")
@click.option("--prefix", required=True, help="Manifest/audio prefix, e.g. med_train.")
@click.option("--engines", "engines_spec", default="espeak,piper", show_default=True, help="Comma-separated engines to sample voices from (ignored with --voices-file).")
@click.option("--num-voices", type=int, default=None, help=f"Voices to sample (default {DEFAULT_NUM_VOICES}).")
@click.option("--voices-file", type=click.Path(dir_okay=False), help="Voice ids to use (one a line).")
@click.option("--exclude-voices-file", type=click.Path(dir_okay=False),
              help="Voice ids, names or hold-out rules never to use (e.g. the test voices).")
@click.option("--engine-weights", default=None, help="Utterance share per engine, e.g. espeak=0.85,piper=0.15.")
@click.option("--num-jobs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shard", default=None, help="K/N: process block K of N (1-based) for array jobs.")
@click.option("--failure-threshold", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True)
@click.option("--max-words", type=click.IntRange(min=1), default=MAX_WORDS, show_default=True,
              help="Longest utterance in words (after normalization); a longer line is an error.")
@click.option("--max-chars", type=click.IntRange(min=1), default=MAX_CHARS, show_default=True,
              help="Longest utterance in characters (after normalization); a longer line is an error.")
@click.option("--lexicon", type=click.Path(dir_okay=False), default=None,
              help="Pronunciation lexicon TSV: term, engine (espeak|piper), phonemes (espeak-ng mnemonics | IPA).")
@click.option("--pron-variants", type=click.IntRange(min=0), default=0, show_default=True,
              help="Generated pronunciations per term of a line's 'names' with none given (espeak-ng "
                   "varieties + stress shifts); 0: engines' own.")
@click.option("--executor", "executor_kind", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="Where synthesis runs: local process pool, a Dask cluster or Ray (optional extras).")
@click.option("--scheduler", default=None,
              help="Cluster address (dask: tcp://host:8786; ray: ray://host:10001 or auto). Without it: a "
                   "one-machine cluster of --num-jobs workers.")
@click.option("--shar-dir", type=click.Path(file_okay=False), default=None,
              help="Also write the cuts with their audio as lhotse Shar shards here (large-scale training).")
@click.option("--shar-shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Cuts per Shar shard.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@engine_options
def tts_gen(text_file: str, out_dir: str, domain: str, prefix: str, engines_spec: str, num_voices: Optional[int],
            voices_file: Optional[str], exclude_voices_file: Optional[str], engine_weights: Optional[str],
            num_jobs: int, seed: int, shard: Optional[str], failure_threshold: float, max_words: int,
            max_chars: int, lexicon: Optional[str], pron_variants: int, executor_kind: str, scheduler: Optional[str],
            shar_dir: Optional[str], shar_shard_size: int, no_progress: bool, espeak_binary: Optional[str], piper_voices: Tuple[str, ...],
            coqui_model_path: Optional[str],
            coqui_config_path: Optional[str]) -> None:
    """Speak TEXT_FILE (plain lines or JSONL id/text) in many voices into OUT_DIR with lhotse manifests."""
    opts = _engine_opts(espeak_binary, piper_voices, coqui_model_path, coqui_config_path)
    weights = _weights(engine_weights)
    try:
        shard_spec = parse_shard(shard)
        voices = _choose_voices(engines_spec, num_voices, voices_file, exclude_voices_file, seed, weights, opts)
        with make_executor(executor_kind, num_jobs, scheduler) as executor:
            summary = generate(text_file, out_dir, voices, domain=domain, prefix=prefix, num_jobs=num_jobs, seed=seed,
                               shard=shard_spec, failure_threshold=failure_threshold, engine_opts=opts,
                               engine_weights=weights, progress=not no_progress, max_words=max_words,
                               max_chars=max_chars, lexicon=lexicon, pron_variants=pron_variants,
                               executor=executor, shar_dir=shar_dir, shar_shard_size=shar_shard_size)
        write_voice_file(Path(out_dir) / f"{prefix}_voices.txt", voices)
    except FailureThresholdExceeded as e:
        click.echo(e.summary.line())
        raise click.ClickException(str(e)) from None
    except LIBRARY_ERRORS as e:
        raise click.ClickException(str(e)) from None
    click.echo(summary.line())
    if shar_dir:
        click.echo(f"shar {shar_dir}: {summary.utterances} cuts in shards of {shar_shard_size}")


@click.command("tts-combine")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--prefix", required=True)
@click.option("--num-shards", type=click.IntRange(min=1), default=None, help="N (default: detected).")
@click.option("--shar-dir", type=click.Path(file_okay=False), default=None,
              help="Also write the combined cuts with their audio as lhotse Shar shards here.")
@click.option("--shar-shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True)
@click.option("--num-jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Shar writing processes.")
def tts_combine(out_dir: str, prefix: str, num_shards: Optional[int], shar_dir: Optional[str], shar_shard_size: int,
                num_jobs: int) -> None:
    """Merge <prefix>_*.K-of-N shard manifests in OUT_DIR into the final manifests."""
    try:
        result = combine_shards(out_dir, prefix, num_shards)
        shar = write_cuts_shar(result["manifests"]["cuts"], shar_dir, shar_shard_size, num_jobs) if shar_dir else None
    except LIBRARY_ERRORS as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{prefix}: combined {result['shards']} shards, {result['utterances']} utterances, "
               f"{result['hours']:.3f} h, {result['failures']} failures")
    if shar is not None:
        click.echo(_shar_line(shar))


def _shar_line(shar: Dict[str, Any]) -> str:
    return (f"shar {shar['dir']}: {shar['cuts']} cuts in {shar['shards']} shards "
            f"({shar['written']} written, {shar['skipped']} complete from an earlier run)")


@click.group("tts-voices")
def tts_voices() -> None:
    """List, sample and split synthetic voices."""


@tts_voices.command("list")
@click.option("--engines", "engines_spec", default="espeak,piper", show_default=True)
@click.option("--pool", is_flag=True, help="Print every voice id of the sampling pool.")
@engine_options
def voices_list(engines_spec: str, pool: bool, espeak_binary: Optional[str], piper_voices: Tuple[str, ...],
                coqui_model_path: Optional[str], coqui_config_path: Optional[str]) -> None:
    """Engine voices, variants and pool sizes."""
    opts = _engine_opts(espeak_binary, piper_voices, coqui_model_path, coqui_config_path)
    try:
        for engine in _build_engines(_engine_list(engines_spec), opts):
            voices = engine.voice_pool()
            if pool:
                for v in voices:
                    click.echo(v.id)
                continue
            variants = [v for v in engine.list_variants() if v]
            click.echo(f"{engine.name}: {len(voices)} pool voices; voices: {', '.join(engine.list_voices())}")
            if variants:
                click.echo(f"{engine.name}: variants: {', '.join(variants)}")
    except LIBRARY_ERRORS as e:
        raise click.ClickException(str(e)) from None


@tts_voices.command("sample")
@click.option("--engines", "engines_spec", default="espeak,piper", show_default=True)
@click.option("-n", "--num-voices", type=click.IntRange(min=1), default=DEFAULT_NUM_VOICES, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--exclude-voices-file", type=click.Path(dir_okay=False))
@click.option("--engine-weights", default=None)
@click.option("--out", type=click.Path(dir_okay=False), help="Write ids here (default: stdout).")
@engine_options
def voices_sample(engines_spec: str, num_voices: int, seed: int, exclude_voices_file: Optional[str],
                  engine_weights: Optional[str], out: Optional[str], espeak_binary: Optional[str],
                  piper_voices: Tuple[str, ...], coqui_model_path: Optional[str], coqui_config_path: Optional[str]) -> None:
    """Seeded sample of distinct voices."""
    opts = _engine_opts(espeak_binary, piper_voices, coqui_model_path, coqui_config_path)
    try:
        voices = _choose_voices(engines_spec, num_voices, None, exclude_voices_file, seed, _weights(engine_weights), opts)
        _emit(voices, out)
    except LIBRARY_ERRORS as e:
        raise click.ClickException(str(e)) from None


@tts_voices.command("split")
@click.option("--engines", "engines_spec", default="espeak,piper", show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True)
@click.option("--holdout", multiple=True, help="Rule held out for test, e.g. espeak:name=en-gb-scotland, piper:rate=1.15..1.3.")
@click.option("--exclude", multiple=True,
              help="Voice id, base or rule kept out of both lists (e.g. espeak:variant=f3, espeak:rate=160..999): "
                   "voices a real-speech recognizer cannot read.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--train-out", type=click.Path(dir_okay=False), required=True)
@click.option("--test-out", type=click.Path(dir_okay=False), required=True)
@engine_options
def voices_split(engines_spec: str, test_fraction: float, holdout: Tuple[str, ...], exclude: Tuple[str, ...],
                 seed: int, train_out: str, test_out: str, espeak_binary: Optional[str],
                 piper_voices: Tuple[str, ...], coqui_model_path: Optional[str],
                 coqui_config_path: Optional[str]) -> None:
    """Split the engines' pools (minus ``--exclude``) into disjoint train/test voice lists."""
    opts = _engine_opts(espeak_binary, piper_voices, coqui_model_path, coqui_config_path)
    try:
        engines = _build_engines(_engine_list(engines_spec), opts)
        pool = [v for voices in build_pools(engines, exclude).values() for v in voices]
        split = split_voices(pool, test_fraction, seed, holdout)
        write_voice_file(train_out, split.train)
        write_voice_file(test_out, split.test)
    except LIBRARY_ERRORS as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps({"train": len(split.train), "test": len(split.test),
                           "test_bases": len({v.base for v in split.test})}))


def _emit(voices: Sequence[Voice], out: Optional[str]) -> None:
    if out:
        write_voice_file(out, voices)
        click.echo(f"wrote {len(voices)} voices to {out}")
    else:
        for v in voices:
            click.echo(v.id)
