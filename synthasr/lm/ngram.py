"""Token-level n-gram language models: interpolated Kneser-Ney estimation, ARPA out and in, and the
per-history log-probability vectors that shallow fusion adds to the transducer's scores.

Why an n-gram over the recognizer's own BPE units: the stateless prediction network sees two tokens
of history and learns what it knows of spelling from the few thousand sentences that were spoken.
Text is cheap (a formulary, domain sentences, general prose): a token n-gram estimated from all of it
teaches spellings no synthetic utterance said ("agent", not "agin"; a held-out drug name) and costs
a table lookup per hypothesis. The ARPA file names tokens by their sentencepiece pieces, so it can be
inspected, pruned or rebuilt with any ARPA tool, and reading it checks it against the BPE model.

Ids follow the tokenizer (icefall layout): 0 is the blank (never predicted by the LM), 1 is
``<sos/eos>``: as history it is the sentence start ``<s>``, as a predicted token the end ``</s>``.

Estimation (Chen & Goodman 1998, interpolated Kneser-Ney with one discount per order,
``D = n1 / (n1 + 2 n2)``): the highest order uses raw counts, lower orders continuation counts (the
number of distinct tokens seen before the n-gram), and the unigram level interpolates with a
uniform distribution so every token has a probability. An interpolated model is exactly an ARPA
backoff model whose backoff weight for history ``h`` is the interpolation weight
``gamma(h) = D * N1+(h .) / c(h)``.
"""
from __future__ import annotations

import gzip
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from synthasr.utils.io import atomic_path

PathLike = Union[str, Path]
Ngram = Tuple[int, ...]
BLANK_ID = 0
SOS_EOS_ID = 1
_LN10 = math.log(10.0)
_ARPA_FLOOR = -99.0  # log10 probability ARPA files give <s> (never predicted)
_START = -1  # the <s> unigram line while writing (sorts first)


class NgramError(ValueError):
    """An n-gram LM cannot be estimated, read or used; the message names the file/line or the reason."""


class NgramLM:
    """A backoff n-gram model over token ids ``0..vocab_size-1`` (natural-log scores).

    ``ngrams[h]`` maps a history (tuple of ids, length 0..order-1) to the ids that have an explicit
    probability after it and those log-probabilities; ``backoffs[h]`` is ``log gamma(h)`` (0 when
    absent, as in ARPA). :meth:`log_probs` returns the full next-token distribution for a history.
    """

    def __init__(self, order: int, vocab_size: int, ngrams: Dict[Ngram, Tuple[torch.Tensor, torch.Tensor]],
                 backoffs: Dict[Ngram, float], cache_size: int = 50000) -> None:
        if order < 1:
            raise NgramError(f"order must be >= 1, got {order}")
        if () not in ngrams:
            raise NgramError("the model has no unigrams")
        self.order = order
        self.vocab_size = vocab_size
        self.ngrams = ngrams
        self.backoffs = backoffs
        self._cache: Dict[Ngram, torch.Tensor] = {}
        self._cache_size = cache_size

    # ---- scoring -------------------------------------------------------------------------------
    def start(self) -> Ngram:
        """The history at a sentence start."""
        return (SOS_EOS_ID,)

    def advance(self, history: Ngram, token: int) -> Ngram:
        """The history after ``token`` (only the last ``order - 1`` ids matter)."""
        keep = self.order - 1
        return (history + (token,))[-keep:] if keep else ()

    def log_probs(self, history: Ngram) -> torch.Tensor:
        """(vocab_size,) natural-log probabilities of the next token (``</s>`` at id 1; -inf at the blank)."""
        keep = self.order - 1
        history = tuple(history[-keep:]) if keep else ()
        vec = self._cache.get(history)
        if vec is None:
            if history:
                vec = self.log_probs(history[1:]) + self.backoffs.get(history, 0.0)
            else:
                vec = torch.full((self.vocab_size,), -math.inf)
            explicit = self.ngrams.get(history)
            if explicit is not None:
                vec = vec.clone()
                vec[explicit[0]] = explicit[1]
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[history] = vec
        return vec

    def sentence_log_prob(self, tokens: Sequence[int]) -> float:
        """Natural-log probability of a whole sentence (``tokens`` without <s>/</s>), end included."""
        history, total = self.start(), 0.0
        for token in list(tokens) + [SOS_EOS_ID]:
            total += float(self.log_probs(history)[token])
            history = self.advance(history, token)
        return total

    # ---- ARPA ----------------------------------------------------------------------------------
    def write_arpa(self, path: PathLike, pieces: Sequence[str]) -> Path:
        """Write the model as ARPA (log10), tokens named by ``pieces[id]``; atomic, ``.gz`` compresses."""
        if len(pieces) != self.vocab_size:
            raise NgramError(f"{len(pieces)} piece names for a vocabulary of {self.vocab_size}")
        by_order: Dict[int, List[Tuple[Ngram, float, Optional[float]]]] = defaultdict(list)
        for history, (ids, lps) in self.ngrams.items():
            for token, lp in zip(ids.tolist(), lps.tolist()):
                ngram = history + (token,)
                ends = token == SOS_EOS_ID  # nothing follows </s>: the backoff of id 1 belongs to <s>
                by_order[len(ngram)].append((ngram, lp, None if ends else self.backoffs.get(ngram)))
        by_order[1].append(((_START,), _ARPA_FLOOR * _LN10, self.backoffs.get((SOS_EOS_ID,))))
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as f:
            f.write("\\data\\\n")
            for n in range(1, self.order + 1):
                f.write(f"ngram {n}={len(by_order[n])}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                for ngram, lp, bo in sorted(by_order[n]):
                    words = " ".join(_arpa_word(t, i, len(ngram), pieces) for i, t in enumerate(ngram))
                    line = f"{lp / _LN10:.7f}\t{words}"
                    if bo is not None and n < self.order:
                        line += f"\t{bo / _LN10:.7f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")
        return path

    @classmethod
    def load(cls, path: PathLike, tokenizer) -> "NgramLM":
        """Read an ARPA file over ``tokenizer``'s pieces (a :class:`synthasr.tokenizer.Tokenizer`)."""
        pieces = {tokenizer.id_to_piece(i): i for i in range(tokenizer.vocab_size)}
        return cls.read_arpa(path, pieces, tokenizer.vocab_size)

    @classmethod
    def read_arpa(cls, path: PathLike, piece_to_id: Dict[str, int], vocab_size: int) -> "NgramLM":
        """Read an ARPA file written over these pieces; any problem is one :class:`NgramError` naming
        the file and line (an unknown piece: the LM was built with another BPE model)."""
        path = Path(path)
        ids_of = dict(piece_to_id)
        ids_of["<s>"] = ids_of["</s>"] = SOS_EOS_ID
        declared: Dict[int, int] = {}
        found: Dict[int, int] = defaultdict(int)
        table: Dict[Ngram, Dict[int, float]] = defaultdict(dict)
        backoffs: Dict[Ngram, float] = {}
        section = None  # None: before \data\; 0: in \data\; n: in \n-grams:
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for line_no, raw in enumerate(f, start=1):
                    line = raw.strip()
                    where = f"{path}:{line_no}"
                    if not line:
                        continue
                    if line == "\\data\\":
                        section = 0
                    elif line == "\\end\\":
                        section = -1
                        break
                    elif line.startswith("\\") and line.endswith("-grams:"):
                        section = _section_order(line, where, declared)
                    elif section == 0:
                        n, count = _declared_count(line, where)
                        declared[n] = count
                    elif section is not None and section > 0:
                        _read_entry(line, section, where, ids_of, table, backoffs)
                        found[section] += 1
        except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
            raise NgramError(f"{path}: cannot read ARPA: {e}") from None
        if section != -1:
            raise NgramError(f"{path}: not a complete ARPA file (no \\data\\ section or no \\end\\)")
        for n, count in sorted(declared.items()):
            if found[n] != count:
                raise NgramError(f"{path}: header declares {count} {n}-grams, the file has {found[n]} (truncated?)")
        if not declared:
            raise NgramError(f"{path}: the \\data\\ section declares no n-grams")
        ngrams = {h: (torch.tensor(sorted(d)), torch.tensor([d[t] for t in sorted(d)])) for h, d in table.items()}
        if () not in ngrams:
            raise NgramError(f"{path}: no unigrams")
        return cls(max(declared), vocab_size, ngrams, backoffs)


def _arpa_word(token: int, position: int, length: int, pieces: Sequence[str]) -> str:
    if token == _START:
        return "<s>"
    if token == SOS_EOS_ID:
        return "</s>" if position == length - 1 else "<s>"
    return pieces[token]


def _section_order(line: str, where: str, declared: Dict[int, int]) -> int:
    try:
        n = int(line[1: -len("-grams:")])
    except ValueError:
        raise NgramError(f"{where}: bad section header {line!r}") from None
    if n not in declared:
        raise NgramError(f"{where}: section {line!r} is not declared in \\data\\")
    return n


def _declared_count(line: str, where: str) -> Tuple[int, int]:
    key, _, value = line.partition("=")
    parts = key.split()
    try:
        if len(parts) != 2 or parts[0] != "ngram":
            raise ValueError
        return int(parts[1]), int(value)
    except ValueError:
        raise NgramError(f"{where}: expected 'ngram N=COUNT' in \\data\\, got {line!r}") from None


def _read_entry(line: str, n: int, where: str, ids_of: Dict[str, int], table, backoffs) -> None:
    fields = line.split()
    if len(fields) not in (n + 1, n + 2):
        raise NgramError(f"{where}: expected 'log10prob {n} token(s) [backoff]', got {line!r}")
    try:
        values = [float(fields[0])] + ([float(fields[-1])] if len(fields) == n + 2 else [])
    except ValueError:
        raise NgramError(f"{where}: not a number in {line!r}") from None
    if any(math.isnan(v) or v > 0 for v in values[:1]):
        raise NgramError(f"{where}: log10 probability must be <= 0, got {fields[0]}")
    words = fields[1: n + 1]
    unknown = next((w for w in words if w not in ids_of), None)
    if unknown is not None:
        raise NgramError(f"{where}: token {unknown!r} is not in the BPE model (an LM built with another one?)")
    ngram = tuple(ids_of[w] for w in words)
    if len(values) == 2 and words[-1] != "</s>":  # id 1 is <s> and </s>: only <s> may back off
        backoffs[ngram] = values[1] * _LN10
    if words[-1] == "<s>":
        return  # <s> is never predicted: its line only carries the backoff of the sentence start
    table[ngram[:-1]][ngram[-1]] = values[0] * _LN10


# ---- estimation --------------------------------------------------------------------------------
def estimate_kneser_ney(sentences: Iterable[Sequence[int]], order: int, vocab_size: int) -> NgramLM:
    """Interpolated Kneser-Ney model of ``order`` over token-id sentences (no <s>/</s>; ids in
    ``2..vocab_size-1``). The uniform floor covers every id except the blank (``</s>`` included)."""
    if order < 1:
        raise NgramError(f"order must be >= 1, got {order}")
    raw = _raw_counts(sentences, order, vocab_size)
    if not raw[0]:
        raise NgramError("no text to estimate an n-gram model from")
    counts = _kneser_ney_counts(raw, order)
    ngrams: Dict[Ngram, Tuple[torch.Tensor, torch.Tensor]] = {}
    backoffs: Dict[Ngram, float] = {}
    lm = NgramLM(order, vocab_size, {(): (torch.zeros(0, dtype=torch.long), torch.zeros(0))}, backoffs)
    for n in range(1, order + 1):
        discount = _discount(counts[n - 1])
        groups: Dict[Ngram, Dict[int, int]] = defaultdict(dict)
        for ngram, c in counts[n - 1].items():
            groups[ngram[:-1]][ngram[-1]] = c
        for history, followers in groups.items():
            total = sum(followers.values())
            gamma = discount * len(followers) / total
            if history:
                lower = lm.log_probs(history[1:])
            else:
                lower = torch.full((vocab_size,), -math.log(vocab_size - 1))
                lower[BLANK_ID] = -math.inf
            ids = torch.tensor(sorted(followers))
            own = torch.tensor([max(followers[t] - discount, 0.0) / total for t in ids.tolist()], dtype=torch.float64)
            probs = own + gamma * lower[ids].double().exp()
            ngrams[history] = (ids, probs.log().float())
            if gamma > 0:
                backoffs[history] = math.log(gamma)
        if n == 1:  # unigrams never seen in text: the uniform share alone
            unigram_gamma = math.exp(backoffs.pop((), 0.0)) if () in backoffs else 0.0
            ids, lps = ngrams[()]
            full = torch.full((vocab_size,), math.log(max(unigram_gamma, 1e-30) / (vocab_size - 1)))
            full[ids] = lps
            everything = torch.tensor([t for t in range(vocab_size) if t != BLANK_ID])
            ngrams[()] = (everything, full[everything])
        lm = NgramLM(order, vocab_size, dict(ngrams), dict(backoffs))
    return lm


def _raw_counts(sentences: Iterable[Sequence[int]], order: int, vocab_size: int) -> List[Dict[Ngram, int]]:
    raw: List[Dict[Ngram, int]] = [defaultdict(int) for _ in range(order)]
    for number, sentence in enumerate(sentences, start=1):
        bad = next((t for t in sentence if not 1 < t < vocab_size), None)
        if bad is not None:
            raise NgramError(f"sentence {number}: token id {bad} outside 2..{vocab_size - 1}")
        seq = (SOS_EOS_ID,) + tuple(sentence) + (SOS_EOS_ID,)
        for i in range(1, len(seq)):
            for n in range(1, min(order, i + 1) + 1):
                raw[n - 1][seq[i - n + 1: i + 1]] += 1
    return raw


def _kneser_ney_counts(raw: List[Dict[Ngram, int]], order: int) -> List[Dict[Ngram, int]]:
    """Raw counts at the top order; below it, how many distinct tokens precede each n-gram (n-grams
    that begin with <s> cannot be extended to the left and keep their raw counts)."""
    counts: List[Dict[Ngram, int]] = [dict() for _ in range(order)]
    counts[order - 1] = dict(raw[order - 1])
    for n in range(order - 1, 0, -1):
        cont: Dict[Ngram, int] = defaultdict(int)
        for longer in raw[n]:
            cont[longer[1:]] += 1
        level = dict(cont)
        for ngram, c in raw[n - 1].items():
            if ngram[0] == SOS_EOS_ID and len(ngram) > 1:
                level[ngram] = c
        counts[n - 1] = level
    return counts


def _discount(counts: Dict[Ngram, int]) -> float:
    """Kneser-Ney's ``D = n1 / (n1 + 2 n2)``, kept inside (0, 1) for tiny corpora."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2.0 * n2), 0.05), 0.95)


def estimate_from_text(texts: Iterable[str], tokenizer, order: int) -> NgramLM:
    """Kneser-Ney model over ``tokenizer``'s BPE units of normalised ``texts`` (one sentence each)."""
    sentences = [ids for ids in tokenizer.encode([t for t in texts if t]) if ids]
    return estimate_kneser_ney(sentences, order, tokenizer.vocab_size)


def perplexity(lm: NgramLM, sentences: Iterable[Sequence[int]]) -> float:
    """Per-token perplexity (``</s>`` counted as a token) of token-id sentences."""
    total, tokens = 0.0, 0
    for sentence in sentences:
        total += lm.sentence_log_prob(sentence)
        tokens += len(sentence) + 1
    if tokens == 0:
        raise NgramError("no text to compute a perplexity on")
    return math.exp(-total / tokens)


def ngram_counts(lm: NgramLM) -> Dict[int, int]:
    """How many explicit n-grams the model holds per order (what an ARPA header declares, minus <s>)."""
    out: Dict[int, int] = defaultdict(int)
    for history, (ids, _) in lm.ngrams.items():
        out[len(history) + 1] += len(ids)
    return dict(sorted(out.items()))
