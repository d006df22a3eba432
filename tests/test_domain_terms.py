"""Bring your own domain (synthasr.domain, synthasr prepare-domain, prepare_text.py --terms).

Term files, templates and domain text each report every problem as one line naming file and line;
the split never lets a held-out term into training text; the recipe's later stages read the result.
"""
import importlib.util
import json
import random
import re
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from synthasr import domain as D
from synthasr.score import TermList
from synthasr.text import is_normalized, normalize

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "medication"
SIZES = {"train": 40, "dev": 6, "test": 8, "test_unseen": 8}


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _entries(*terms):
    return D.parse_term_lines(list(enumerate(terms, start=1)), "<test>")


def _has_phrase(text, term):
    """Independent of TermList: ``term`` as whole words inside ``text``."""
    return f" {term} " in f" {text} "


def _templates(text):
    return D.parse_templates(list(enumerate(text.splitlines(), start=1)), "t.txt")


# ---------------------------------------------------------------------------------------------
# Term list
# ---------------------------------------------------------------------------------------------

BAD_TERM_LINES = [
    ("\tLIP-ih-tor", "empty term in column 1"),
    ("lipitor\tlip\tl'Ip\textra", "4 tab-separated columns; expected at most 3"),
    (b"caf\xe9 au lait", "not UTF-8 (byte 0xe9 at column 4)"),
    ("lipi\x07tor", "control character U+0007 at column 5"),
    ("lipitor\x1b[0m", "control character U+001B"),
    ("---", "normalizes to nothing"),
    ("\u00ae\u2122", "normalizes to nothing"),
    ("\u836f\u7269", "cannot normalize character"),
    ("lipitor\t***", "spoken form '***' normalizes to nothing"),
    ("lipitor\t\tl'Ip[It]O@", "contain a bracket"),
    ("Good Term\tgud-term", "different spoken form"),      # conflicts with line 1's respelling
    ("GOOD TERM\t\tg'Ud", "different phonemes"),            # conflicts with line 1's phonemes
]


@pytest.mark.parametrize("bad,message", BAD_TERM_LINES, ids=[m for _, m in BAD_TERM_LINES])
def test_every_malformed_term_line_is_one_line_with_file_and_line(tmp_path, bad, message):
    head = b"good term\tgood-turm\tg'Ud t'3:m\n# a comment\n\n"
    body = bad if isinstance(bad, bytes) else bad.encode("utf-8")
    path = _write(tmp_path, "terms.tsv", head + body + b"\nanother term\n")
    with pytest.raises(D.DomainError) as err:
        D.read_term_list(path)
    assert err.value.problems == [str(err.value)], "exactly one problem, and it is the whole message"
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{path}:4: "), str(err.value)
    assert message in str(err.value)


def test_all_problems_of_a_file_are_reported_at_once(tmp_path):
    lines = ["ok"] + ["---"] * 30 + ["\tx"]
    path = _write(tmp_path, "t.txt", "\n".join(lines) + "\n")
    with pytest.raises(D.DomainError) as err:
        D.read_term_list(path)
    assert len(err.value.problems) == 31
    assert [p.split(":")[1] for p in err.value.problems] == [str(n) for n in range(2, 33)]
    shown = str(err.value).splitlines()
    assert len(shown) == D.MAX_REPORTED + 1 and shown[-1] == "... and 11 more problem(s)"


def test_unreadable_and_empty_term_files(tmp_path):
    with pytest.raises(D.DomainError, match=r"nope\.txt: cannot read term list"):
        D.read_term_list(tmp_path / "nope.txt")
    empty = _write(tmp_path, "empty.txt", "# only a comment\n\n   \n")
    with pytest.raises(D.DomainError, match=r"empty\.txt: no terms"):
        D.read_term_list(empty)


def test_duplicates_and_case_variants_merge(tmp_path):
    path = _write(tmp_path, "t.tsv", "\ufeffLipitor\r\nLIPITOR\n\nlipitor\tLIP-ih-tor\n# x\nlipitor\t\tl'IpItO@\nzoloft\n")
    entries = D.read_term_list(path)
    assert [e.normalized for e in entries] == ["lipitor", "zoloft"]
    lipitor = entries[0]
    assert (lipitor.term, lipitor.spoken, lipitor.phonemes) == ("Lipitor", "LIP-ih-tor", "l'IpItO@")
    assert lipitor.line == 1 and lipitor.merged_lines == (2, 4, 6)
    # the same respelling written differently is no conflict (compared normalized)
    assert _entries("Xarelto\tzuh-REL-toe", "xarelto\tZuh rel toe")[0].merged_lines == (2,)


def test_multi_word_digit_and_hyphen_terms():
    entries = _entries("insulin glargine", "Co-Amoxiclav", "Vitamin B12", "Tylenol 3", "Zyrtec-D", "5-FU",
                       "insulin", "St. John's wort")
    assert [e.normalized for e in entries] == [
        "insulin glargine", "co amoxiclav", "vitamin b twelve", "tylenol three", "zyrtec d", "five fu",
        "insulin", "st john's wort"]
    sentences = [normalize(s) for s in (
        "Take Tylenol 3 and Zyrtec-D.", "Insulin glargine at 10 pm", "insulin only", "co-amoxiclav, 5-FU",
        "A vitamin, B12?", "St. John's wort tea")]
    assert D.mine_mentions(sentences, entries) == [
        ("tylenol three", "zyrtec d"), ("insulin glargine",), ("insulin",), ("co amoxiclav", "five fu"),
        ("vitamin b twelve",), ("st john's wort",)]


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------

BAD_TEMPLATES = [
    ("Take {dose} of {term}.", "unknown slot {dose}"),
    ("Refill please.", "template has no {term} slot"),
    ("Take {term of it.", "bad braces"),
    ("Take {term:>10}.", "is not a plain {name}"),
    ("Take {} of {term}.", "is not a plain {name}"),
    ("@amount = 2 | 3", "slot @amount defined again (first on line 1)"),
    ("@term = aspirin", "@term cannot be defined"),
    ("@unit = mg | | mL", "slot @unit has an empty value"),
    ("@unit = mg | \u836f", "value of slot @unit"),
    ("@ unit: mg", "a slot definition reads"),
    ("Take {term} \u2603 now.", "template 'Take term \u2603 now.'"),
    ("Take {term}\x00.", "control character U+0000"),
]


@pytest.mark.parametrize("bad,message", BAD_TEMPLATES, ids=[m for _, m in BAD_TEMPLATES])
def test_bad_template_lines_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, "templates.txt", "@amount = 1 | 2\n# comment\nTake {amount} mg of {term}.\n" + bad + "\n")
    with pytest.raises(D.DomainError) as err:
        D.read_templates(path)
    assert err.value.problems == [str(err.value)]
    assert str(err.value).startswith(f"{path}:4: ") and message in str(err.value), str(err.value)


def test_unknown_slot_error_lists_known_slots():
    with pytest.raises(D.DomainError, match=r"t\.txt:2: unknown slot \{freq\} \(known: amount, later, term, term2;"):
        _templates("@amount = 1\nTake {term} {freq}.\n@later = x")
    # a slot may be defined after the templates that use it
    assert _templates("Take {amount} of {term}.\n@amount = 1 | 2").templates[0].slots == ("amount", "term")


def test_fill_template_fills_every_slot_deterministically():
    t = _templates("@amount = 1 | 2 | 5 | 10 | 20\n@unit = mg | mL\n@frequency = daily | twice a day\n"
                   "Take {amount} {unit} of {term} {frequency}; {amount} {unit} is with {term2}.")
    template = t.templates[0]
    assert template.needs_two and template.slots == ("amount", "unit", "term", "frequency", "term2")

    def draw(seed):
        rng = random.Random(seed)
        return [D.fill_template(template, t.values, "Lipitor", "Zoloft", rng) for _ in range(20)]

    first = draw(7)
    assert first == draw(7) and first != draw(8)
    for s in first:
        assert "{" not in s and "}" not in s
        m = re.fullmatch(r"Take (\S+) (\S+) of Lipitor (.+); (\S+) (\S+) is with Zoloft\.", s)
        assert m, s
        amount, unit, freq, amount2, unit2 = m.groups()
        assert (amount, unit) == (amount2, unit2), "a slot used twice gets one value"
        assert amount in t.values["amount"] and unit in t.values["unit"] and freq in t.values["frequency"]
    with pytest.raises(ValueError, match="needs a second term"):
        D.fill_template(template, t.values, "Lipitor", None, random.Random(0))


def test_shipped_templates_fill_and_normalize():
    shipped = D.read_templates(RECIPE / "conf" / "templates" / "medication.txt")
    assert len(shipped.templates) >= 30
    assert {"amount", "unit", "frequency"} <= set(shipped.values)
    assert sum(t.needs_two for t in shipped.templates) >= 5
    rng = random.Random(0)
    for t in shipped.templates:
        for _ in range(5):
            text = normalize(D.fill_template(t, shipped.values, "Co-Amoxiclav", "Vitamin B12", rng))
            assert is_normalized(text) and _has_phrase(text, "co amoxiclav"), text
            assert not t.needs_two or _has_phrase(text, "vitamin b twelve"), text


# ---------------------------------------------------------------------------------------------
# Domain text
# ---------------------------------------------------------------------------------------------


def test_domain_text_plain_and_jsonl(tmp_path):
    plain = _write(tmp_path, "d.txt", "Take Lipitor at 9 pm.\n\n***\ntake lipitor at 9 p.m.\nHello there\n")
    text = D.read_domain_text(plain)
    assert [(s.text, s.line) for s in text.sentences] == [("take lipitor at nine p m", 1), ("hello there", 5)]
    assert text.sentences[0].raw == "Take Lipitor at 9 pm." and (text.duplicates, text.empty) == (1, 1)
    jsonl = _write(tmp_path, "d.txt.2", '{"id": "a1", "text": "Zoloft 50mg"}\n{"text": "No id here"}\n')
    got = D.read_domain_text(jsonl)  # JSONL by its first character, whatever the name
    assert [(s.text, s.source_id) for s in got.sentences] == [("zoloft fifty milligrams", "a1"), ("no id here", None)]


BAD_DOMAIN_LINES = [
    ("{not json", "invalid JSON"),
    ('["text"]', 'expected a JSON object with a "text" key'),
    ('{"id": 3}', 'expected a JSON object with a "text" key'),
    ('{"text": 5}', '"text" must be a string, got int'),
    ('{"text": "emoji \U0001f600"}', "cannot normalize character"),
    ('{"text": "' + "word " * 101 + '"}', "101 words after normalization"),
    (b'{"text": "caf\xe9"}', "not UTF-8"),
]


@pytest.mark.parametrize("bad,message", BAD_DOMAIN_LINES, ids=[m for _, m in BAD_DOMAIN_LINES])
def test_bad_domain_text_lines(tmp_path, bad, message):
    body = bad if isinstance(bad, bytes) else bad.encode("utf-8")
    path = _write(tmp_path, "d.jsonl", b'{"text": "fine"}\n' + body + b"\n")
    with pytest.raises(D.DomainError) as err:
        D.read_domain_text(path)
    assert err.value.problems == [str(err.value)]
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value), str(err.value)


def test_empty_domain_text_is_an_error(tmp_path):
    with pytest.raises(D.DomainError, match="no sentences"):
        D.read_domain_text(_write(tmp_path, "d.txt", "\n \n"))


# ---------------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------------

TERMS = ["insulin glargine", "Co-Amoxiclav", "Vitamin B12", "Tylenol 3", "Zyrtec-D", "salbutamol",
         "Xarelto\tzuh-REL-toe", "semaglutide\t\ts,Em@gl'u:taId", "amlodipine", "ondansetron", "insulin"]
TEMPLATES = ("@amount = 1 | 2 | 5 | 10 | 20 | 40\n@unit = mg | mL | tab\n@frequency = daily | at night | b.i.d.\n"
             "Take {amount} {unit} of {term} {frequency}.\nIs {term} safe with {term2}?\nRefill my {term}.\n"
             "I stopped {term} last week.\nSwitch {term} to {term2} {frequency}.\n{term} {amount} {unit}, please.\n")
DOMAIN = ["My insulin glargine pen is empty.", "Xarelto and insulin, both today.", "Nothing to see here.",
          "The co-amoxiclav course ends Friday.", "Ondansetron helps with nausea.", "Amlodipine at night.",
          "Semaglutide weekly.", "A Tylenol 3 for the pain.", "Zyrtec-D in the morning.", "Vitamin B12 shot."]


def _split(seed=0, domain=True, templates=TEMPLATES, sizes=SIZES, fraction=0.25):
    entries = _entries(*TERMS)
    text = D.parse_domain_lines(list(enumerate(DOMAIN, start=1)), "d.txt", jsonl=False) if domain else None
    table = D.pronunciation_table(entries, convert=lambda spoken: f"<{spoken}>")
    tmpl = _templates(templates) if templates is not None else None
    return D.build_splits(entries, text, tmpl, sizes, fraction, seed, table)


@pytest.mark.parametrize("domain", [True, False], ids=["terms+domain-text", "terms-only"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_held_out_terms_never_in_training_text(seed, domain):
    result = _split(seed, domain)
    unseen = {t.normalized for t in result.unseen}
    seen = {t.normalized for t in result.seen}
    assert len(unseen) == 3 and len(seen) == 8 and not unseen & seen
    for split in ("train", "dev", "test"):
        for s in result.splits[split]:
            for term in unseen:
                # "insulin" is held out or seen on its own; inside "insulin glargine" it is not a mention
                if term == "insulin" and _has_phrase(s.text, "insulin glargine"):
                    continue
                assert not _has_phrase(s.text, term), (split, term, s.text)
    train_text = " | ".join(s.text for s in result.splits["train"])
    for term in seen:
        assert any(term in s.terms for s in result.splits["train"]), f"seen term {term!r} not in train: {train_text}"
    for split in ("dev", "test"):
        assert all(set(s.terms) <= seen for s in result.splits[split])
    assert all(set(s.terms) & unseen for s in result.splits["test_unseen"])
    assert {m for s in result.splits["test_unseen"] for m in s.terms} >= unseen
    for split, size in SIZES.items():
        n = len(result.splits[split])
        assert n >= size if split == "train" else n == size, (split, n)
    texts = [s.text for v in result.splits.values() for s in v]
    assert len(texts) == len(set(texts)), "sentences are unique across splits"


@pytest.mark.parametrize("domain", [True, False], ids=["terms+domain-text", "terms-only"])
def test_every_seen_term_gets_training_text_even_with_no_train_size(domain):
    result = _split(0, domain, sizes={"train": 0, "dev": 2, "test": 2, "test_unseen": 2})
    in_train = {m for s in result.splits["train"] for m in s.terms}
    assert in_train >= {t.normalized for t in result.seen}
    assert len(result.splits["train"]) <= len(result.seen) + len(DOMAIN)


def test_domain_sentences_are_used_as_they_are():
    result = _split(0)
    from_domain = [s for v in result.splits.values() for s in v if s.source != "template"]
    assert sorted(s.raw for s in from_domain) == sorted(DOMAIN)
    assert all(s.template is None and re.fullmatch(r"d\.txt:\d+", s.source) for s in from_domain)
    assert sum(result.stats["sentences_from_domain_text"].values()) == len(DOMAIN)
    mentions = result.stats["domain_text_mentions"]
    assert mentions["insulin glargine"] == 1 and mentions["insulin"] == 1 and mentions["xarelto"] == 1
    assert result.stats["terms_without_domain_mentions"] == ["salbutamol"]


def test_split_is_deterministic_per_seed():
    as_text = lambda r: {k: [(s.text, s.terms) for s in v] for k, v in r.splits.items()}  # noqa: E731
    assert as_text(_split(5)) == as_text(_split(5))
    assert as_text(_split(5)) != as_text(_split(6))


def test_pronunciations_travel_with_every_mention():
    result = _split(0)
    for s in (s for v in result.splits.values() for s in v):
        expected = {}
        if "xarelto" in s.terms:
            expected["xarelto"] = "<zuh-REL-toe>"
        if "semaglutide" in s.terms:
            expected["semaglutide"] = "s,Em@gl'u:taId"
        assert s.pronunciations == expected, s.text
        for term in s.pronunciations:  # tts_gen.pronounce requires the key to occur in the spoken text
            assert _has_phrase(s.text, term)


def test_split_errors():
    with pytest.raises(D.DomainError, match="no templates file"):
        _split(templates=None)
    with pytest.raises(D.DomainError, match="at least 2 terms"):
        D.split_terms(_entries("solo"), 0.5, random.Random(0))
    with pytest.raises(D.DomainError, match="holds out all"):
        D.split_terms(_entries("a b", "c d"), 0.9, random.Random(0))
    with pytest.raises(D.DomainError, match="could not draw a new sentence"):
        _split(domain=False, templates="Refill my {term}.\n")  # one template: 40 unique sentences impossible
    with pytest.raises(AssertionError, match="held-out term 'x' in train"):
        D._check_no_leak({"train": [D.Sentence("a x b", "a x b", ("x",), "template")], "dev": [], "test": []}, {"x"})


def test_template_sentence_is_redrawn_when_a_slot_value_is_a_term():
    # a slot value that is also a term: when that term is held out, such sentences must never reach train
    entries = _entries("alphazol", "betazine", "cetramab", "dexoral")
    tmpl = _templates("@extra = dexoral | water\nTake {term} with {extra}.\nRefill {term} now.\nI like {term}.\n"
                      "Do you have {term}?\nWhere is my {term}?\nIs {term} here?\n")
    held_out_dexoral = 0
    for seed in range(8):
        result = D.build_splits(entries, None, tmpl, {"train": 6, "dev": 1, "test": 1, "test_unseen": 2}, 0.25, seed)
        unseen = {t.normalized for t in result.unseen}
        held_out_dexoral += "dexoral" in unseen
        for split in ("train", "dev", "test"):
            assert not any(_has_phrase(s.text, u) for s in result.splits[split] for u in unseen)
    assert held_out_dexoral, "no seed held the slot-value term out: the test checked nothing"


# ---------------------------------------------------------------------------------------------
# Output, CLI, recipe
# ---------------------------------------------------------------------------------------------


def test_written_files_drive_hotwords_and_term_metrics(tmp_path):
    result = _split(0)
    paths = D.write_domain(tmp_path, result, prefix="med")
    terms = TermList.from_file(paths["names_used"], group_column=3)
    assert terms.group_names == ["seen", "unseen"]
    assert sum(g == "unseen" for g in terms.groups.values()) == 3
    rows = [r.split("\t") for r in paths["names_used"].read_text().splitlines()]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows) and all(len(r) == 3 for r in rows)
    recs = [json.loads(line) for line in paths["test_unseen"].read_text().splitlines()]
    assert recs[0]["id"] == "med-test-unseen-000001" and len(recs) == SIZES["test_unseen"]
    for rec in recs:
        assert rec["text"] == normalize(rec["raw"]) and rec["names"]
    tsv = paths["terms"].read_text().splitlines()
    assert tsv[0].startswith("# normalized") and len(tsv) == 1 + len(TERMS)
    xarelto = next(r.split("\t") for r in tsv if r.startswith("xarelto\t"))
    assert xarelto[:4] + xarelto[5:] == ["xarelto", "Xarelto", "zuh-REL-toe", "", "7"] and xarelto[4] in ("seen", "unseen")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_respelling_becomes_espeak_mnemonics():
    stressed = D.respelling_phonemes("zuh-REL-toe")
    assert stressed == D.respelling_phonemes("zuh-rel-toe"), "capitals mark stress, they are not spelled out"
    assert stressed and "[" not in stressed and "\n" not in stressed
    with pytest.raises(D.DomainError, match="not on PATH"):
        D.respelling_phonemes("x", binary="no-such-espeak-binary")


def test_prepare_domain_cli(tmp_path):
    from synthasr.cli import cli

    terms = _write(tmp_path, "terms.txt", "\n".join(TERMS) + "\n")
    templates = _write(tmp_path, "templates.txt", TEMPLATES)
    out = tmp_path / "out"
    args = ["prepare-domain", "--terms", str(terms), "--templates", str(templates), "--out-dir", str(out),
            "--unseen-fraction", "0.25", "--num-train", "30", "--num-dev", "4", "--num-test", "4", "--num-test-unseen", "4"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "8 seen + 3 held-out terms" in res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "med_dev.jsonl", "med_test.jsonl", "med_test_unseen.jsonl", "med_train.jsonl", "names_used.txt", "terms.tsv"]
    first = (out / "med_train.jsonl").read_bytes()
    assert CliRunner().invoke(cli, args).exit_code == 0 and (out / "med_train.jsonl").read_bytes() == first
    bad = _write(tmp_path, "bad.txt", "ok term\n---\n\tx\n")
    res = CliRunner().invoke(cli, ["prepare-domain", "--terms", str(bad), "--out-dir", str(tmp_path / "o2")])
    assert res.exit_code == 1
    assert res.output.splitlines() == [f"Error: {bad}:2: term '---' normalizes to nothing (no letters or digits)",
                                      f"Error: {bad}:3: empty term in column 1"]


def _prepare_text_module():
    name = "prepare_text_own_domain"  # not "prepare_text": tests/test_medication_text.py owns that entry
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, RECIPE / "local" / "prepare_text.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


def _tiny_general_sources(tmp_path):
    """Fortunes and WordNet in miniature: a few sentences, some mentioning the terms."""
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    cookies = [f"The {w} cat sat on the warm mat today." for w in ("red", "big", "old", "lazy", "small", "happy")]
    cookies += ["I bought salbutamol at the shop down the road.", "The glargine of the night was bright.",
                "A vitamin b12 tablet fell on the floor.", "Some vitamin tablets are sold at the market."]
    (fortunes / "misc").write_text("\n%\n".join(cookies) + "\n%\n", encoding="utf-8")
    wordnet = tmp_path / "wordnet"
    wordnet.mkdir()
    for pos in ("noun", "verb", "adj", "adv"):
        (wordnet / f"data.{pos}").write_text(
            f'00001 03 n 04 vitamin 0 tablet 0 b 0 twelve 0 000 | a thing; "we walked home along the river"\n'
            f'00002 03 n 01 cat 0 000 | an animal; "the {pos} dog barked at the moon"\n', encoding="utf-8")
    return fortunes, wordnet


def test_prepare_text_own_domain_writes_what_later_stages_read(tmp_path):
    P = _prepare_text_module()
    fortunes, wordnet = _tiny_general_sources(tmp_path)
    terms = _write(tmp_path, "terms.txt", "\n".join(TERMS) + "\n")
    templates = _write(tmp_path, "templates.txt", TEMPLATES)
    domain = _write(tmp_path, "domain.txt", "\n".join(DOMAIN) + "\n")
    out = tmp_path / "text"
    general_sizes = {"train": 10, "dev": 1, "test": 1}  # every clean sentence of the miniature sources
    summary = P.prepare_own_domain(out, 0, 0.25, dict(SIZES), general_sizes, terms, domain, templates,
                                   fortunes, wordnet)
    assert summary["names_seen"] == 8 and summary["names_unseen"] == 3
    assert summary["general_sentences"] == general_sizes and summary["domain"]["terms"] == 11
    for name in ("names_used.txt", "terms.tsv", "medication_names.txt", "summary.json", "general_train.jsonl",
                 *(f"med_{s}.jsonl" for s in SIZES)):
        assert (out / name).is_file(), name
    banned = [r.split("\t") for r in (out / "medication_names.txt").read_text().splitlines()]
    words = {r[0] for r in banned}
    assert all(" " not in w for w in words), "one word per row, as prepare_general_corpus.py reads it"
    assert {"salbutamol", "glargine", "amoxiclav", "insulin"} <= words and "vitamin" not in words
    general = [json.loads(x)["text"] for s in general_sizes for x in (out / f"general_{s}.jsonl").read_text().splitlines()]
    assert len(general) == 12
    for text in general:
        assert not words & set(text.split()) and not _has_phrase(text, "vitamin b twelve"), text
    assert any("vitamin" in t.split() for t in general), "common words of multi-word terms stay in general text"


def test_example_config_uses_its_own_term_file():
    import subprocess

    conf = [sys.executable, str(RECIPE / "local" / "conf.py")]
    check = subprocess.run(conf + ["--check", "conf/terms_example.yaml"], cwd=RECIPE, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    got = subprocess.run(conf + ["conf/terms_example.yaml", "domain.terms"], cwd=RECIPE, capture_output=True, text=True)
    terms_file = RECIPE / got.stdout.strip()
    entries = D.read_term_list(terms_file)
    assert len(entries) == 17 and sum(len(e.merged_lines) for e in entries) == 1
    assert sum(" " in e.normalized for e in entries) >= 4, "multi-word terms are exercised"
    assert sum(e.spoken is not None for e in entries) == 4 and sum(e.phonemes is not None for e in entries) == 1
    assert len(D.read_domain_text(RECIPE / "conf" / "domain" / "example_sentences.txt").sentences) == 22
    schedule = (RECIPE / "conf" / "schedule" / "terms_example.yaml").read_text()
    assert "data/terms_example/text/names_used.txt" in schedule and "data/smoke/" not in schedule


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_a_respelling_is_never_an_espeak_option():
    assert D.respelling_phonemes("-v") == D.respelling_phonemes("v")
