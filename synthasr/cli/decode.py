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


def _fusion(bundle, lm_path: Optional[str], scale: float, token_bonus: float):
    from synthasr.decode.search import ShallowFusion
    from synthasr.lm.ngram import NgramError

    if lm_path is None:
        return None
    try:
        return ShallowFusion(bundle.language_model(lm_path), scale, token_bonus)
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
           lm_token_bonus: float, device: str, num_threads: Optional[int], chunk_seconds: float) -> None:
    """Transcribe audio files; prints 'PATH<TAB>TEXT' per file (unreadable files: error on stderr,
    exit status 1 after the others are decoded)."""
    import warnings

    bundle = _load_bundle(model_path, device, num_threads)
    graph = _context_graph(bundle, _hotword_list(hotwords, hotwords_file), hotword_score)
    fusion = _fusion(bundle, lm_path, lm_scale, lm_token_bonus)
    if graph is not None or fusion is not None:
        method = "modified_beam_search"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = bundle.transcribe(list(audio), method=method, beam_size=beam_size, context_graph=graph,
                                  chunk_seconds=chunk_seconds, lm=fusion.lm if fusion else None,
                                  lm_scale=lm_scale, lm_token_bonus=lm_token_bonus)
    for w in caught:
        click.echo(f"error: {w.message}", err=True)
    for path, text in zip(audio, texts):
        if text is not None:
            click.echo(f"{path}\t{text}")
    if any(t is None for t in texts):
        raise SystemExit(1)


@click.command("evaluate")
@_with_common
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="lhotse CutSet manifest (.jsonl.gz).")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False))
@click.option("--name", "test_set_name", required=True, help="Test set name used in result file names.")
@click.option("--suffix", default=None, help="Setting name in result files (default: method[+beam]).")
@click.option("--max-duration", type=click.FloatRange(min=1.0), default=300.0, show_default=True)
@click.option("--terms", "terms_file", type=click.Path(dir_okay=False), default=None,
              help="Term list (one per line, first tab-separated column) scored for recall/precision.")
@click.option("--terms-group-column", type=click.IntRange(min=2), default=None,
              help="1-based column of --terms holding the group recall is split by (3 for names_used.txt).")
@click.option("--breakdown", default=None, metavar="TAG",
              help="Also score per value of this cut tag (e.g. engine): wer-by-TAG-*.txt.")
def evaluate(model_path: str, method: str, beam_size: int, hotwords: Tuple[str, ...], hotwords_file: Optional[str],
             hotword_score: float, lm_path: Optional[str], lm_scale: float, lm_token_bonus: float, device: str,
             num_threads: Optional[int],
             cuts_path: str, out_dir: str,
             test_set_name: str, suffix: Optional[str], max_duration: float, terms_file: Optional[str],
             terms_group_column: Optional[int], breakdown: Optional[str]) -> None:
    """Decode a CutSet, write recogs/errs/wer-summary (+ terms) files to OUT_DIR and print the WER."""
    from lhotse import load_manifest_lazy

    from synthasr.decode.evaluation import EvaluateError
    from synthasr.decode.evaluation import evaluate as run_evaluate
    from synthasr.score import ScoreError, TermList

    if terms_group_column is not None and terms_file is None:
        raise click.UsageError("--terms-group-column needs --terms")
    try:
        terms = TermList.from_file(terms_file, terms_group_column) if terms_file else None
    except ScoreError as e:
        raise click.ClickException(str(e)) from None
    bundle = _load_bundle(model_path, device, num_threads)
    graph = _context_graph(bundle, _hotword_list(hotwords, hotwords_file), hotword_score)
    fusion = _fusion(bundle, lm_path, lm_scale, lm_token_bonus)
    if graph is not None or fusion is not None:
        method = "modified_beam_search"
    try:
        cuts = load_manifest_lazy(cuts_path)
    except Exception as e:  # lhotse raises assorted errors for bad manifests
        raise click.ClickException(f"{cuts_path}: cannot read cuts: {str(e).splitlines()[0] if str(e) else e}") from None
    try:
        result = run_evaluate(bundle.model, bundle.tokenizer, cuts, out_dir, test_set_name, method=method,
                              beam_size=beam_size, device=device, max_duration=max_duration,
                              feature_config=bundle.feature_config, context_graph=graph, suffix=suffix, terms=terms,
                              breakdown=breakdown, fusion=fusion)
    except EvaluateError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{test_set_name}\t{result.wer:.2f}% WER ({result.word.ref_words} words) -> {Path(out_dir)}")
    if result.terms is not None:
        t = result.terms.total
        click.echo(f"{test_set_name}\tterm recall {_percent(t.recall)} ({t.hits}/{t.ref}), precision "
                   f"{_percent(t.precision)} ({t.false_alarms} false alarms)")
    for value, sub in sorted(result.breakdown.items()):
        recall = "" if sub.terms is None else f", term recall {_percent(sub.terms.total.recall)}"
        click.echo(f"{test_set_name}\t[{breakdown}={value}] {sub.wer:.2f}% WER ({len(sub.utts)} utterances){recall}")


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}%"
