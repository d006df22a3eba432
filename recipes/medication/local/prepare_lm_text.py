#!/usr/bin/env python3
"""Medication recipe, stage 9: the text the shallow-fusion LM is estimated from (``lm_text.txt``).

Why: the transducer learned spelling from the few thousand sentences that were spoken; a team has far
more text than that. The LM text is, in this order, without duplicates:

* the general-domain pool ``local/prepare_text.py`` draws its splits from (fortunes + WordNet
  examples, same reading and filters: no drug name as a word), when the Debian packages are there;
* ``general_train.jsonl`` (with ``--general-corpus``, a real corpus's transcripts) and ``med_train.jsonl``
  (the domain sentences, the user's own with ``--domain-text``);

and never a sentence of a dev/test split or of the real-speech test set (exact matches removed), so
the LM cannot have memorised what is scored. The term list goes to ``synthasr train-lm --terms`` on its
own, so held-out terms, which no utterance speaks, are spelled in the LM: text-only knowledge.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Iterator, List, Set

import click

from synthasr.text import TextFileError, read_jsonl_texts
from synthasr.utils.io import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare_text as P  # noqa: E402  (the recipe's own text module: same pool, same filters)

HELD_OUT_SPLITS = ("general_dev", "general_test", "med_dev", "med_test", "med_test_unseen")
TRAIN_SPLITS = ("general_train", "med_train")


def jsonl_texts(path: Path) -> Iterator[str]:
    """The ``text`` field of each line of a (possibly gzipped) JSONL file."""
    try:
        for _, _, text in read_jsonl_texts(path):
            yield text
    except TextFileError as e:
        raise click.ClickException(str(e)) from None


def held_out_sentences(text_dir: Path, real_dir: Path) -> Set[str]:
    out: Set[str] = set()
    for split in HELD_OUT_SPLITS:
        path = text_dir / f"{split}.jsonl"
        if path.is_file():
            out.update(jsonl_texts(path))
    for path in sorted(real_dir.glob("*.jsonl")):  # the real-speech test set's transcripts
        out.update(jsonl_texts(path))
    return out


def banned_words(text_dir: Path) -> Set[str]:
    """Every qualifying drug name (``medication_names.txt``), else the names this run used."""
    for name in ("medication_names.txt", "names_used.txt"):
        path = text_dir / name
        if path.is_file():
            return {line.split("\t", 1)[0] for line in path.read_text(encoding="utf-8").splitlines() if line}
    return set()


def general_pool(fortune_dir: Path, wordnet_dir: Path, banned: Set[str]) -> List[str]:
    """The general-domain pool of prepare_text.py (empty when its Debian packages are missing)."""
    try:
        pool = P.normalized_sentences(P.fortune_sentences(fortune_dir), "fortunes") + P.normalized_sentences(
            P.wordnet_examples(wordnet_dir), "wordnet")
    except P.TextPrepError as e:
        click.echo(f"prepare_lm_text: no general pool ({e}); using the training splits only", err=True)
        return []
    return [text for text, _, _ in pool if not banned.intersection(text.split())]


def lm_sentences(parts: Iterable[Iterable[str]], held_out: Set[str]) -> List[str]:
    seen: Set[str] = set()
    out = []
    for part in parts:
        for text in part:
            if text and text not in seen and text not in held_out:
                seen.add(text)
                out.append(text)
    return out


@click.command()
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The recipe's data/<config> (reads text/ and real/).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-general-pool", is_flag=True, help="Only the training splits (no fortunes/WordNet pool).")
@click.option("--fortune-dir", type=click.Path(path_type=Path), default=P.FORTUNES_DIR, show_default=True)
@click.option("--wordnet-dir", type=click.Path(path_type=Path), default=P.WORDNET_DIR, show_default=True)
def main(data_dir: Path, out_path: Path, no_general_pool: bool, fortune_dir: Path, wordnet_dir: Path) -> None:
    text_dir = data_dir / "text"
    missing = [s for s in TRAIN_SPLITS if not (text_dir / f"{s}.jsonl").is_file()]
    if missing:
        raise click.ClickException(f"{text_dir}: no {missing[0]}.jsonl (run stage 0 first)")
    held_out = held_out_sentences(text_dir, data_dir / "real")
    pool = [] if no_general_pool else general_pool(fortune_dir, wordnet_dir, banned_words(text_dir))
    parts = [pool] + [list(jsonl_texts(text_dir / f"{s}.jsonl")) for s in TRAIN_SPLITS]
    sentences = lm_sentences(parts, held_out)
    with atomic_write(out_path) as f:
        f.write("".join(s + "\n" for s in sentences))
    click.echo(f"prepare_lm_text: {len(sentences)} sentences ({len(pool)} from the general pool) -> {out_path}; "
               f"{len(held_out)} dev/test sentences kept out")


if __name__ == "__main__":
    main()
