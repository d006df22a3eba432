"""``synthasr decode`` (audio files -> text) and ``synthasr evaluate`` (CutSet -> WER + result files)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import click

_METHODS = click.Choice(["greedy_search", "modified_beam_search"])


def _hotword_list(hotwords: Sequence[str], hotwords_file: Optional[str]) -> List[str]:
    from synthasr.decode.context_graph import read_hotwords_file

    items = list(hotwords)
    if hotwords_file:
        try:
            items += read_hotwords_file(hotwords_file)
        except (OSError, UnicodeDecodeError) as e:
            raise click.ClickException(f"{hotwords_file}: cannot read hotwords: {e}") from None
    return items


def _load_bundle(model: str, device: str, num_threads: Optional[int]):
    from synthasr.checkpoint import CheckpointError
    from synthasr.decode.bundle import load_model

    try:
        return load_model(model, device=device, num_threads=num_threads)
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None


def _fusion(bundle, lm_path: Optional[str], scale: float, token_bonus: float, ilm_scale: float = 0.0):
    from synthasr.decode.search import ShallowFusion
    from synthasr.lm.ngram import NgramError

    if lm_path is None:
        if ilm_scale:
            raise click.UsageError("--ilm-scale needs --lm (it corrects the external LM's fusion)")
        return None
    try:
        return ShallowFusion(bundle.language_model(lm_path), scale, token_bonus, ilm_scale)
    except NgramError as e:
        raise click.ClickException(str(e)) from None


def _context_graph(bundle, hotwords: List[str], score: float):
    from synthasr.decode.context_graph import HotwordError

    try:
        return bundle.context_graph(hotwords, score) if hotwords else None
    except HotwordError as e:
        raise click.ClickException(str(e)) from None


_common = [
    click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
                 help="SynthASR checkpoint (e.g. exp/pretrained.pt)."),
    click.option("--method", type=_METHODS, default="greedy_search", show_default=True),
    click.option("--beam-size", type=click.IntRange(min=1), default=4, show_default=True),
    click.option("--hotword", "hotwords", multiple=True, help="Phrase to bias toward ('phrase' or 'phrase:score')."),
    click.option("--hotwords-file", type=click.Path(dir_okay=False), help="One hotword per line."),
    click.option("--hotword-score", type=float, default=0.5, show_default=True, help="Boost per token."),
    click.option("--lm", "lm_path", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="Token n-gram LM (ARPA[.gz] from `synthasr train-lm`) for shallow fusion; implies modified_beam_search."),
    click.option("--lm-scale", type=click.FloatRange(min=0.0), default=0.5, show_default=True,
                 help="Weight of the LM's log-probabilities (with --lm)."),
    click.option("--lm-token-bonus", type=float, default=2.0, show_default=True,
                 help="Score added per emitted token (with --lm): offsets the LM's per-token cost."),
    click.option("--ilm-scale", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
                 help="Weight of the model's internal LM estimate subtracted per token (with --lm; ILME)."),
    click.option("--device", default="cpu", show_default=True),
    click.option("--num-threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads."),
]


def _with_common(fn):
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command("decode")
@click.argument("audio", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_with_common
@click.option("--chunk-seconds", type=click.FloatRange(min=0.5), default=30.0, show_default=True)
def decode(audio: Tuple[str, ...], model_path: str, method: str, beam_size: int, hotwords: Tuple[str, ...],
           hotwords_file: Optional[str], hotword_score: float, lm_path: Optional[str], lm_scale: float,
           lm_token_bonus: float, ilm_scale: float, device: str, num_threads: Optional[int],
           chunk_seconds: float) -> None:
    """Transcribe audio files; prints 'PATH<TAB>TEXT' per file (unreadable files: error on stderr,
    exit status 1 after the others are decoded)."""
    import warnings

    bundle = _load_bundle(model_path, device, num_threads)
    graph = _context_graph(bundle, _hotword_list(hotwords, hotwords_file), hotword_score)
    fusion = _fusion(bundle, lm_path, lm_scale, lm_token_bonus, ilm_scale)
    if graph is not None or fusion is not None:
        method = "modified_beam_search"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = bundle.transcribe(list(audio), method=method, beam_size=beam_size, context_graph=graph,
                                  chunk_seconds=chunk_seconds, lm=fusion.lm if fusion else None,
                                  lm_scale=lm_scale, lm_token_bonus=lm_token_bonus, ilm_scale=ilm_scale)
    for w in caught:
        click.echo(f"error: {w.message}", err=True)
    for path, text in zip(audio, texts):
        if text is not None:
            click.echo(f"{path}\t{text}")
    if any(t is None for t in texts):
        raise SystemExit(1)


DECODINGS = ("plain", "hotwords", "lm", "lm-hotwords")


@click.command("evaluate")
@_with_common
@click.option("--cuts", "cuts_paths", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="lhotse CutSet manifest (.jsonl.gz); repeat with --name for several sets.")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False))
@click.option("--name", "test_set_names", required=True, multiple=True,
              help="Test set name used in result file names, one per --cuts.")
@click.option("--suffix", default=None,
              help="Setting name in result files (default: method[+beam]); with --decoding the stem each "
                   "decoding's tag is appended to (default: the method).")
@click.option("--decoding", "decodings", multiple=True, type=click.Choice(DECODINGS),
              help="Search each set this way; repeat to compare settings from one encoder pass per set "
                   "(results named SUFFIX, SUFFIX-hotwords, SUFFIX-lm, SUFFIX-lm-hotwords). "
                   "Default: the one decoding the given options imply.")
@click.option("--max-duration", type=click.FloatRange(min=1.0), default=300.0, show_default=True)
@click.option("--terms", "terms_file", type=click.Path(dir_okay=False), default=None,
              help="Term list (one per line, first tab-separated column) scored for recall/precision.")
@click.option("--terms-group-column", type=click.IntRange(min=2), default=None,
              help="1-based column of --terms holding the group recall is split by (3 for names_used.txt).")
@click.option("--breakdown", default=None, metavar="TAG",
              help="Also score per value of this cut tag (e.g. engine): wer-by-TAG-*.txt.")
def evaluate(model_path: str, method: str, beam_size: int, hotwords: Tuple[str, ...], hotwords_file: Optional[str],
             hotword_score: float, lm_path: Optional[str], lm_scale: float, lm_token_bonus: float, ilm_scale: float,
             device: str, num_threads: Optional[int], cuts_paths: Tuple[str, ...], out_dir: str,
             test_set_names: Tuple[str, ...], suffix: Optional[str], decodings: Tuple[str, ...], max_duration: float,
             terms_file: Optional[str], terms_group_column: Optional[int], breakdown: Optional[str]) -> None:
    """Decode CutSets, write recogs/errs/wer-summary (+ terms) files to OUT_DIR and print the WERs.

    Each set is encoded once and searched once per --decoding: the model, the LM and the encoder
    outputs are loaded or computed once for every comparison."""
    from synthasr.decode.evaluation import EvaluateError, evaluate_decodings
    from synthasr.score import ScoreError, TermList

    if len(cuts_paths) != len(test_set_names):
        raise click.UsageError(f"give one --name per --cuts ({len(cuts_paths)} --cuts, {len(test_set_names)} --name)")
    if len(set(test_set_names)) != len(test_set_names):
        raise click.UsageError(f"--name values must differ, got {', '.join(test_set_names)}")
    if terms_group_column is not None and terms_file is None:
        raise click.UsageError("--terms-group-column needs --terms")
    hotword_list = _hotword_list(hotwords, hotwords_file)
    for d in decodings:
        if "hotwords" in d and not hotword_list:
            raise click.UsageError(f"--decoding {d} needs --hotword or --hotwords-file")
        if "lm" in d.split("-") and lm_path is None:
            raise click.UsageError(f"--decoding {d} needs --lm")
    try:
        terms = TermList.from_file(terms_file, terms_group_column) if terms_file else None
    except ScoreError as e:
        raise click.ClickException(str(e)) from None
    test_sets = [(name, _read_test_set(path, name, breakdown)) for path, name in zip(cuts_paths, test_set_names)]
    bundle = _load_bundle(model_path, device, num_threads)
    graph = _context_graph(bundle, hotword_list, hotword_score)
    fusion = _fusion(bundle, lm_path, lm_scale, lm_token_bonus, ilm_scale)
    try:
        plan = _decodings(decodings, method, beam_size, graph, fusion, suffix)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    for test_set_name, cuts in test_sets:
        try:
            results = evaluate_decodings(bundle.model, bundle.tokenizer, cuts, out_dir, test_set_name, plan,
                                         device=device, max_duration=max_duration,
                                         feature_config=bundle.feature_config, terms=terms, breakdown=breakdown)
        except EvaluateError as e:
            raise click.ClickException(str(e)) from None
        for setting, result in results.items():
            _echo_result(test_set_name if len(plan) == 1 else f"{test_set_name} {setting}", result, out_dir, breakdown)


def _read_test_set(cuts_path: str, name: str, breakdown: Optional[str]):
    """One --cuts manifest (lazy), checked before the model loads or any set is decoded: an unreadable
    manifest, or a set without the --breakdown tag, fails at once instead of after the sets before it."""
    from lhotse import load_manifest_lazy

    from synthasr.data.tags import TagError, tag_values

    try:
        cuts = load_manifest_lazy(cuts_path)
        if breakdown is not None:
            tag_values(cuts, breakdown)
    except TagError as e:
        raise click.ClickException(f"{name} ({cuts_path}): cannot break results down by {breakdown!r}: {e}") from None
    except Exception as e:  # lhotse raises assorted errors for bad manifests
        raise click.ClickException(f"{cuts_path}: cannot read cuts: {str(e).splitlines()[0] if str(e) else e}") from None
    return cuts


def _decodings(requested: Sequence[str], method: str, beam_size: int, graph, fusion, suffix: Optional[str]):
    """The :class:`Decoding` list for ``--decoding`` (or, without it, the one the options imply)."""
    from synthasr.decode.evaluation import Decoding, default_suffix

    if not requested:
        if graph is not None or fusion is not None:
            method = "modified_beam_search"
        return [Decoding(suffix or default_suffix(method, beam_size, graph, fusion), method, beam_size, graph, fusion)]
    plan = []
    for d in dict.fromkeys(requested):
        use_lm, use_hotwords = "lm" in d.split("-"), "hotwords" in d
        search = "modified_beam_search" if (use_lm or use_hotwords) else method
        tag = "" if d == "plain" else f"-{d}"
        plan.append(Decoding(f"{suffix or method}{tag}", search, beam_size, graph if use_hotwords else None,
                             fusion if use_lm else None))
    return plan


def _echo_result(label: str, result, out_dir: str, breakdown: Optional[str]) -> None:
    click.echo(f"{label}\t{result.wer:.2f}% WER ({result.word.ref_words} words) -> {Path(out_dir)}")
    if result.terms is not None:
        t = result.terms.total
        click.echo(f"{label}\tterm recall {_percent(t.recall)} ({t.hits}/{t.ref}), precision "
                   f"{_percent(t.precision)} ({t.false_alarms} false alarms)")
    for value, sub in sorted(result.breakdown.items()):
        recall = "" if sub.terms is None else f", term recall {_percent(sub.terms.total.recall)}"
        click.echo(f"{label}\t[{breakdown}={value}] {sub.wer:.2f}% WER ({len(sub.utts)} utterances){recall}")


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}%"
