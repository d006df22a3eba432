"""WER/CER scoring by Levenshtein alignment, and icefall-style result files.

Alignment uses ``kaldialign`` (Kaldi's Levenshtein alignment, C++) when it is installed, and an
equivalent pure-Python dynamic program otherwise. The Python traceback breaks ties the same way
(insertion, then deletion, then match/substitution, walking back from the end), so both backends give
identical alignments and therefore identical error counts; the tests check this on random inputs.

References and hypotheses both go through :func:`synthasr.text.normalize` before scoring, the same
normalizer that produced the training transcripts, so formatting (``20mg`` vs ``twenty milligrams``)
is never counted as an error.

CER is computed on the normalized text with spaces EXCLUDED (characters of the words only), so a
word-boundary-only difference ("pain killer" vs "painkiller") costs zero characters.

Files written by :func:`write_results` (atomically), following icefall's names and layout:
``recogs-{name}-{suffix}.txt``, ``errs-{name}-{suffix}.txt``, ``wer-summary-{name}.txt``, plus
``wer-{name}-{suffix}.json`` with the numbers for the report stage.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from synthasr.text import NormalizationError, normalize
from synthasr.utils.io import atomic_write

try:  # optional fast path
    import kaldialign as _kaldialign
except ImportError:  # pragma: no cover - exercised by forcing backend="python" in tests
    _kaldialign = None

__all__ = [
    "ScoreError",
    "ErrorStats",
    "UttResult",
    "WerResult",
    "align",
    "compute_wer",
    "write_results",
    "read_kaldi_text",
    "EPS",
]

EPS = "*"  # how an insertion/deletion slot is printed in result files
Pair = Tuple[Optional[str], Optional[str]]


class ScoreError(ValueError):
    """Bad scoring input (duplicate/missing utterance ids, unnormalizable text, bad file line)."""


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------


def align(ref: Sequence[str], hyp: Sequence[str], backend: str = "auto") -> List[Pair]:
    """Minimum-edit-distance alignment; ``(ref, None)`` is a deletion, ``(None, hyp)`` an insertion.

    ``backend``: ``"auto"`` (kaldialign if installed), ``"kaldialign"`` or ``"python"``.
    """
    ref, hyp = list(ref), list(hyp)
    if backend == "auto":
        backend = "kaldialign" if _kaldialign is not None else "python"
    if backend == "kaldialign":
        if _kaldialign is None:
            raise ScoreError("backend 'kaldialign' requested but kaldialign is not installed")
        return _align_kaldialign(ref, hyp)
    if backend == "python":
        return _align_python(ref, hyp)
    raise ScoreError(f"unknown alignment backend {backend!r}; use auto, kaldialign or python")


def _align_kaldialign(ref: List[str], hyp: List[str]) -> List[Pair]:
    eps = _unused_symbol(ref, hyp)
    return [
        (None if r == eps else r, None if h == eps else h) for r, h in _kaldialign.align(ref, hyp, eps)
    ]


def _unused_symbol(ref: List[str], hyp: List[str]) -> str:
    used = set(ref) | set(hyp)
    eps = "<eps>"
    while eps in used:
        eps = f"<{eps}>"
    return eps


def _edit_table(ref: List[str], hyp: List[str]) -> List[List[int]]:
    table = [[j for j in range(len(hyp) + 1)]]
    for i in range(1, len(ref) + 1):
        row = [i] + [0] * len(hyp)
        prev = table[i - 1]
        for j in range(1, len(hyp) + 1):
            row[j] = min(prev[j - 1] + (ref[i - 1] != hyp[j - 1]), prev[j] + 1, row[j - 1] + 1)
        table.append(row)
    return table


def _align_python(ref: List[str], hyp: List[str]) -> List[Pair]:
    table = _edit_table(ref, hyp)
    i, j = len(ref), len(hyp)
    pairs: List[Pair] = []
    while i or j:
        cost = table[i][j]
        if j and table[i][j - 1] + 1 == cost:
            pairs.append((None, hyp[j - 1]))
            j -= 1
        elif i and table[i - 1][j] + 1 == cost:
            pairs.append((ref[i - 1], None))
            i -= 1
        else:
            pairs.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
    pairs.reverse()
    return pairs


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@dataclass
class ErrorStats:
    """Error counts over some reference tokens (words or characters)."""

    ref_words: int = 0
    ins: int = 0
    dels: int = 0
    subs: int = 0

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def correct(self) -> int:
        return self.ref_words - self.dels - self.subs

    @property
    def wer(self) -> float:
        """Error rate in percent; 0 for an empty reference with no errors, inf with errors."""
        if self.ref_words == 0:
            return 0.0 if self.errors == 0 else math.inf
        return 100.0 * self.errors / self.ref_words

    def add(self, other: "ErrorStats") -> None:
        self.ref_words += other.ref_words
        self.ins += other.ins
        self.dels += other.dels
        self.subs += other.subs

    @classmethod
    def from_alignment(cls, pairs: Sequence[Pair]) -> "ErrorStats":
        stats = cls()
        for r, h in pairs:
            if r is not None:
                stats.ref_words += 1
            if r is None:
                stats.ins += 1
            elif h is None:
                stats.dels += 1
            elif r != h:
                stats.subs += 1
        return stats

    def to_dict(self) -> Dict[str, Union[int, float]]:
        return {
            "ref_words": self.ref_words,
            "ins": self.ins,
            "dels": self.dels,
            "subs": self.subs,
            "errors": self.errors,
            "correct": self.correct,
            "wer": self.wer,
        }


@dataclass
class UttResult:
    utt_id: str
    ref: List[str]
    hyp: List[str]
    alignment: List[Pair]
    stats: ErrorStats


@dataclass
class WerResult:
    """Corpus-level word and character statistics plus per-utterance details and top errors."""

    word: ErrorStats
    char: ErrorStats
    utts: List[UttResult]
    substitutions: Counter = field(default_factory=Counter)  # (ref, hyp) -> count
    insertions: Counter = field(default_factory=Counter)  # hyp word -> count
    deletions: Counter = field(default_factory=Counter)  # ref word -> count

    @property
    def wer(self) -> float:
        return self.word.wer

    @property
    def cer(self) -> float:
        return self.char.wer

    def to_dict(self, top: int = 20) -> Dict[str, object]:
        return {
            "num_utts": len(self.utts),
            "word": self.word.to_dict(),
            "char": self.char.to_dict(),
            "cer_spaces": "excluded",
            "top_substitutions": [[r, h, n] for (r, h), n in self.substitutions.most_common(top)],
            "top_insertions": [[w, n] for w, n in self.insertions.most_common(top)],
            "top_deletions": [[w, n] for w, n in self.deletions.most_common(top)],
        }


def _normalized_words(text: str, utt_id: str, side: str) -> List[str]:
    try:
        return normalize(text).split()
    except NormalizationError as e:
        raise ScoreError(f"utterance {utt_id!r} ({side}): {e}") from None


def compute_wer(pairs: Iterable[Tuple[str, str, str]], backend: str = "auto") -> WerResult:
    """Score ``(utt_id, ref_text, hyp_text)`` triples; both texts are normalized first."""
    result = WerResult(word=ErrorStats(), char=ErrorStats(), utts=[])
    seen = set()
    for utt_id, ref_text, hyp_text in pairs:
        if utt_id in seen:
            raise ScoreError(f"duplicate utterance id {utt_id!r}")
        seen.add(utt_id)
        ref = _normalized_words(ref_text, utt_id, "ref")
        hyp = _normalized_words(hyp_text, utt_id, "hyp")
        alignment = align(ref, hyp, backend)
        stats = ErrorStats.from_alignment(alignment)
        result.word.add(stats)
        result.char.add(ErrorStats.from_alignment(align(list("".join(ref)), list("".join(hyp)), backend)))
        result.utts.append(UttResult(utt_id, ref, hyp, alignment, stats))
        _count_errors(alignment, result)
    return result


def _count_errors(alignment: Sequence[Pair], result: WerResult) -> None:
    for r, h in alignment:
        if r is None:
            result.insertions[h] += 1
        elif h is None:
            result.deletions[r] += 1
        elif r != h:
            result.substitutions[(r, h)] += 1


# ---------------------------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------------------------


def _format_alignment(alignment: Sequence[Pair]) -> str:
    parts = []
    for r, h in alignment:
        if r == h:
            parts.append(r)
        else:
            parts.append(f"({EPS if r is None else r}->{EPS if h is None else h})")
    return " ".join(parts)


def _per_word_stats(result: WerResult) -> List[Tuple[str, int, int, int, int]]:
    """(word, correct, errors, count_in_ref, count_in_hyp), most errors first."""
    corr: Counter = Counter()
    errs: Counter = Counter()
    in_ref: Counter = Counter()
    in_hyp: Counter = Counter()
    for utt in result.utts:
        for r, h in utt.alignment:
            if r is not None:
                in_ref[r] += 1
            if h is not None:
                in_hyp[h] += 1
            if r == h:
                corr[r] += 1
                continue
            if r is not None:
                errs[r] += 1
            if h is not None:
                errs[h] += 1
    words = set(in_ref) | set(in_hyp)
    rows = [(w, corr[w], errs[w], in_ref[w], in_hyp[w]) for w in words]
    rows.sort(key=lambda row: (-row[2], -row[3], row[0]))
    return rows


def format_errs(result: WerResult) -> str:
    """The ``errs-*.txt`` text: totals, per-utterance alignments, top errors, per-word stats."""
    w = result.word
    lines = [
        f"%WER = {w.wer:.2f}",
        f"Errors: {w.ins} insertions, {w.dels} deletions, {w.subs} substitutions, "
        f"over {w.ref_words} reference words ({w.correct} correct)",
        f"%CER = {result.char.wer:.2f} (characters, spaces excluded)",
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, DELETIONS:, "
        "INSERTIONS:, PER-WORD STATS:",
        "",
        "PER-UTT DETAILS: corr or (ref->hyp)",
    ]
    lines += [f"{u.utt_id}:\t{_format_alignment(u.alignment)}" for u in result.utts]
    lines += ["", "SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{n}   {r} -> {h}" for (r, h), n in _sorted_counts(result.substitutions)]
    lines += ["", "DELETIONS: count ref"]
    lines += [f"{n}   {r}" for r, n in _sorted_counts(result.deletions)]
    lines += ["", "INSERTIONS: count hyp"]
    lines += [f"{n}   {h}" for h, n in _sorted_counts(result.insertions)]
    lines += ["", "PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp"]
    lines += [f"{w_}   {c} {e} {nr} {nh}" for w_, c, e, nr, nh in _per_word_stats(result)]
    return "\n".join(lines) + "\n"


def _sorted_counts(counter: Counter) -> List[tuple]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def format_recogs(result: WerResult) -> str:
    lines = []
    for u in sorted(result.utts, key=lambda u: u.utt_id):
        lines.append(f"{u.utt_id}:\tref={u.ref!r}")
        lines.append(f"{u.utt_id}:\thyp={u.hyp!r}")
    return "\n".join(lines) + ("\n" if lines else "")


def _read_summary(path: Path) -> Dict[str, float]:
    rows: Dict[str, float] = {}
    if not path.is_file():
        return rows
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("settings\t"):
            continue
        parts = line.split("\t")
        try:
            rows[parts[0]] = float(parts[1])
        except (IndexError, ValueError):
            raise ScoreError(f"{path}:{line_no}: expected 'settings<TAB>WER', got {line!r}") from None
    return rows


def write_results(out_dir: Union[str, Path], test_set_name: str, suffix: str, results: WerResult) -> Dict[str, Path]:
    """Write recogs/errs/json files for one (test set, setting) and merge its WER into the summary.

    The summary ``wer-summary-{name}.txt`` keeps one row per setting (suffix), best WER first, so
    several decoding settings for one test set accumulate in one table as in icefall.
    """
    out_dir = Path(out_dir)
    paths = {
        "recogs": out_dir / f"recogs-{test_set_name}-{suffix}.txt",
        "errs": out_dir / f"errs-{test_set_name}-{suffix}.txt",
        "json": out_dir / f"wer-{test_set_name}-{suffix}.json",
        "summary": out_dir / f"wer-summary-{test_set_name}.txt",
    }
    with atomic_write(paths["recogs"]) as f:
        f.write(format_recogs(results))
    with atomic_write(paths["errs"]) as f:
        f.write(format_errs(results))
    with atomic_write(paths["json"]) as f:
        json.dump({"test_set": test_set_name, "settings": suffix, **results.to_dict()}, f, indent=2)
        f.write("\n")
    summary = _read_summary(paths["summary"])
    summary[suffix] = round(results.wer, 2)
    with atomic_write(paths["summary"]) as f:
        f.write("settings\tWER\n")
        for key, value in sorted(summary.items(), key=lambda kv: (kv[1], kv[0])):
            f.write(f"{key}\t{value:.2f}\n")
    return paths


def read_kaldi_text(path: Union[str, Path]) -> Dict[str, str]:
    """Read a kaldi-style ``utt_id text`` file (text may be empty); errors name file and line."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScoreError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ScoreError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    texts: Dict[str, str] = {}
    for line_no, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        utt_id = parts[0]
        if utt_id in texts:
            raise ScoreError(f"{path}:{line_no}: duplicate utterance id {utt_id!r}")
        texts[utt_id] = parts[1] if len(parts) > 1 else ""
    return texts
