"""``synthasr normalize``, ``train-bpe``, ``train-lm``, ``score`` and ``prepare-domain``: thin wrappers over the library."""
from __future__ import annotations

import gzip
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import click

from synthasr.score import ScoreError, compute_wer, read_kaldi_text, write_results
from synthasr.text import NormalizationError, TextFileError, jsonl_record_text, normalize
from synthasr.tokenizer import TokenizerError, train_bpe
from synthasr.utils.io import atomic_write


def _split_id(line: str, kaldi: bool) -> Tuple[Optional[str], str]:
    if not kaldi:
        return None, line
    parts = line.split(maxsplit=1)
    return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")


def _is_jsonl(path: str) -> bool:
    return path.endswith((".jsonl", ".jsonl.gz"))


def _jsonl_text(line: str, where: str) -> Tuple[Optional[str], str]:
    try:
        return jsonl_record_text(line, where)
    except TextFileError as e:
        raise click.ClickException(str(e)) from None


def _normalized_lines(path: str, kaldi: bool, skip_errors: bool) -> Iterator[Tuple[Optional[str], str]]:
    """Yield (utt_id, normalized text) per line; a bad line is fatal unless ``skip_errors``.

    ``*.jsonl`` / ``*.jsonl.gz`` files (the recipe's text splits) are read by their ``text`` field;
    anything else is plain text, or ``utt_id text`` with ``kaldi``. (Normalising a JSON line as
    plain text would train a tokenizer on its keys and ids.)"""
    jsonl = path != "-" and _is_jsonl(path)
    if path == "-":
        stream = sys.stdin
    elif path.endswith(".gz"):
        stream = gzip.open(path, "rt", encoding="utf-8")
    else:
        stream = open(path, encoding="utf-8")
    skipped = 0
    try:
        for line_no, line in enumerate(stream, start=1):
            line = line.rstrip("\n")
            if jsonl:
                if not line.strip():
                    continue
                utt_id, text = _jsonl_text(line, f"{path}:{line_no}")
            else:
                utt_id, text = _split_id(line, kaldi)
            try:
                yield utt_id, normalize(text)
            except NormalizationError as e:
                if not skip_errors:
                    raise click.ClickException(f"{path}:{line_no}: {e}") from None
                skipped += 1
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise click.ClickException(f"{path}: not readable UTF-8 text ({e})") from None
    finally:
        if stream is not sys.stdin:
            stream.close()
    if skipped:
        click.echo(f"{path}: skipped {skipped} line(s) that could not be normalized", err=True)


@click.command("normalize")
@click.argument("input_path", metavar="INPUT", default="-", type=click.Path(allow_dash=True, dir_okay=False))
@click.argument("output_path", metavar="OUTPUT", default="-", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--kaldi", is_flag=True, help="Lines are 'utt_id text'; keep the id, normalize the text.")
@click.option("--skip-errors", is_flag=True, help="Drop lines that cannot be normalized instead of failing.")
def normalize_cmd(input_path: str, output_path: str, kaldi: bool, skip_errors: bool) -> None:
    """Normalize text line by line (INPUT/OUTPUT default to stdin/stdout)."""
    if input_path != "-" and not Path(input_path).is_file():
        raise click.ClickException(f"{input_path}: no such file")
    out_lines = [
        f"{utt_id} {text}".rstrip() if utt_id is not None else text
        for utt_id, text in _normalized_lines(input_path, kaldi, skip_errors)
    ]
    content = "".join(line + "\n" for line in out_lines)
    if output_path == "-":
        click.echo(content, nl=False)
    else:
        with atomic_write(output_path) as f:
            f.write(content)


@click.command("train-bpe")
@click.option("--text", "text_files", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training text: one sentence per line, or JSONL (*.jsonl[.gz], its 'text' field). Repeatable.")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Writes bpe.model and tokens.txt here.")
@click.option("--vocab-size", default=500, show_default=True, type=click.IntRange(min=4))
@click.option("--model-type", default="bpe", show_default=True, type=click.Choice(["bpe", "unigram"]))
@click.option("--character-coverage", default=1.0, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True))
@click.option("--hard-vocab-limit/--no-hard-vocab-limit", default=True, show_default=True,
              help="Fail if the text cannot support --vocab-size (default) or let sentencepiece shrink it.")
@click.option("--kaldi", is_flag=True, help="Lines are 'utt_id text'; the id is dropped.")
@click.option("--skip-errors", is_flag=True, help="Drop lines that cannot be normalized instead of failing.")
def train_bpe_cmd(
    text_files: Tuple[str, ...],
    out_dir: str,
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    hard_vocab_limit: bool,
    kaldi: bool,
    skip_errors: bool,
) -> None:
    """Train a sentencepiece BPE/unigram model (icefall layout: <blk>=0, <sos/eos>=1, <unk>=2)."""
    texts: List[str] = []
    for path in text_files:
        texts.extend(text for _, text in _normalized_lines(path, kaldi, skip_errors))
    try:
        model_path = train_bpe(
            texts, out_dir, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, hard_vocab_limit=hard_vocab_limit,
        )
    except TokenizerError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {model_path} and {Path(out_dir) / 'tokens.txt'} from {len(texts)} lines")


@click.command("train-lm")
@click.option("--bpe-model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The recognizer's bpe.model: the LM's units are its pieces.")
@click.option("--text", "text_files", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Text: one sentence per line, or JSONL (*.jsonl[.gz], its 'text' field). Repeatable.")
@click.option("--terms", "terms_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Term list (first tab-separated column): each term is added as a sentence of its own. Repeatable.")
@click.option("--order", default=4, show_default=True, type=click.IntRange(min=1, max=10))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="ARPA file (.gz compresses).")
@click.option("--dev-text", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Held-out text: print the LM's per-token perplexity on it.")
@click.option("--skip-errors", is_flag=True, help="Drop lines that cannot be normalized instead of failing.")
def train_lm_cmd(bpe_model: str, text_files: Tuple[str, ...], terms_files: Tuple[str, ...], order: int, out_path: str,
                 dev_text: Optional[str], skip_errors: bool) -> None:
    """Estimate a Kneser-Ney token n-gram LM over a BPE model's units, for shallow fusion (ARPA)."""
    from synthasr.lm.ngram import NgramError, estimate_from_text, ngram_counts, perplexity
    from synthasr.tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.load(bpe_model)
    except TokenizerError as e:
        raise click.ClickException(str(e)) from None
    texts: List[str] = []
    for path in text_files:
        texts.extend(text for _, text in _normalized_lines(path, False, skip_errors))
    for path in terms_files:
        texts.extend(_normalized_terms(path, skip_errors))
    try:
        lm = estimate_from_text(texts, tokenizer, order)
        lm.write_arpa(out_path, [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)])
    except NgramError as e:
        raise click.ClickException(str(e)) from None
    counts = ", ".join(f"{n}-grams {c}" for n, c in ngram_counts(lm).items())
    click.echo(f"wrote {out_path} from {len(texts)} sentences: {counts}")
    if dev_text:
        dev = tokenizer.encode([t for _, t in _normalized_lines(dev_text, False, skip_errors) if t])
        click.echo(f"{dev_text}: per-token perplexity {perplexity(lm, dev):.2f} over {len(dev)} sentences")


def _normalized_terms(path: str, skip_errors: bool) -> Iterator[str]:
    """Normalised first column of a term list (blank lines and '#' comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for line_no, line in enumerate(lines, start=1):
        term = line.split("\t", 1)[0].strip()
        if not term or term.startswith("#"):
            continue
        try:
            yield normalize(term)
        except NormalizationError as e:
            if not skip_errors:
                raise click.ClickException(f"{path}:{line_no}: {e}") from None


@click.command("score")
@click.argument("ref_path", metavar="REF", type=click.Path(exists=True, dir_okay=False))
@click.argument("hyp_path", metavar="HYP", type=click.Path(exists=True, dir_okay=False))
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Also write icefall-style recogs/errs/wer-summary files here.")
@click.option("--name", "test_set_name", default="test", show_default=True, help="Test set name for result files.")
@click.option("--suffix", default="score", show_default=True, help="Settings name for result files.")
@click.option("--missing-as-empty", is_flag=True, help="Score REF utterances absent from HYP as empty hypotheses.")
def score_cmd(
    ref_path: str, hyp_path: str, out_dir: Optional[str], test_set_name: str, suffix: str, missing_as_empty: bool
) -> None:
    """Word and character error rates of HYP against REF (kaldi-style 'utt_id text' files)."""
    try:
        refs = read_kaldi_text(ref_path)
        hyps = read_kaldi_text(hyp_path)
        _check_ids(refs, hyps, ref_path, hyp_path, missing_as_empty)
        result = compute_wer((u, refs[u], hyps.get(u, "")) for u in refs)
        if out_dir is not None:
            write_results(out_dir, test_set_name, suffix, result)
    except ScoreError as e:
        raise click.ClickException(str(e)) from None
    w = result.word
    click.echo(
        f"%WER {w.wer:.2f} [ {w.errors} / {w.ref_words}, {w.ins} ins, {w.dels} del, {w.subs} sub ] "
        f"%CER {result.cer:.2f} over {len(result.utts)} utterances"
    )


def _check_ids(refs: dict, hyps: dict, ref_path: str, hyp_path: str, missing_as_empty: bool) -> None:
    extra = [u for u in hyps if u not in refs]
    if extra:
        raise ScoreError(f"{hyp_path}: {len(extra)} utterance id(s) not in {ref_path}, e.g. {extra[0]!r}")
    missing = [u for u in refs if u not in hyps]
    if missing and not missing_as_empty:
        raise ScoreError(
            f"{hyp_path}: {len(missing)} utterance id(s) of {ref_path} missing, e.g. {missing[0]!r} "
            "(use --missing-as-empty to score them as deletions)"
        )


@click.command("prepare-domain")
@click.option("--terms", "terms_path", required=True, type=click.Path(dir_okay=False),
              help="Term list: UTF-8, one term a line; optional TAB columns: spoken form, phonemes.")
@click.option("--domain-text", default=None, type=click.Path(dir_okay=False),
              help="Domain sentences (plain text, one a line, or JSONL with \"text\"): used as they are, mined for terms.")
@click.option("--templates", default=None, type=click.Path(dir_okay=False),
              help="Carrier templates ({term}, {term2}, @slot = a | b) that top every split up to its size.")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Writes terms.tsv, names_used.txt, <prefix>_<split>.jsonl.")
@click.option("--prefix", default="med", show_default=True, help="File and utterance-id prefix of the splits.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--unseen-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Share of the terms held out of all training text (test_unseen only).")
@click.option("--num-train", default=3000, show_default=True, type=click.IntRange(min=0))
@click.option("--num-dev", default=300, show_default=True, type=click.IntRange(min=0))
@click.option("--num-test", default=300, show_default=True, type=click.IntRange(min=0))
@click.option("--num-test-unseen", default=300, show_default=True, type=click.IntRange(min=0))
def prepare_domain_cmd(terms_path: str, domain_text: Optional[str], templates: Optional[str], out_dir: str,
                       prefix: str, seed: int, unseen_fraction: float, num_train: int, num_dev: int,
                       num_test: int, num_test_unseen: int) -> None:
    """Your own domain: a term list (and domain text) -> train/dev/test/test_unseen text for TTS."""
    from synthasr.domain import DomainError, prepare_domain

    sizes = {"train": num_train, "dev": num_dev, "test": num_test, "test_unseen": num_test_unseen}
    try:
        result = prepare_domain(out_dir, sizes, unseen_fraction, seed, terms_path, domain_text, templates, prefix)
    except DomainError as e:
        *first, last = str(e).splitlines()  # one line per problem (the first MAX_REPORTED, then a count)
        for problem in first:
            click.echo(f"Error: {problem}", err=True)
        raise click.ClickException(last) from None
    counts = ", ".join(f"{s} {len(v)}" for s, v in result.splits.items())
    click.echo(f"wrote {out_dir}: {len(result.seen)} seen + {len(result.unseen)} held-out terms; sentences: {counts}")
