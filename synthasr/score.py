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

Term metrics (medication names, or any list of words/phrases; :class:`TermList`): WER on carrier
sentences is dominated by the easy words, so the names are scored on their own, on the same word
alignment. A reference mention is *recognised* when the hypothesis holds the same normalized term at
the aligned position (every word of a multi-word term aligned as correct, nothing inserted inside);
recall = recognised / reference mentions, precision = recognised / hypothesis mentions, so a term the
hypothesis has where the reference does not (a false alarm, e.g. caused by hotword biasing) lowers
precision only. Scoring works on words after detokenisation: a name split into several BPE pieces
counts once, and is wrong if any piece is wrong.

Files written by :func:`write_results` (atomically), following icefall's names and layout:
``recogs-{name}-{suffix}.txt``, ``errs-{name}-{suffix}.txt``, ``wer-summary-{name}.txt``, plus
``wer-{name}-{suffix}.json`` with the numbers for the report stage, and ``terms-{name}-{suffix}.txt``
when a term list was scored.
"""
from __future__ import annotations

import ast
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

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
    "read_recogs",
    "TermList",
    "TermCounts",
    "TermEvent",
    "TermStats",
    "score_terms",
    "format_terms",
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
    terms: Optional["TermStats"] = None  # term recall/precision, when scored with a term list
    files: Dict[str, str] = field(default_factory=dict)  # result files written for it (kind -> path)
    breakdown_field: Optional[str] = None  # the cut tag ``breakdown`` is keyed by (e.g. "engine")
    breakdown: Dict[str, "WerResult"] = field(default_factory=dict)  # tag value -> result of its utterances

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
            **({"terms": self.terms.to_dict(top)} if self.terms is not None else {}),
            **({"breakdown": {"field": self.breakdown_field, "groups": self.breakdown_summary()}}
               if self.breakdown else {}),
        }

    def breakdown_summary(self) -> Dict[str, Dict[str, object]]:
        """Per tag value: WER, size and term recall/precision (total and per term group)."""
        out: Dict[str, Dict[str, object]] = {}
        for value, sub in sorted(self.breakdown.items()):
            row: Dict[str, object] = {"wer": round(sub.wer, 4), "num_utts": len(sub.utts),
                                      "ref_words": sub.word.ref_words, "errors": sub.word.errors}
            if sub.terms is not None:
                row["terms"] = {**sub.terms.total.to_dict(),
                                "groups": {g: c.to_dict() for g, c in sorted(sub.terms.groups.items())}}
            out[value] = row
        return out


def _normalized_words(text: str, utt_id: str, side: str) -> List[str]:
    try:
        return normalize(text).split()
    except NormalizationError as e:
        raise ScoreError(f"utterance {utt_id!r} ({side}): {e}") from None


def compute_wer(pairs: Iterable[Tuple[str, str, str]], backend: str = "auto",
                terms: Optional["TermList"] = None) -> WerResult:
    """Score ``(utt_id, ref_text, hyp_text)`` triples; both texts are normalized first. With ``terms``,
    term recall/precision are scored on the same alignments (``result.terms``)."""
    result = WerResult(word=ErrorStats(), char=ErrorStats(), utts=[], terms=_empty_term_stats(terms))
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
        if terms is not None:
            result.terms.add(score_terms(utt_id, ref, hyp, alignment, terms))
    return result


def add_breakdown(result: WerResult, pairs: Sequence[Tuple[str, str, str]], group_of: Dict[str, str],
                  field_name: str, backend: str = "auto", terms: Optional["TermList"] = None) -> WerResult:
    """Score ``pairs`` again per group (``group_of``: utterance id -> tag value, e.g. the TTS engine)
    into ``result.breakdown``, so one decode gives per-engine WER and term recall. An utterance id
    ``<cut>-<k>`` (a cut with several supervisions) takes its cut's value."""
    groups: Dict[str, List[Tuple[str, str, str]]] = {}
    for triple in pairs:
        utt_id = triple[0]
        value = group_of.get(utt_id)
        if value is None and "-" in utt_id:
            value = group_of.get(utt_id.rsplit("-", 1)[0])
        if value is None:
            raise ScoreError(f"utterance {utt_id!r} has no {field_name!r} value to break the results down by")
        groups.setdefault(value, []).append(triple)
    result.breakdown_field = field_name
    result.breakdown = {v: compute_wer(g, backend=backend, terms=terms) for v, g in groups.items()}
    return result


def format_breakdown(result: WerResult) -> str:
    """``wer-by-<field>-*.txt``: one row per tag value (WER, size, term recall/precision)."""
    lines = [f"{result.breakdown_field}\tWER\tutts\tref_words\tterm_recall\tterm_precision\tterm_mentions"]
    for value, row in result.breakdown_summary().items():
        t = row.get("terms") or {}
        rec, prec = t.get("recall"), t.get("precision")
        lines.append("\t".join([value, f"{row['wer']:.2f}", str(row["num_utts"]), str(row["ref_words"]),
                                "n/a" if rec is None else f"{rec:.2f}", "n/a" if prec is None else f"{prec:.2f}",
                                str(t.get("ref", 0))]))
    return "\n".join(lines) + "\n"


def _empty_term_stats(terms: Optional["TermList"]) -> Optional["TermStats"]:
    """Every group of the list present from the start, so a set without mentions of a group says so."""
    if terms is None:
        return None
    return TermStats(groups={g: TermCounts() for g in terms.group_names})


def _count_errors(alignment: Sequence[Pair], result: WerResult) -> None:
    for r, h in alignment:
        if r is None:
            result.insertions[h] += 1
        elif h is None:
            result.deletions[r] += 1
        elif r != h:
            result.substitutions[(r, h)] += 1


# ---------------------------------------------------------------------------------------------
# Term (medication-name) metrics
# ---------------------------------------------------------------------------------------------

Term = Tuple[str, ...]


@dataclass(frozen=True)
class TermList:
    """Normalized terms (word tuples) -> group name (``""`` when the list has no groups).

    Groups split recall, e.g. names seen in training text vs held-out names.
    """

    groups: Dict[Term, str]
    source: str = "<terms>"

    def __post_init__(self) -> None:
        if not self.groups:
            raise ScoreError(f"{self.source}: the term list is empty")

    @property
    def max_words(self) -> int:
        return max(len(t) for t in self.groups)

    @property
    def group_names(self) -> List[str]:
        return sorted({g for g in self.groups.values() if g})

    @classmethod
    def from_terms(cls, terms: Iterable[Union[str, Tuple[str, str]]], source: str = "<terms>") -> "TermList":
        """From ``"term"`` or ``("term", "group")`` items; terms are normalized like the transcripts."""
        groups: Dict[Term, str] = {}
        for k, item in enumerate(terms, start=1):
            text, group = (item, "") if isinstance(item, str) else item
            _add_term(groups, text, group, f"{source}: item {k}")
        return cls(groups, source)

    @classmethod
    def from_file(cls, path: Union[str, Path], group_column: Optional[int] = None) -> "TermList":
        """One term per line in the first tab-separated column (``#`` comments, blank lines skipped);
        ``group_column`` (1-based) names the column holding the group, e.g. 3 for ``names_used.txt``
        (``name<TAB>kind<TAB>seen|unseen``)."""
        path = Path(path)
        if group_column is not None and group_column < 2:
            raise ScoreError(f"{path}: group column must be 2 or more (column 1 is the term), got {group_column}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ScoreError(f"{path}: cannot read term list: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ScoreError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        groups: Dict[Term, str] = {}
        for line_no, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cols = line.rstrip("\r\n").split("\t")
            group = ""
            if group_column is not None:
                if len(cols) < group_column or not cols[group_column - 1].strip():
                    raise ScoreError(f"{path}:{line_no}: no group in tab-separated column {group_column} "
                                     f"({len(cols)} column(s)): {line!r}")
                group = cols[group_column - 1].strip()
            _add_term(groups, cols[0], group, f"{path}:{line_no}")
        return cls(groups, str(path))

    def find(self, words: Sequence[str]) -> List[Tuple[int, int, Term]]:
        """Non-overlapping mentions ``(start, end, term)``, left to right, longest term first."""
        mentions, i, longest = [], 0, self.max_words
        while i < len(words):
            for n in range(min(longest, len(words) - i), 0, -1):
                candidate = tuple(words[i: i + n])
                if candidate in self.groups:
                    mentions.append((i, i + n, candidate))
                    i += n
                    break
            else:
                i += 1
        return mentions


def _add_term(groups: Dict[Term, str], text: str, group: str, where: str) -> None:
    try:
        term = tuple(normalize(text).split())
    except NormalizationError as e:
        raise ScoreError(f"{where}: {e}") from None
    if not term:
        raise ScoreError(f"{where}: term {text!r} is empty after normalization")
    if groups.get(term, group) != group:
        raise ScoreError(f"{where}: term {' '.join(term)!r} listed in groups {groups[term]!r} and {group!r}")
    groups[term] = group


@dataclass
class TermCounts:
    """Mention counts for a term, a group of terms, or all terms."""

    ref: int = 0  # mentions in the references
    hyp: int = 0  # mentions in the hypotheses
    hits: int = 0  # reference mentions recognised at the aligned position

    @property
    def misses(self) -> int:
        return self.ref - self.hits

    @property
    def false_alarms(self) -> int:
        return self.hyp - self.hits

    @property
    def recall(self) -> Optional[float]:
        """Percent of reference mentions recognised; None without reference mentions."""
        return 100.0 * self.hits / self.ref if self.ref else None

    @property
    def precision(self) -> Optional[float]:
        """Percent of hypothesis mentions that are recognised reference mentions; None without any."""
        return 100.0 * self.hits / self.hyp if self.hyp else None

    def add(self, other: "TermCounts") -> None:
        self.ref += other.ref
        self.hyp += other.hyp
        self.hits += other.hits

    def to_dict(self) -> Dict[str, Optional[Union[int, float]]]:
        return {"ref": self.ref, "hyp": self.hyp, "hits": self.hits, "misses": self.misses,
                "false_alarms": self.false_alarms, "recall": self.recall, "precision": self.precision}


@dataclass
class TermEvent:
    """One missed reference mention or one false alarm: what the other side had at that position."""

    utt_id: str
    term: str
    kind: str  # "miss" | "false_alarm"
    ref: str  # reference words at the position ("" if none)
    hyp: str  # hypothesis words at the position ("" if none: deleted)


@dataclass
class TermStats:
    """Term recall/precision over one utterance or a whole set (:meth:`add` aggregates)."""

    total: TermCounts = field(default_factory=TermCounts)
    groups: Dict[str, TermCounts] = field(default_factory=dict)
    per_term: Dict[str, TermCounts] = field(default_factory=dict)
    term_group: Dict[str, str] = field(default_factory=dict)
    recognised_as: Dict[str, Counter] = field(default_factory=dict)  # term -> hyp strings of its misses
    false_alarm_for: Dict[str, Counter] = field(default_factory=dict)  # term -> ref strings it replaced
    events: List[TermEvent] = field(default_factory=list)

    def add(self, other: "TermStats") -> None:
        self.total.add(other.total)
        for target, source in ((self.groups, other.groups), (self.per_term, other.per_term)):
            for key, counts in source.items():
                target.setdefault(key, TermCounts()).add(counts)
        self.term_group.update(other.term_group)
        for mine, theirs in ((self.recognised_as, other.recognised_as), (self.false_alarm_for, other.false_alarm_for)):
            for key, counter in theirs.items():
                mine.setdefault(key, Counter()).update(counter)
        self.events.extend(other.events)

    def _count(self, term: str, group: str, side: str, n: int = 1) -> None:
        self.term_group[term] = group
        keys = [(self.per_term, term)] + ([(self.groups, group)] if group else [])
        for counts in [self.total] + [table.setdefault(key, TermCounts()) for table, key in keys]:
            setattr(counts, side, getattr(counts, side) + n)

    def worst(self, top: Optional[int] = None) -> List[Dict[str, Any]]:
        """Terms with errors, most misses + false alarms first (then most mentions, then name)."""
        rows = [(t, c) for t, c in self.per_term.items() if c.misses or c.false_alarms]
        rows.sort(key=lambda tc: (-(tc[1].misses + tc[1].false_alarms), -tc[1].ref, tc[0]))
        return [
            {"term": t, "group": self.term_group.get(t, ""), **c.to_dict(),
             "recognised_as": [[h, n] for h, n in _sorted_counts(self.recognised_as.get(t, Counter()))],
             "false_alarm_for": [[r, n] for r, n in _sorted_counts(self.false_alarm_for.get(t, Counter()))]}
            for t, c in rows[:top]
        ]

    def to_dict(self, top: Optional[int] = 20) -> Dict[str, Any]:
        return {**self.total.to_dict(), "groups": {g: c.to_dict() for g, c in sorted(self.groups.items())},
                "num_terms_mentioned": sum(1 for c in self.per_term.values() if c.ref),
                "worst": self.worst(top)}


def _word_positions(alignment: Sequence[Pair]) -> Tuple[List[int], Dict[int, int]]:
    """Alignment index of every reference word; hypothesis word index at each alignment index."""
    ref_at, hyp_index, j = [], {}, 0
    for k, (r, h) in enumerate(alignment):
        if r is not None:
            ref_at.append(k)
        if h is not None:
            hyp_index[k] = j
            j += 1
    return ref_at, hyp_index


def _widen(alignment: Sequence[Pair], first: int, last: int, side: int) -> Tuple[int, int]:
    """Grow ``[first, last]`` over adjacent pairs with no word on ``side`` (0: ref, 1: hyp), so a miss
    shows the words inserted around it ("met for men") and a false alarm the words deleted around it."""
    while first > 0 and alignment[first - 1][side] is None:
        first -= 1
    while last + 1 < len(alignment) and alignment[last + 1][side] is None:
        last += 1
    return first, last


def _cover(first: int, last: int, spans: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """Grow ``[first, last]`` to cover the name spans of the other side it overlaps (shown whole)."""
    for span_first, span_last in spans:
        if span_first <= last and first <= span_last:
            first, last = min(first, span_first), max(last, span_last)
    return first, last


def _words_in(alignment: Sequence[Pair], span: Tuple[int, int], side: int) -> str:
    return " ".join(pair[side] for pair in alignment[span[0]: span[1] + 1] if pair[side] is not None)


def score_terms(utt_id: str, ref: Sequence[str], hyp: Sequence[str], alignment: Sequence[Pair],
                terms: TermList) -> TermStats:
    """Term mentions of one utterance, scored on the word ``alignment`` of ``ref`` against ``hyp``.

    A reference mention is a hit when its words are all aligned as correct to consecutive hypothesis
    words and the hypothesis's own mention at those words is the same term. For a miss, "recognised as"
    is the hypothesis words aligned to it, grown over adjacent insertions and over any hypothesis name it
    overlaps; a false alarm records the reference words at its position the same way.
    """
    stats = TermStats()
    ref_at, hyp_index = _word_positions(alignment)
    hyp_at = sorted(hyp_index)  # alignment index of each hypothesis word
    hyp_mentions = {(s, e): term for s, e, term in terms.find(hyp)}
    hyp_spans = [(hyp_at[s], hyp_at[e - 1]) for s, e in hyp_mentions]  # in alignment indices
    hit_spans, ref_spans = set(), []
    for s, e, term in terms.find(ref):
        name, group = " ".join(term), terms.groups[term]
        stats._count(name, group, "ref")
        first, last = ref_at[s], ref_at[e - 1]
        ref_spans.append((first, last))
        if all(r is not None and r == h for r, h in alignment[first: last + 1]):
            span = (hyp_index[first], hyp_index[last] + 1)
            if hyp_mentions.get(span) == term:
                stats._count(name, group, "hits")
                hit_spans.add(span)
                continue
        first, last = _cover(first, last, hyp_spans)
        said = _words_in(alignment, _widen(alignment, first, last, side=0), side=1)
        stats.recognised_as.setdefault(name, Counter())[said] += 1
        stats.events.append(TermEvent(utt_id, name, "miss", name, said))
    for (s, e), term in sorted(hyp_mentions.items()):
        name, group = " ".join(term), terms.groups[term]
        stats._count(name, group, "hyp")
        if (s, e) in hit_spans:
            continue
        first, last = _cover(hyp_at[s], hyp_at[e - 1], ref_spans)
        had = _words_in(alignment, _widen(alignment, first, last, side=1), side=0)
        stats.false_alarm_for.setdefault(name, Counter())[had] += 1
        stats.events.append(TermEvent(utt_id, name, "false_alarm", had, name))
    return stats


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


def _fmt_percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _fmt_counts(counter: Counter, empty: str) -> str:
    return ", ".join(f"{text or empty} ({n})" for text, n in _sorted_counts(counter))


def format_terms(stats: TermStats) -> str:
    """The ``terms-*.txt`` text: recall/precision (overall, per group), per-term errors, per-utterance events."""
    t = stats.total
    lines = [
        f"%RECALL = {_fmt_percent(t.recall)} ({t.hits} of {t.ref} reference term mentions recognised)",
        f"%PRECISION = {_fmt_percent(t.precision)} ({t.false_alarms} false alarms in {t.hyp} hypothesis mentions)",
    ]
    lines += [f"%RECALL[{g}] = {_fmt_percent(c.recall)} ({c.hits} of {c.ref}); %PRECISION[{g}] = "
              f"{_fmt_percent(c.precision)} ({c.false_alarms} false alarms)" for g, c in sorted(stats.groups.items())]
    lines += ["Search below for sections starting with PER-TERM ERRORS:, PER-UTT EVENTS:", "",
              "PER-TERM ERRORS: term  group ref hits misses false_alarms  recognised as (count) | false alarm for (count)"]
    for row in stats.worst():
        said = _fmt_counts(stats.recognised_as.get(row["term"], Counter()), "(deleted)")
        fa = _fmt_counts(stats.false_alarm_for.get(row["term"], Counter()), "(inserted)")
        lines.append(f"{row['term']}   {row['group'] or '-'} {row['ref']} {row['hits']} {row['misses']} "
                     f"{row['false_alarms']}   {said or '-'} | {fa or '-'}")
    lines += ["", "PER-UTT EVENTS: utt  kind  term  ref-words -> hyp-words"]
    lines += [f"{e.utt_id}:\t{e.kind}\t{e.term}\t{e.ref or EPS} -> {e.hyp or EPS}" for e in stats.events]
    return "\n".join(lines) + "\n"


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
    """Write recogs/errs/json (+ terms) files for one (test set, setting) and merge its WER into the summary.

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
    if results.terms is not None:
        paths["terms"] = out_dir / f"terms-{test_set_name}-{suffix}.txt"
        with atomic_write(paths["terms"]) as f:
            f.write(format_terms(results.terms))
    if results.breakdown:
        paths["breakdown"] = out_dir / f"wer-by-{results.breakdown_field}-{test_set_name}-{suffix}.txt"
        with atomic_write(paths["breakdown"]) as f:
            f.write(format_breakdown(results))
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


def read_recogs(path: Union[str, Path]) -> Dict[str, Tuple[List[str], List[str]]]:
    """Read a ``recogs-*.txt`` file back: utt_id -> (reference words, hypothesis words)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ScoreError(f"{path}: cannot read: {e.strerror or e}") from None
    refs: Dict[str, List[str]] = {}
    out: Dict[str, Tuple[List[str], List[str]]] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        utt_id, sep, rest = line.partition(":\t")
        side, eq, words_repr = rest.partition("=")
        try:
            words = ast.literal_eval(words_repr) if sep and eq and side in ("ref", "hyp") else None
        except (ValueError, SyntaxError):
            words = None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ScoreError(f"{path}:{line_no}: expected 'UTT:<TAB>ref=[...]' or 'UTT:<TAB>hyp=[...]', got {line!r}")
        if side == "ref":
            refs[utt_id] = words
        elif utt_id not in refs:
            raise ScoreError(f"{path}:{line_no}: hypothesis of {utt_id!r} without a reference line before it")
        else:
            out[utt_id] = (refs[utt_id], words)
    missing = sorted(set(refs) - set(out))
    if missing:
        raise ScoreError(f"{path}: utterance {missing[0]!r} has a reference but no hypothesis line")
    return out
