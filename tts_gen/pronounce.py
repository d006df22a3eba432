"""Per-term pronunciations: given phonemes, or generated variants, handed to the engines.

Rare terms (drug names) are where TTS engines guess. This module decides, per utterance and term,
which phonemes the engine is told to use, so the guess is ours, varied on purpose and recorded.

Alphabets. An engine takes phonemes in its own alphabet (:data:`ENGINE_ALPHABETS`):

* ``espeak``: espeak-ng phoneme mnemonics, the language of ``[[...]]`` in espeak-ng input and of
  ``espeak-ng -x`` output (``l'EvI2t,3:ra#s,Et#am``). They are read by the *synthesizing* voice's
  phoneme table, so ``3:`` is rhotic in en-us and not in en-gb.
* ``piper``: IPA as ``espeak-ng --ipa`` writes it. Piper's English voices were trained on espeak-ng's
  IPA, so this is exactly their input alphabet; piper-tts reads it inside ``[[...]]`` too.

A given espeak entry with no piper entry is converted to IPA by espeak-ng itself (en-us tables), so
one lexicon line serves both engines.

Variants (no pronunciation given): the letter-to-sound rules of every installed English variety of
espeak-ng (en-us, en-gb, en-gb-scotland, en-029, ...), deduplicated, plus stress shifts of the en-us
form (the primary stress mark moved to another vowel). Each utterance picks one option per term from
a hash of ``(seed, utterance id, term)``, so the choice does not depend on processing order, and the
manifest records which one (``custom["pronunciations"]``).
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

#: engine -> the phoneme alphabet it accepts; engines not listed speak terms by their own rules
ENGINE_ALPHABETS: Dict[str, str] = {"espeak": "espeak-ng mnemonics", "piper": "IPA"}
#: the variety whose form comes first, converts given mnemonics to IPA and carries stress shifts
PRIMARY_VARIETY = "en-us"
#: most distinct accents first, so a small ``max_variants`` still spans rhotic/non-rhotic, Scottish, Caribbean
PREFERRED_VARIETIES: Tuple[str, ...] = (PRIMARY_VARIETY, "en-gb", "en-gb-scotland", "en-029", "en-us-nyc",
                                        "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
DEFAULT_MAX_VARIANTS = 4
DEFAULT_MAX_STRESS = 2
#: origin of a term an engine spoke by its own rules (no phonemes in its alphabet)
ENGINE_ORIGIN = "engine"
GIVEN_ORIGIN = "given"

_SEP = "\u200c"  # --sep=z: zero-width non-joiner between phonemes; no mnemonic or IPA symbol uses it
_IPA_VOWELS = frozenset("aeiouyæøœɐɑɒɔəɘɛɜɞɤɨɪɯɵɶʉʊʌʏɚɝᵻ")
_X_PRIMARY, _X_SECONDARY = "'", ","
_IPA_PRIMARY, _IPA_SECONDARY = "\u02c8", "\u02cc"
_FORBIDDEN = re.compile(r"[\[\]\t\r\n\x00-\x08\x0b-\x1f\x7f]")


class PronunciationError(ValueError):
    """A bad lexicon line or ``pronunciations`` field; the message names the file and line."""


@dataclass(frozen=True)
class Pronunciation:
    """One way to say a term: phonemes per alphabet (either may be missing) and where it came from.

    ``origin`` is ``"given"`` (lexicon or input line) or a variant name: the espeak-ng variety whose
    rules produced it (``en-gb-scotland``), ``+stressN`` when the primary stress was moved to the
    N-th vowel (``en-us+stress3``).
    """

    term: str
    espeak: Optional[str] = None
    ipa: Optional[str] = None
    origin: str = GIVEN_ORIGIN

    def phonemes(self, engine: str) -> Optional[str]:
        """The phonemes to hand to ``engine`` (``None`` if this pronunciation has none in its alphabet)."""
        if engine == "espeak":
            return self.espeak
        if engine == "piper":
            return self.ipa
        return None

    def record(self, engine: str) -> Dict[str, Any]:
        """What the manifest stores for an utterance spoken by ``engine``."""
        return {"term": self.term, "phonemes": self.phonemes(engine), "origin": self.origin}


# --- terms in text ------------------------------------------------------------------------------
def normalize_term(term: str) -> str:
    """The term as it appears in spoken (normalized) text, so lexicon keys match what engines speak."""
    from synthasr.text import NormalizationError, normalize

    try:
        return normalize(term)
    except NormalizationError as e:
        raise PronunciationError(f"term {term!r}: {e}") from None


class TermMatcher:
    """Whole-word term spans by word n-gram lookup: a run's thousands of terms cost per word, not per term."""

    def __init__(self, terms: Iterable[str]) -> None:
        self.terms = frozenset(t for t in terms if t)
        self.max_words = max((t.count(" ") + 1 for t in self.terms), default=0)

    def spans(self, text: str) -> List[Tuple[int, int, str]]:
        """Every ``(start, end, term)`` occurrence, overlaps included (see :func:`resolve_overlaps`)."""
        words = list(re.finditer(r"[a-z']+", text))
        found = []
        for i, first in enumerate(words):
            for n in range(1, min(self.max_words, len(words) - i) + 1):
                last = words[i + n - 1]
                if n > 1 and text[words[i + n - 2].end():last.start()] != " ":
                    break
                candidate = text[first.start():last.end()]
                if candidate in self.terms:
                    found.append((first.start(), last.end(), candidate))
        return found


def resolve_overlaps(spans: Iterable[Tuple[int, int, str]]) -> List[Tuple[int, int, str]]:
    """Non-overlapping spans in text order; a longer term wins over one inside or across it."""
    taken: List[Tuple[int, int, str]] = []
    for start, end, term in sorted(set(spans), key=lambda s: (-(s[1] - s[0]), s[0])):
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, term))
    return sorted(taken)


def term_spans(text: str, terms: Iterable[str]) -> List[Tuple[int, int, str]]:
    """Non-overlapping whole-word ``(start, end, term)`` spans in ``text``; longer terms win overlaps."""
    return resolve_overlaps(TermMatcher(terms).spans(text))


def markup(text: str, phonemes: Mapping[str, str]) -> str:
    """Replace each term span by ``[[phonemes]]``: the inline phoneme syntax espeak-ng and piper share."""
    out, pos = [], 0
    for start, end, term in term_spans(text, phonemes):
        out += [text[pos:start], f"[[{phonemes[term]}]]"]
        pos = end
    return "".join(out) + text[pos:]


def check_phonemes(phonemes: str) -> Optional[str]:
    """Why ``phonemes`` cannot go inside ``[[...]]`` (brackets, tabs, control characters), or ``None``."""
    if not phonemes.strip():
        return "empty phonemes"
    bad = _FORBIDDEN.search(phonemes)
    if bad:
        return f"phonemes contain {bad.group()!r} (not allowed inside [[...]])"
    return None


# --- given pronunciations ---------------------------------------------------------------------------
Lexicon = Dict[str, List[Pronunciation]]


def read_lexicon(path: PathLike, binary: str = "espeak-ng") -> Lexicon:
    """Read a TSV lexicon ``term<TAB>engine<TAB>phonemes`` (``#`` comments and blank lines skipped).

    ``engine`` is ``espeak`` (mnemonics) or ``piper`` (IPA). Several lines for one term and engine are
    alternatives (an utterance picks one). Errors are one line: ``FILE:LINE: why``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise PronunciationError(f"{path}: cannot read lexicon: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PronunciationError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    entries: Dict[str, Dict[str, List[str]]] = {}
    for lineno, line in enumerate(raw.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        term, engine, phonemes = _parse_lexicon_line(line, f"{path}:{lineno}")
        entries.setdefault(term, {}).setdefault(engine, []).append(phonemes)
    return {term: _given(term, by_engine, binary, str(path)) for term, by_engine in entries.items()}


def _parse_lexicon_line(line: str, where: str) -> Tuple[str, str, str]:
    fields = line.split("\t")
    if len(fields) != 3:
        raise PronunciationError(f"{where}: expected 3 tab-separated fields (term, engine, phonemes), got {len(fields)}")
    term_raw, engine_raw, phonemes = (f.strip() for f in fields)
    return _check_entry(term_raw, engine_raw, phonemes, where)


def _check_entry(term_raw: str, engine_raw: str, phonemes: str, where: str) -> Tuple[str, str, str]:
    """(normalized term, canonical engine, phonemes) or a one-line error naming ``where``."""
    from tts_gen.engines.base import UnknownEngineError, canonical_engine_name

    try:
        term = normalize_term(term_raw)
    except PronunciationError as e:
        raise PronunciationError(f"{where}: {e}") from None
    if not term:
        raise PronunciationError(f"{where}: empty term")
    try:
        engine = canonical_engine_name(engine_raw)
    except UnknownEngineError as e:
        raise PronunciationError(f"{where}: {e}") from None
    if engine not in ENGINE_ALPHABETS:
        raise PronunciationError(f"{where}: engine {engine!r} takes no phoneme input (use: {', '.join(ENGINE_ALPHABETS)})")
    why = check_phonemes(phonemes)
    if why is None and engine == "piper":
        why = _check_ipa(phonemes)
    if why:
        raise PronunciationError(f"{where}: term {term!r}: {why}")
    return term, engine, phonemes.strip()


def _check_ipa(ipa: str) -> Optional[str]:
    """IPA symbols piper's espeak id map lacks (piper would drop them silently), or ``None``."""
    try:
        from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP
    except ImportError:  # pragma: no cover - without piper the engine check happens at synthesis
        return None
    missing = sorted({c for c in unicodedata.normalize("NFD", ipa) if c not in DEFAULT_PHONEME_ID_MAP})
    return f"IPA symbol(s) {' '.join(missing)} not in piper's phoneme set" if missing else None


def _given(term: str, by_engine: Mapping[str, Sequence[str]], binary: str, where: str) -> List[Pronunciation]:
    """Given pronunciations of one term; espeak-only terms get IPA from espeak-ng for piper."""
    espeak = list(by_engine.get("espeak", []))
    ipa = list(by_engine.get("piper", []))
    derived: List[Optional[str]] = [None] * len(espeak)
    if espeak and not ipa and shutil.which(binary):
        derived = list(ipa_of(espeak, binary, where))
    return ([Pronunciation(term, espeak=p, ipa=d) for p, d in zip(espeak, derived)]
            + [Pronunciation(term, ipa=p) for p in ipa])


_IPA_CACHE: Dict[Tuple[str, str], str] = {}


def ipa_of(mnemonics: Sequence[str], binary: str = "espeak-ng", where: str = "espeak-ng") -> List[str]:
    """espeak-ng's IPA for mnemonics (read by :data:`PRIMARY_VARIETY`), cached per process.

    Input lines repeat the same respellings thousands of times; one espeak-ng run per distinct string.
    """
    todo = sorted({m for m in mnemonics if (binary, m) not in _IPA_CACHE})
    for m, ipa in zip(todo, espeak_phonemes([f"[[{m}]]" for m in todo], PRIMARY_VARIETY, binary, ipa=True, where=where)):
        _IPA_CACHE[(binary, m)] = ipa
    return [_IPA_CACHE[(binary, m)] for m in mnemonics]


def parse_line_field(value: Any, where: str, binary: str = "espeak-ng") -> Lexicon:
    """Validate an input line's ``pronunciations`` field: ``{term: mnemonics | {engine: phonemes}}``.

    A plain string is espeak-ng mnemonics (converted to IPA for piper); an object gives phonemes per
    engine (``{"espeak": "...", "piper": "..."}``).
    """
    if not isinstance(value, dict):
        raise PronunciationError(f"{where}: 'pronunciations' must be an object {{term: phonemes}}")
    out: Lexicon = {}
    for term_raw, spec in value.items():
        per_engine = {"espeak": spec} if isinstance(spec, str) else spec
        if not isinstance(per_engine, dict) or not per_engine:
            raise PronunciationError(f"{where}: pronunciations[{term_raw!r}] must be a string or an object {{engine: phonemes}}")
        by_engine: Dict[str, List[str]] = {}
        term = ""
        for engine_raw, phonemes in per_engine.items():
            if not isinstance(phonemes, str):
                raise PronunciationError(f"{where}: pronunciations[{term_raw!r}][{engine_raw!r}] must be a string")
            term, engine, ph = _check_entry(str(term_raw), str(engine_raw), phonemes, f"{where}: pronunciations")
            by_engine.setdefault(engine, []).append(ph)
        out[term] = _given(term, by_engine, binary, where)
    return out


# --- espeak-ng letter-to-sound ----------------------------------------------------------------------
def english_varieties(binary: str = "espeak-ng") -> List[str]:
    """Installed English espeak-ng varieties, :data:`PRIMARY_VARIETY` first, MBROLA voices skipped."""
    from tts_gen.engines.espeak import _list_english_voices

    found = _list_english_voices(binary)
    rank = {v: i for i, v in enumerate(PREFERRED_VARIETIES)}
    return sorted(found, key=lambda v: (rank.get(v, len(rank)), found.index(v)))


def espeak_phonemes(lines: Sequence[str], variety: str, binary: str = "espeak-ng", ipa: bool = False,
                    sep: bool = False, where: str = "espeak-ng") -> List[str]:
    """What espeak-ng reports (``-x`` mnemonics or ``--ipa``) for each input line, in one process.

    Lines are sent as separate sentences; if espeak-ng's output does not have one line per input
    (it never should for single terms), each line is run on its own, so the result is always aligned.
    """
    if not lines:
        return []
    out = _run_espeak("".join(f"{line}.\n" for line in lines), variety, binary, ipa, sep, where)
    reported = [ln.strip() for ln in out.split("\n") if ln.strip()]
    if len(reported) == len(lines):
        return reported
    return [_run_espeak(f"{line}.\n", variety, binary, ipa, sep, where).strip() for line in lines]


def _run_espeak(text: str, variety: str, binary: str, ipa: bool, sep: bool, where: str) -> str:
    argv = [binary, "-v", variety, "-q", "--ipa" if ipa else "-x"] + (["--sep=z"] if sep else [])
    try:
        proc = subprocess.run(argv, input=text.encode("utf-8"), capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PronunciationError(f"{where}: cannot run {binary} for phonemes: {e}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PronunciationError(f"{where}: {binary} -v {variety} exited with {proc.returncode}: {err[0] if err else 'no message'}")
    return proc.stdout.decode("utf-8", "replace")


def _tokens(reported: str) -> List[List[str]]:
    """``--sep=z`` output -> words -> phoneme tokens (a stress mark stays on its vowel's token)."""
    return [[t for t in word.split(_SEP) if t] for word in reported.split()]


def _is_vowel(ipa_token: str) -> bool:
    bare = ipa_token.lstrip(_IPA_PRIMARY + _IPA_SECONDARY)
    return bool(bare) and bare[0] in _IPA_VOWELS


def stress_shifts(x_words: List[List[str]], ipa_words: List[List[str]]) -> List[Tuple[str, int]]:
    """Mnemonic strings with one word's primary stress moved to another of its vowels.

    Only the stress marks change: the old primary is dropped, a secondary at the new place is
    replaced. Returns ``(mnemonics, vowel number)`` pairs (vowels counted from 1 over the term);
    empty when the mnemonic and IPA tokens do not align one to one.
    """
    if [len(w) for w in x_words] != [len(w) for w in ipa_words]:
        return []
    vowels = [(wi, ti) for wi, w in enumerate(ipa_words) for ti, t in enumerate(w) if _is_vowel(t)]
    out: List[Tuple[str, int]] = []
    for number, (wi, ti) in enumerate(vowels, start=1):
        word = x_words[wi]
        if word[ti].startswith(_X_PRIMARY) or not any(t.startswith(_X_PRIMARY) for t in word):
            continue
        moved = [t[1:] if t.startswith(_X_PRIMARY) else t for t in word]
        moved[ti] = _X_PRIMARY + moved[ti].lstrip(_X_PRIMARY + _X_SECONDARY)
        words = ["".join(w) for w in x_words]
        words[wi] = "".join(moved)
        out.append((" ".join(words), number))
    return out


def _seeded_order(items: Sequence[Any], seed: int, term: str) -> List[Any]:
    digest = hashlib.sha256(f"stress:{seed}:{term}".encode("utf-8")).digest()
    order = list(items)
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def generate_variants(terms: Iterable[str], max_variants: int = DEFAULT_MAX_VARIANTS, seed: int = 0,
                      varieties: Optional[Sequence[str]] = None, binary: str = "espeak-ng",
                      max_stress: int = DEFAULT_MAX_STRESS) -> Dict[str, List[Pronunciation]]:
    """Up to ``max_variants`` distinct pronunciations per term: varieties' rules, then stress shifts.

    Deterministic for a ``seed`` (the stress shifts kept are a seeded choice). A variety whose
    mnemonics *and* IPA equal an earlier one's is dropped. Stress shifts of the :data:`PRIMARY_VARIETY`
    form take at most ``max_stress`` slots and fewer than half (a real accent is the likelier guess
    than a moved stress), unless the varieties run out first.
    """
    terms = sorted(set(normalize_term(t) for t in terms) - {""})
    if max_variants < 1 or not terms:
        return {t: [] for t in terms}
    varieties = list(varieties) if varieties is not None else english_varieties(binary)
    with ThreadPoolExecutor(max_workers=max(1, min(2 * len(varieties), os.cpu_count() or 1))) as pool:
        # espeak-ng costs ~1 ms per term and call; the 2 x varieties processes are independent
        futures = {(v, ipa): pool.submit(espeak_phonemes, terms, v, binary, ipa, True)
                   for v in varieties for ipa in (False, True)}
        by_variety = {v: (futures[(v, False)].result(), futures[(v, True)].result()) for v in varieties}
    base = varieties[0]
    shifts = {}
    for i, t in enumerate(terms):
        candidates = stress_shifts(_tokens(by_variety[base][0][i]), _tokens(by_variety[base][1][i]))
        shifts[t] = _seeded_order(candidates, seed, t)[:max_stress]
    wanted = [(t, x) for t in terms for x, _n in shifts[t]]
    shift_ipa = dict(zip(wanted, espeak_phonemes([f"[[{x}]]" for _t, x in wanted], base, binary, ipa=True)))
    out: Dict[str, List[Pronunciation]] = {}
    for i, term in enumerate(terms):
        lts, seen = [], set()
        for v in varieties:
            x, ipa = (by_variety[v][0][i].replace(_SEP, ""), by_variety[v][1][i].replace(_SEP, ""))
            if (x, ipa) not in seen:
                seen.add((x, ipa))
                lts.append(Pronunciation(term, espeak=x, ipa=ipa, origin=v))
        stressed = [Pronunciation(term, espeak=x, ipa=shift_ipa[(term, x)], origin=f"{base}+stress{n}")
                    for x, n in shifts[term]]
        n_stress = min(len(stressed), max_stress, (max_variants - 1) // 2)
        n_lts = min(len(lts), max_variants - n_stress)
        n_stress = min(len(stressed), max_variants - n_lts)
        out[term] = lts[:n_lts] + stressed[:n_stress]
    return out


# --- per-utterance choice -------------------------------------------------------------------------
def choose(options: Sequence[Pronunciation], engine: str, seed: int, utt_id: str, term: str) -> Pronunciation:
    """One option usable by ``engine``, picked by a hash of (seed, utterance, term); else the engine's own.

    Options with the same phonemes for this engine count once (en-us and en-gb often share mnemonics
    and differ only in IPA), so no spelling is favoured for espeak.
    """
    first: Dict[str, Pronunciation] = {}
    for p in options:
        phonemes = p.phonemes(engine)
        if phonemes and phonemes not in first:
            first[phonemes] = p
    usable = list(first.values())
    if not usable:
        return Pronunciation(term, origin=ENGINE_ORIGIN)
    digest = hashlib.sha256(f"pron:{seed}:{utt_id}:{term}".encode("utf-8")).digest()
    return usable[int.from_bytes(digest[:8], "big") % len(usable)]


@dataclass
class PronunciationPlan:
    """Everything a run needs to pick pronunciations: the lexicon, generated variants, the seed."""

    lexicon: Lexicon
    variants: Dict[str, List[Pronunciation]]
    seed: int = 0
    binary: str = "espeak-ng"

    def __post_init__(self) -> None:
        self._matcher = TermMatcher(set(self.lexicon) | set(self.variants))

    def options(self, text: str, names: Any = None, line_field: Any = None,
                where: str = "<input>") -> Dict[str, List[Pronunciation]]:
        """Term -> options for one utterance's spoken ``text``: the line's own, the lexicon's, variants.

        Variants apply to the line's ``names`` (the terms it was written for) that no pronunciation
        was given for.
        """
        given = parse_line_field(line_field, where, self.binary) if line_field is not None else {}
        own = TermMatcher(given).spans(text)
        missing = sorted(set(given) - {term for _s, _e, term in own})
        if missing:
            raise PronunciationError(f"{where}: pronunciations: term {missing[0]!r} does not occur in the text {text!r}")
        line_names = _names(names) if self.variants else set()

        def options_of(term: str) -> Optional[List[Pronunciation]]:
            return given.get(term) or self.lexicon.get(term) or (self.variants.get(term) if term in line_names else None)

        usable = [span for span in own + self._matcher.spans(text) if options_of(span[2])]
        return {term: options_of(term) for _s, _e, term in resolve_overlaps(usable)}  # type: ignore[misc]

    def choose_for(self, text: str, engine: str, utt_id: str,
                   options: Mapping[str, Sequence[Pronunciation]]) -> List[Dict[str, Any]]:
        """Manifest records, in text order, of the pronunciation ``engine`` uses for each term."""
        order = [term for _s, _e, term in term_spans(text, options)]
        return [choose(options[t], engine, self.seed, utt_id, t).record(engine) for t in dict.fromkeys(order)]


def _names(names: Any) -> set:
    """The normalized terms an input line says it contains (its ``names`` field; ignored if malformed)."""
    if not isinstance(names, (list, tuple)):
        return set()
    out = set()
    for n in names:
        if isinstance(n, str):
            try:
                out.add(normalize_term(n))
            except PronunciationError:
                continue
    return out


def build_plan(names: Iterable[Any], lexicon: Optional[PathLike] = None, max_variants: int = 0, seed: int = 0,
               binary: str = "espeak-ng") -> PronunciationPlan:
    """The run's plan (built only when pronunciation control is on: without it nothing changes).

    ``names`` are the input lines' ``names`` fields; variants are generated once per distinct name
    that the lexicon does not cover (two espeak-ng processes per variety, not per term).
    """
    lex = read_lexicon(lexicon, binary) if lexicon is not None else {}
    variants: Dict[str, List[Pronunciation]] = {}
    if max_variants > 0:
        if not shutil.which(binary):
            raise PronunciationError(f"pronunciation variants need espeak-ng: {binary!r} is not on PATH")
        wanted = set().union(*(_names(n) for n in names)) - set(lex)
        variants = generate_variants(wanted, max_variants, seed, binary=binary)
    return PronunciationPlan(lexicon=lex, variants=variants, seed=seed, binary=binary)


def phonemes_for_engine(records: Optional[Sequence[Mapping[str, Any]]]) -> Dict[str, str]:
    """Term -> phonemes to hand to the engine, from an utterance's manifest records."""
    return {r["term"]: r["phonemes"] for r in records or () if r.get("phonemes")}
