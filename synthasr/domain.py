"""Bring your own domain: a term list and/or domain sentences -> text splits for TTS and training.

A user brings the words their recognizer must learn (a term list) and, if they have it, text from
their domain. This module turns either or both into the same four splits the recipe speaks and
trains on (``train``, ``dev``, ``test``, ``test_unseen``), plus the files that make the term list drive
everything downstream: ``names_used.txt`` (hotwords, term recall split seen / held out) and
``terms.tsv`` (the merged list with spoken forms and phonemes).

Why the pieces look the way they do:

* Terms are keyed by their :func:`synthasr.text.normalize`-d form, the same form transcripts and
  scoring use, so ``Lipitor``, ``LIPITOR`` and ``lipitor`` are one term and ``Co-Amoxiclav`` is the
  phrase ``co amoxiclav`` everywhere (metrics, hotwords, mining).
* Mentions are found with :class:`synthasr.score.TermList` (longest term first), the matcher that
  later counts term recall: what is mined as a mention here is exactly what is scored there.
* A spoken form (a respelling) changes only what TTS says; the transcript keeps the written term,
  because the recognizer must output what a user would write. It reaches TTS the way every given
  pronunciation does (:mod:`tts_gen.pronounce`): a line's ``pronunciations`` field,
  ``{term as written in the transcript: espeak-ng mnemonics}``; the respelling's mnemonics are what
  ``espeak-ng -x`` says for it. One channel means the manifest records what was said, and engines with
  phoneme input (espeak-ng, piper) say the respelling in every voice. A phoneme column is used as given.
* Every input problem is one line naming the file and line, and all problems of a file are reported
  together, so a user fixes a term list in one pass instead of one error per run.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import string
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from synthasr.score import TermList
from synthasr.text import NormalizationError, normalize
from synthasr.utils.io import atomic_write, ensure_dir

__all__ = [
    "DomainError", "TermEntry", "DomainSentence", "DomainText", "Template", "Templates", "Sentence",
    "DomainSplits", "SPLITS", "read_term_list", "parse_term_lines", "read_domain_text", "parse_domain_lines",
    "read_templates", "parse_templates", "term_finder", "mine_mentions", "fill_template", "split_terms",
    "build_splits", "write_domain", "prepare_domain", "respelling_phonemes", "pronunciation_table",
]

PathLike = Union[str, Path]
SPLITS = ("train", "dev", "test", "test_unseen")
MAX_COLUMNS = 3            # term, spoken form, phonemes
MAX_SENTENCE_WORDS = 100   # what tts_gen.generate.MAX_WORDS lets through; refused here, before any TTS
MAX_REPORTED = 20          # problems listed per file; the rest are counted
TERM_SLOTS = ("term", "term2")
# Every C0/C1 control character except TAB (the column separator), plus the Unicode line and
# paragraph separators, which would split a line in some readers and not in others.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_SLOT_DEF = re.compile(r"^@(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<values>.*)$")


class DomainError(ValueError):
    """Unusable domain input. ``problems`` holds one line per problem, each naming file and line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_REPORTED]
        more = len(self.problems) - len(shown)
        super().__init__("\n".join(shown + ([f"... and {more} more problem(s)"] if more > 0 else [])))


# ---------------------------------------------------------------------------------------------
# Reading files line by line with exact line numbers
# ---------------------------------------------------------------------------------------------


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DomainError([f"{path}: cannot read {what}: {e.strerror or e}"]) from None


def _decoded_lines(path: Path, what: str, problems: List[str]) -> Iterator[Tuple[int, str]]:
    r"""``(line_no, text)`` per line; a line that is not UTF-8 becomes a problem naming its line.

    Lines end at ``\n`` only (a ``\r`` before it is dropped), so numbers match what an editor shows;
    decoding line by line is what lets a bad byte be reported with its line instead of a file offset.
    """
    data = _read_bytes(path, what)
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    for line_no, chunk in enumerate(chunks, start=1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{path}:{line_no}: not UTF-8 (byte 0x{chunk[e.start]:02x} at column {e.start + 1})")
            continue
        if line_no == 1 and line.startswith("\ufeff"):
            line = line[1:]  # a byte-order mark is an encoding marker, not text
        yield line_no, line[:-1] if line.endswith("\r") else line


def _raise_if(problems: Sequence[str]) -> None:
    if problems:
        raise DomainError(problems)


# ---------------------------------------------------------------------------------------------
# Term list
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TermEntry:
    """One term of the user's list, after merging duplicates and case variants.

    ``term`` is the written form (the first spelling in the file): what templates write and what the
    transcript is normalized from. ``normalized`` is the key everything downstream uses.
    """

    term: str
    spoken: Optional[str] = None      # a respelling TTS says instead of ``term`` ("zuh-REL-toe")
    phonemes: Optional[str] = None    # espeak-ng mnemonics (``espeak-ng -x``), handed to TTS as given
    line: int = 0
    normalized: str = ""
    merged_lines: Tuple[int, ...] = ()  # later lines that repeated this term (case variants, duplicates)



def _control_problem(text: str, where: str) -> Optional[str]:
    m = _CONTROL.search(text)
    if m is None:
        return None
    return f"{where}: control character U+{ord(m.group(0)):04X} at column {m.start() + 1}"


def _normalized_or_problem(text: str, what: str, where: str, problems: List[str]) -> Optional[str]:
    try:
        words = normalize(text)
    except NormalizationError as e:
        problems.append(f"{where}: {what} {text!r}: {e}")
        return None
    if not words:
        problems.append(f"{where}: {what} {text!r} normalizes to nothing (no letters or digits)")
        return None
    return words


def _parse_term_line(line: str, line_no: int, where: str, problems: List[str]) -> Optional[TermEntry]:
    control = _control_problem(line, where)
    if control:
        problems.append(control)
        return None
    cols = line.split("\t")
    if len(cols) > MAX_COLUMNS:
        problems.append(f"{where}: {len(cols)} tab-separated columns; expected at most {MAX_COLUMNS} "
                        "(term, spoken form, phonemes)")
        return None
    term, spoken, phonemes = (cols + ["", ""])[:MAX_COLUMNS]
    term, spoken, phonemes = term.strip(), spoken.strip(), phonemes.strip()
    if not term:
        problems.append(f"{where}: empty term in column 1")
        return None
    normalized = _normalized_or_problem(term, "term", where, problems)
    if normalized is None:
        return None
    if spoken and _normalized_or_problem(spoken, "spoken form", where, problems) is None:
        return None
    if "[" in phonemes or "]" in phonemes:
        problems.append(f"{where}: phonemes {phonemes!r} contain a bracket (TTS input wraps them in [[...]])")
        return None
    return TermEntry(term, spoken or None, phonemes or None, line_no, normalized)


def _merge(first: TermEntry, again: TermEntry, where: str, problems: List[str]) -> TermEntry:
    """Duplicates and case variants are one term; they may add a missing column but not contradict one."""
    for column in ("spoken", "phonemes"):
        a, b = getattr(first, column), getattr(again, column)
        if a and b and (normalize(a) != normalize(b) if column == "spoken" else a != b):
            label = "spoken form" if column == "spoken" else "phonemes"
            problems.append(f"{where}: term {again.term!r} repeats line {first.line} ({first.term!r}) "
                            f"with a different {label}: {b!r} vs {a!r}")
            return first
    return replace(first, spoken=first.spoken or again.spoken, phonemes=first.phonemes or again.phonemes,
                   merged_lines=first.merged_lines + (again.line,))


def parse_term_lines(lines: Iterable[Tuple[int, str]], source: str, problems: Optional[List[str]] = None
                     ) -> List[TermEntry]:
    """Terms from ``(line_no, line)`` pairs; blank lines and ``#`` comments are skipped."""
    problems = [] if problems is None else problems
    entries: Dict[str, TermEntry] = {}
    for line_no, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source}:{line_no}"
        entry = _parse_term_line(line, line_no, where, problems)
        if entry is None:
            continue
        first = entries.get(entry.normalized)
        entries[entry.normalized] = entry if first is None else _merge(first, entry, where, problems)
    if not entries and not problems:
        problems.append(f"{source}: no terms (every line is blank or a # comment)")
    _raise_if(problems)
    return list(entries.values())


def read_term_list(path: PathLike) -> List[TermEntry]:
    """Read a term list: UTF-8, one term a line, optional TAB columns ``spoken form`` and ``phonemes``.

    Raises :class:`DomainError` listing every problem (one line each, ``file:line: ...``).
    """
    path = Path(path)
    problems: List[str] = []
    return parse_term_lines(list(_decoded_lines(path, "term list", problems)), str(path), problems)


def term_finder(terms: Sequence[TermEntry], source: str = "<terms>") -> TermList:
    """The matcher term recall is scored with, so mining and scoring agree on what a mention is."""
    return TermList.from_terms([t.normalized for t in terms], source=source)


def mine_mentions(sentences: Iterable[str], terms: Union[Sequence[TermEntry], TermList]) -> List[Tuple[str, ...]]:
    """Per (normalized) sentence, the distinct terms it mentions, in order of first mention."""
    finder = terms if isinstance(terms, TermList) else term_finder(terms)
    out = []
    for sentence in sentences:
        found: Dict[str, None] = {}
        for _, _, words in finder.find(sentence.split()):
            found.setdefault(" ".join(words))
        out.append(tuple(found))
    return out


# ---------------------------------------------------------------------------------------------
# Domain text
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSentence:
    text: str                        # normalized
    raw: str                         # as the user wrote it
    line: int
    source_id: Optional[str] = None  # the JSONL "id", when given


@dataclass
class DomainText:
    sentences: List[DomainSentence]
    source: str
    duplicates: int = 0   # lines whose normalized text repeats an earlier line (dropped)
    empty: int = 0        # lines with nothing to say after normalization ("***", "--") (dropped)


def _jsonl_sentence(line: str, where: str, problems: List[str]) -> Optional[Tuple[str, Optional[str]]]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        problems.append(f"{where}: invalid JSON: {e.msg} at column {e.colno}")
        return None
    if not isinstance(obj, dict) or "text" not in obj:
        problems.append(f"{where}: expected a JSON object with a \"text\" key")
        return None
    if not isinstance(obj["text"], str):
        problems.append(f"{where}: \"text\" must be a string, got {type(obj['text']).__name__}")
        return None
    source_id = obj.get("id")
    return obj["text"], None if source_id is None else str(source_id)


def parse_domain_lines(lines: Sequence[Tuple[int, str]], source: str, jsonl: bool,
                       problems: Optional[List[str]] = None) -> DomainText:
    """Sentences from ``(line_no, line)`` pairs: plain text (one sentence a line) or JSONL ``{"text"}``."""
    problems = [] if problems is None else problems
    out = DomainText([], source)
    seen: Set[str] = set()
    for line_no, line in lines:
        if not line.strip():
            continue
        where = f"{source}:{line_no}"
        parsed = _jsonl_sentence(line, where, problems) if jsonl else (line.strip(), None)
        if parsed is None:
            continue
        raw, source_id = parsed
        try:
            text = normalize(raw)
        except NormalizationError as e:
            problems.append(f"{where}: {e}")
            continue
        if not text:
            out.empty += 1
            continue
        if len(text.split()) > MAX_SENTENCE_WORDS:
            problems.append(f"{where}: {len(text.split())} words after normalization; at most "
                            f"{MAX_SENTENCE_WORDS} are spoken in one utterance (split the line)")
            continue
        if text in seen:
            out.duplicates += 1
            continue
        seen.add(text)
        out.sentences.append(DomainSentence(text, raw.strip(), line_no, source_id))
    _raise_if(problems)
    return out


def read_domain_text(path: PathLike) -> DomainText:
    """Read domain sentences; JSONL when the name ends in ``.jsonl`` or the first line starts with ``{``."""
    path = Path(path)
    problems: List[str] = []
    lines = list(_decoded_lines(path, "domain text", problems))
    first = next((ln.strip() for _, ln in lines if ln.strip()), "")
    jsonl = path.name.endswith(".jsonl") or first.startswith("{")
    text = parse_domain_lines(lines, str(path), jsonl, problems)
    if not text.sentences:
        raise DomainError([f"{path}: no sentences (the file is empty or every line is blank)"])
    return text


# ---------------------------------------------------------------------------------------------
# Carrier templates
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    text: str
    line: int
    slots: Tuple[str, ...]  # distinct slot names in order of appearance

    @property
    def needs_two(self) -> bool:
        return "term2" in self.slots


@dataclass(frozen=True)
class Templates:
    """Carrier sentences with ``{slot}`` fields, and the values of every slot except the terms."""

    templates: Tuple[Template, ...]
    values: Mapping[str, Tuple[str, ...]]
    source: str = "<templates>"


def _slot_values(name: str, text: str, where: str, problems: List[str]) -> Optional[Tuple[str, ...]]:
    values = tuple(v.strip() for v in text.split("|"))
    if not values or any(not v for v in values):
        problems.append(f"{where}: slot @{name} has an empty value (write values as 'a | b | c')")
        return None
    for v in values:
        if _normalized_or_problem(v, f"value of slot @{name}", where, problems) is None:
            return None
    return values


def _template_slots(text: str, where: str, problems: List[str]) -> Optional[Tuple[str, ...]]:
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as e:
        problems.append(f"{where}: bad braces in template ({e}); write a literal brace as {{{{ or }}}}")
        return None
    slots: Dict[str, None] = {}
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or spec or conversion:
            problems.append(f"{where}: slot {{{name}{'!' + conversion if conversion else ''}"
                            f"{':' + spec if spec else ''}}} is not a plain {{name}}")
            return None
        slots.setdefault(name)
    return tuple(slots)


def parse_templates(lines: Iterable[Tuple[int, str]], source: str, problems: Optional[List[str]] = None
                    ) -> Templates:
    """Templates file: ``@name = a | b | c`` defines slot values; every other line is a template.

    ``{term}`` (required in every template) and ``{term2}`` are filled from the term list; any other
    slot must be defined in the file. Blank lines and ``#`` comments are skipped.
    """
    problems = [] if problems is None else problems
    values: Dict[str, Tuple[str, ...]] = {}
    defined_on: Dict[str, int] = {}
    pending: List[Tuple[int, str]] = []
    for line_no, line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source}:{line_no}"
        control = _control_problem(line, where)
        if control:
            problems.append(control)
            continue
        m = _SLOT_DEF.match(stripped)
        if m:
            name = m.group("name")
            if name in TERM_SLOTS:
                problems.append(f"{where}: @{name} cannot be defined: it is filled from the term list")
            elif name in values:
                problems.append(f"{where}: slot @{name} defined again (first on line {defined_on[name]})")
            else:
                got = _slot_values(name, m.group("values"), where, problems)
                if got is not None:
                    values[name], defined_on[name] = got, line_no
            continue
        if stripped.startswith("@"):
            problems.append(f"{where}: a slot definition reads '@name = a | b | c'")
            continue
        pending.append((line_no, stripped))
    templates = []
    known = sorted(set(TERM_SLOTS) | set(values))
    for line_no, text in pending:
        where = f"{source}:{line_no}"
        slots = _template_slots(text, where, problems)
        if slots is None:
            continue
        unknown = [s for s in slots if s not in known]
        if unknown:
            problems.append(f"{where}: unknown slot {{{unknown[0]}}} (known: {', '.join(known)}; define it "
                            f"with '@{unknown[0]} = a | b')")
            continue
        if "term" not in slots:
            problems.append(f"{where}: template has no {{term}} slot")
            continue
        filler = {s: "term" for s in slots}
        if _normalized_or_problem(text.format(**filler), "template", where, problems) is None:
            continue
        templates.append(Template(text, line_no, slots))
    if not templates and not problems:
        problems.append(f"{source}: no templates (only blank lines, comments and slot definitions)")
    _raise_if(problems)
    return Templates(tuple(templates), values, source)


def read_templates(path: PathLike) -> Templates:
    path = Path(path)
    problems: List[str] = []
    return parse_templates(list(_decoded_lines(path, "templates", problems)), str(path), problems)


def fill_template(template: Template, values: Mapping[str, Sequence[str]], term: str, term2: Optional[str],
                  rng: random.Random) -> str:
    """The template with every slot filled: terms as given, other slots drawn from ``values``.

    A slot used twice gets one value (``{amount}`` means the same amount within a sentence).
    """
    if template.needs_two and term2 is None:
        raise ValueError(f"template line {template.line} needs a second term")
    chosen: Dict[str, str] = {"term": term, "term2": term2 or ""}
    for slot in template.slots:
        if slot not in chosen:
            chosen[slot] = rng.choice(list(values[slot]))
    return template.text.format(**chosen)


# ---------------------------------------------------------------------------------------------
# Sentences and splits
# ---------------------------------------------------------------------------------------------


@dataclass
class Sentence:
    """One utterance to synthesize: its transcript (``text``) and the term pronunciations TTS is told."""

    text: str
    raw: str
    terms: Tuple[str, ...]            # normalized terms mentioned, in order
    source: str                       # "template" or "<domain text file name>:<line>"
    template: Optional[int] = None    # line of the template in the templates file
    pronunciations: Dict[str, str] = field(default_factory=dict)  # term (as in text) -> espeak-ng mnemonics
    source_id: Optional[str] = None


def respelling_phonemes(spoken: str, binary: str = "espeak-ng", voice: str = "en-us") -> str:
    """espeak-ng mnemonics for a respelling ("zuh-REL-toe" -> ``z'Vr'Elt'oU``).

    Lowercased first: espeak-ng spells an all-capitals word letter by letter, while respellings use
    capitals for stress. Hyphens stay, so the syllables are read as one word. The text goes in on
    stdin, so a respelling can never be taken for an option.
    """
    text = spoken.lower() if re.fullmatch(r"[A-Za-z' -]+", spoken) else normalize(spoken)
    if shutil.which(binary) is None:
        raise DomainError([f"spoken form {spoken!r}: {binary!r} is not on PATH (it turns respellings into "
                           "phonemes); install espeak-ng or give the phonemes in column 3"])
    try:
        done = subprocess.run([binary, "-q", "-x", "-v", voice, "--stdin"], input=text + "\n", capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DomainError([f"spoken form {spoken!r}: {binary} failed: {e}"]) from None
    phonemes = " ".join(done.stdout.split())
    if done.returncode != 0 or not phonemes:
        raise DomainError([f"spoken form {spoken!r}: {binary} gave no phonemes (exit {done.returncode}: "
                           f"{done.stderr.strip()[:200]})"])
    return phonemes


def pronunciation_table(terms: Sequence[TermEntry], convert: Callable[[str], str] = respelling_phonemes,
                        source: str = "<terms>") -> Dict[str, str]:
    """Term -> mnemonics TTS is told to use: the phoneme column, else the respelling's phonemes."""
    table = {}
    for t in terms:
        if t.phonemes:
            table[t.normalized] = t.phonemes
        elif t.spoken:
            try:
                table[t.normalized] = convert(t.spoken)
            except DomainError as e:
                raise DomainError([f"{source}:{t.line}: {p}" for p in e.problems]) from None
    return table


def _mentions(text: str, finder: TermList, table: Mapping[str, str]) -> Tuple[Tuple[str, ...], Dict[str, str]]:
    """(distinct terms mentioned, their pronunciations) of a normalized sentence."""
    mentions: Dict[str, None] = {}
    for _, _, term_words in finder.find(text.split()):
        mentions.setdefault(" ".join(term_words))
    return tuple(mentions), {m: table[m] for m in mentions if m in table}


class _TemplateSentences:
    """Draws carrier sentences that are unique across all splits and mention exactly what they should."""

    def __init__(self, templates: Templates, finder: TermList, table: Mapping[str, str],
                 rng: random.Random, used: Set[str], max_tries: int = 200) -> None:
        self.templates, self.finder, self.table = templates, finder, table
        self.rng, self.used, self.max_tries = rng, used, max_tries

    def make(self, first: TermEntry, partners: Sequence[TermEntry], banned: Set[str]) -> Sentence:
        others = [p for p in partners if p.normalized != first.normalized]
        for _ in range(self.max_tries):
            template = self.templates.templates[self.rng.randrange(len(self.templates.templates))]
            second = self.rng.choice(others) if template.needs_two and others else None
            if template.needs_two and second is None:
                continue
            raw = fill_template(template, self.templates.values, first.term, second.term if second else None, self.rng)
            text = normalize(raw)
            mentions, pron = _mentions(text, self.finder, self.table)
            wanted = {first.normalized} | ({second.normalized} if second else set())
            # A term written next to a slot value can normalize differently ("B12 500"), and a slot
            # value can itself be a term: such a sentence is redrawn, never mislabelled.
            if text in self.used or not wanted <= set(mentions) or banned & set(mentions):
                continue
            self.used.add(text)
            return Sentence(text, raw, mentions, "template", template.line, pron)
        raise DomainError([f"{self.templates.source}: could not draw a new sentence for term {first.term!r} "
                           f"(line {first.line}) in {self.max_tries} tries; add templates or lower the sizes"])


@dataclass
class DomainSplits:
    seen: List[TermEntry]
    unseen: List[TermEntry]
    splits: Dict[str, List[Sentence]]
    stats: dict


def split_terms(terms: Sequence[TermEntry], unseen_fraction: float, rng: random.Random
                ) -> Tuple[List[TermEntry], List[TermEntry]]:
    """Seen / held-out terms: a seeded ``unseen_fraction`` (at least one when > 0) is held out."""
    if len(terms) < 2:
        raise DomainError([f"need at least 2 terms to hold some out, got {len(terms)}"])
    if not 0.0 <= unseen_fraction < 1.0:
        raise DomainError([f"unseen fraction must be in [0, 1), got {unseen_fraction}"])
    order = sorted(terms, key=lambda t: t.normalized)
    rng.shuffle(order)
    n_unseen = max(1, round(unseen_fraction * len(order))) if unseen_fraction > 0 else 0
    if n_unseen >= len(order):
        raise DomainError([f"unseen fraction {unseen_fraction} holds out all {len(order)} terms"])
    key = lambda t: t.normalized  # noqa: E731
    return sorted(order[n_unseen:], key=key), sorted(order[:n_unseen], key=key)


def _proportional(n_pool: int, sizes: Mapping[str, int]) -> Dict[str, int]:
    """How many domain sentences dev and test take: their share of the requested sizes, capped."""
    total = sizes["train"] + sizes["dev"] + sizes["test"]
    if total == 0:
        return {"dev": 0, "test": 0}
    return {s: min(sizes[s], round(n_pool * sizes[s] / total)) for s in ("dev", "test")}


def _cycle(first: Sequence[TermEntry], rest: Sequence[TermEntry], n: int) -> List[TermEntry]:
    order = list(first) + [t for t in rest if t not in first]
    return [order[i % len(order)] for i in range(n)] if order else []


def build_splits(terms: Sequence[TermEntry], domain_text: Optional[DomainText], templates: Optional[Templates],
                 sizes: Mapping[str, int], unseen_fraction: float, seed: int,
                 pronunciations: Optional[Mapping[str, str]] = None) -> DomainSplits:
    """Domain sentences first, carrier sentences to top each split up to its size.

    Domain sentences that mention a held-out term can only go to ``test_unseen``; the others are
    shared between dev/test (their share of the requested sizes) and train (the rest, all of it).
    Template sentences then fill every split to its size, and train gets at least one sentence for
    every seen term, so "seen" always means "in the training text". ``pronunciations`` (term ->
    mnemonics, see :func:`pronunciation_table`) is attached to every sentence that mentions the term.
    """
    missing_sizes = [s for s in SPLITS if s not in sizes]
    if missing_sizes:
        raise ValueError(f"sizes lack {missing_sizes}")
    rng = random.Random(seed)
    seen, unseen = split_terms(terms, unseen_fraction, rng)
    table = dict(pronunciations or {})
    finder = term_finder(terms)
    unseen_keys = {t.normalized for t in unseen}
    used: Set[str] = set()
    pool: List[Sentence] = []
    unseen_pool: List[Sentence] = []
    mention_counts = {t.normalized: 0 for t in terms}
    name = Path(domain_text.source).name if domain_text else ""
    for ds in domain_text.sentences if domain_text else []:
        mentions, pron = _mentions(ds.text, finder, table)
        for m in mentions:
            mention_counts[m] += 1
        used.add(ds.text)
        s = Sentence(ds.text, ds.raw, mentions, f"{name}:{ds.line}", None, pron, ds.source_id)
        (unseen_pool if unseen_keys & set(mentions) else pool).append(s)
    rng.shuffle(pool)
    share = _proportional(len(pool), sizes)
    splits: Dict[str, List[Sentence]] = {
        "dev": pool[:share["dev"]],
        "test": pool[share["dev"]: share["dev"] + share["test"]],
        "train": pool[share["dev"] + share["test"]:],
        "test_unseen": unseen_pool[:sizes["test_unseen"]],
    }
    from_domain = {s: len(v) for s, v in splits.items()}

    def top_up(split: str, first_terms: List[TermEntry], partners: Sequence[TermEntry], banned: Set[str]) -> None:
        if not first_terms:
            return
        if templates is None:
            raise DomainError([f"{split}: {len(first_terms)} more sentence(s) needed but no templates file given "
                               "(the domain text alone does not fill the requested sizes)"])
        for first in first_terms:
            splits[split].append(factory.make(first, partners, banned))

    factory = _TemplateSentences(templates, finder, table, rng, used) if templates else None
    in_train = {m for s in splits["train"] for m in s.terms}
    missing = [t for t in seen if t.normalized not in in_train]
    n_train = max(sizes["train"] - len(splits["train"]), len(missing))
    top_up("train", _cycle(missing, rng.sample(seen, len(seen)), n_train), seen, unseen_keys)
    for split in ("dev", "test"):
        n = max(0, sizes[split] - len(splits[split]))
        top_up(split, [rng.choice(seen) for _ in range(n)], seen, unseen_keys)
    in_unseen = {m for s in splits["test_unseen"] for m in s.terms}
    n_unseen = max(0, sizes["test_unseen"] - len(splits["test_unseen"]))
    if n_unseen and not unseen:
        raise DomainError(["test_unseen needs held-out terms: raise the unseen fraction above 0"])
    unseen_missing = [t for t in unseen if t.normalized not in in_unseen]
    top_up("test_unseen", _cycle(unseen_missing, rng.sample(unseen, len(unseen)), n_unseen),
           unseen if len(unseen) > 1 else seen, set())
    _check_no_leak(splits, unseen_keys)
    stats = {
        "terms": len(terms),
        "terms_seen": len(seen),
        "terms_unseen": len(unseen),
        "merged_duplicate_lines": sum(len(t.merged_lines) for t in terms),
        "terms_with_spoken_form": sum(t.spoken is not None for t in terms),
        "terms_with_phonemes": sum(t.phonemes is not None for t in terms),
        "terms_with_pronunciation": len(table),
        "sentences_from_domain_text": from_domain,
        "sentences_from_templates": {s: len(v) - from_domain[s] for s, v in splits.items()},
        "domain_text_unseen_dropped": max(0, len(unseen_pool) - sizes["test_unseen"]),
        "domain_text_duplicates": domain_text.duplicates if domain_text else 0,
        "domain_text_mentions": mention_counts if domain_text else {},
        "terms_without_domain_mentions": sorted(k for k, v in mention_counts.items() if not v) if domain_text else [],
    }
    return DomainSplits(seen, unseen, splits, stats)


def _check_no_leak(splits: Mapping[str, Sequence[Sentence]], unseen_keys: Set[str]) -> None:
    """The split's promise, checked on the result rather than trusted from the construction."""
    for split in ("train", "dev", "test"):
        for s in splits[split]:
            leaked = unseen_keys & set(s.terms)
            if leaked:
                raise AssertionError(f"held-out term {sorted(leaked)[0]!r} in {split}: {s.text!r}")


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _record(prefix: str, split: str, i: int, s: Sentence) -> dict:
    rec = {"id": f"{prefix}-{split.replace('_', '-')}-{i:06d}", "text": s.text, "raw": s.raw,
           "names": list(s.terms), "template": s.template, "source": s.source}
    if s.source_id is not None:
        rec["source_id"] = s.source_id
    if s.pronunciations:
        rec["pronunciations"] = dict(sorted(s.pronunciations.items()))
    return rec


def write_domain(out_dir: PathLike, result: DomainSplits, prefix: str = "med") -> Dict[str, Path]:
    """Write ``terms.tsv``, ``names_used.txt`` and ``<prefix>_<split>.jsonl`` (each atomically).

    ``names_used.txt`` (``term<TAB>kind<TAB>seen|unseen``) is the file the recipe already reads for
    hotwords and for term recall split by role, so a user's list changes no later stage.
    """
    out = ensure_dir(out_dir)
    paths = {"terms": out / "terms.tsv", "names_used": out / "names_used.txt"}
    roles = [(t, "seen") for t in result.seen] + [(t, "unseen") for t in result.unseen]
    roles.sort(key=lambda r: r[0].normalized)
    with atomic_write(paths["terms"]) as f:
        f.write("# normalized\twritten\tspoken\tphonemes\trole\tline\n")
        for t, role in roles:
            f.write(f"{t.normalized}\t{t.term}\t{t.spoken or ''}\t{t.phonemes or ''}\t{role}\t{t.line}\n")
    with atomic_write(paths["names_used"]) as f:
        f.write("".join(f"{t.normalized}\tterm\t{role}\n" for t, role in roles))
    for split in SPLITS:
        paths[split] = out / f"{prefix}_{split}.jsonl"
        with atomic_write(paths[split]) as f:
            for i, s in enumerate(result.splits[split], start=1):
                f.write(json.dumps(_record(prefix, split, i, s), ensure_ascii=False) + "\n")
    return paths


def prepare_domain(out_dir: PathLike, sizes: Mapping[str, int], unseen_fraction: float, seed: int,
                   terms: Union[PathLike, Sequence[TermEntry]], domain_text: Optional[PathLike] = None,
                   templates: Optional[PathLike] = None, prefix: str = "med",
                   log: Callable[[str], None] = lambda msg: None) -> DomainSplits:
    """Read the inputs, build the splits and write them: the library behind ``synthasr prepare-domain``."""
    entries = read_term_list(terms) if isinstance(terms, (str, Path)) else list(terms)
    text = read_domain_text(domain_text) if domain_text is not None else None
    tmpl = read_templates(templates) if templates is not None else None
    log(f"{len(entries)} terms" + (f", {len(text.sentences)} domain sentences" if text else "")
        + (f", {len(tmpl.templates)} templates" if tmpl else ""))
    result = build_splits(entries, text, tmpl, sizes, unseen_fraction, seed, pronunciation_table(entries, source=str(terms) if isinstance(terms, (str, Path)) else "<terms>"))
    write_domain(out_dir, result, prefix)
    return result
