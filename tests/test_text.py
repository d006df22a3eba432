"""Tests for synthasr.text.normalize: exact outputs, errors naming characters, idempotency."""
import random
import string

import pytest

from synthasr.text import (
    NormalizationError,
    is_normalized,
    normalize,
    normalize_lines,
    number_to_words,
    ordinal_to_words,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Take 20mg of Lipitor® twice daily!", "take twenty milligrams of lipitor twice daily"),
        ("20 mg", "twenty milligrams"),
        ("1 mg", "one milligram"),
        ("0.5 mg", "zero point five milligrams"),
        (".5 mg", "point five milligrams"),
        ("2.5", "two point five"),
        ("1,000", "one thousand"),
        ("100,000,000", "one hundred million"),
        ("105", "one hundred five"),
        ("007", "zero zero seven"),
        ("1st 2nd 3rd 21st 100th", "first second third twenty first one hundredth"),
        ("8:30", "eight thirty"),
        ("8:05 a.m.", "eight oh five a m"),
        ("12:00", "twelve o'clock"),
        ("It's 9:00pm", "it's nine p m"),
        ("5%", "five percent"),
        ("50 mcg", "fifty micrograms"),
        ("5 \u00b5g", "five micrograms"),
        ("5 \u03bcg", "five micrograms"),
        ("10 mL", "ten milliliters"),
        ("400 IU", "four hundred international units"),
        ("10 units", "ten units"),
        ("20mEq", "twenty milliequivalents"),
        ("3 mmol/L", "three millimoles per liter"),
        ("10 mg/ml", "ten milligrams per milliliter"),
        ("5mg/dL", "five milligrams per deciliter"),
        ("2 mg/1 mL", "two milligrams per one milliliter"),
        ("mg/ml", "milligrams per milliliter"),
        ("10 mg/day", "ten milligrams per day"),
        ("1 g", "one gram"),
        ("2 kg", "two kilograms"),
        ("2 tabs", "two tablets"),
        ("1 cap.", "one capsule"),
        ("2 caps", "two capsules"),
        ("1 tsp", "one teaspoon"),
        ("every 8 hrs", "every eight hours"),
        ("2x daily", "two times daily"),
        ("2-3 tablets", "two to three tablets"),
        ("1/2 tab", "one half tablet"),
        ("2 1/2 tabs", "two and one half tablets"),
        ("1\u00bd tabs", "one and one half tablets"),
        ("3/4", "three quarters"),
        ("3/8", "three eighths"),
        ("open 24/7!", "open twenty four seven"),
        ("1:1000", "one to one thousand"),
        ("-5 degrees", "minus five degrees"),
        ("98.6\u00b0F", "ninety eight point six degrees fahrenheit"),
        ("$5.50", "five dollars and fifty cents"),
        ("$1", "one dollar"),
        ("$0.99", "ninety nine cents"),
        ("the 1990s", "the nineteen nineties"),
        ("vitamin B12", "vitamin b twelve"),
        ("covid-19", "covid nineteen"),
        ("Take 1 tab b.i.d. p.r.n.", "take one tablet twice a day as needed"),
        ("A&B + C", "a and b plus c"),
        ("Rx #123", "rx number one hundred twenty three"),
        ("Caf\u00e9 \u201cna\u00efve\u201d \u2014 r\u00e9sum\u00e9", "cafe naive resume"),
        ("Stra\u00dfe", "strasse"),
        ("don\u2019t", "don't"),
        ("rock 'n' roll", "rock n roll"),
        ("well-known / and/or", "well known and or"),
        ("hello,world", "hello world"),
        ("  multiple   spaces\ttab\n", "multiple spaces tab"),
        ("1.2.3", "one point two point three"),
        ("Lipitor\u2122 and Zoloft\u00ae", "lipitor and zoloft"),
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize_exact(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize("bad, char, code", [("\u4e2d\u6587", "\u4e2d", "U+4E2D"), ("hi \U0001F600", "\U0001F600", "U+1F600"),
                                             ("\u00a7 5", "\u00a7", "U+00A7"), ("\u03bc alone", "\u03bc", "U+03BC")])
def test_unmappable_character_is_named(bad, char, code):
    with pytest.raises(NormalizationError) as info:
        normalize(bad)
    message = str(info.value)
    assert char in message and code in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_number_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(19) == "nineteen"
    assert number_to_words(40) == "forty"
    assert number_to_words(1_000_001) == "one million one"
    assert number_to_words(2_340_000) == "two million three hundred forty thousand"
    assert ordinal_to_words(12) == "twelfth"
    assert ordinal_to_words(30) == "thirtieth"
    assert ordinal_to_words(103) == "one hundred third"


def test_idempotent_and_output_alphabet_on_random_text():
    rng = random.Random(0)
    alphabet = string.printable + "\u00e9\u2013\u2014\u201c\u201d\u2019\u00bd\u00b5\u00b0\u00ae\u20ac"
    checked = 0
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        try:
            once = normalize(text)
        except NormalizationError:
            continue
        checked += 1
        assert is_normalized(once), (text, once)
        assert normalize(once) == once, (text, once)
    assert checked > 2500


def test_normalize_lines_reports_line_numbers():
    out = list(normalize_lines(["Hello, World!\n", "bad \u00a7\n", "3 mg\n"]))
    assert out[0] == (1, "hello world")
    assert out[1][0] == 2 and isinstance(out[1][1], NormalizationError)
    assert str(out[1][1]).startswith("line 2:")
    assert out[2] == (3, "three milligrams")


def test_is_normalized():
    assert is_normalized("take it")
    assert is_normalized("")
    assert not is_normalized("Take it")
    assert not is_normalized("take  it")
    assert not is_normalized("take 2")


def test_read_jsonl_texts_reads_the_text_field_and_names_bad_lines(tmp_path):
    import gzip

    from synthasr.text import TextFileError, read_jsonl_texts

    good = tmp_path / "split.jsonl.gz"
    with gzip.open(good, "wt", encoding="utf-8") as f:
        f.write('{"id": "u1", "text": "take two tablets", "source": "x"}\n\n{"text": "no id"}\n')
    assert list(read_jsonl_texts(good)) == [(1, "u1", "take two tablets"), (3, None, "no id")]
    for body, message in [('{"id": 1}\n', "split.jsonl:1: a JSONL text line needs a string 'text' field"),
                          ('{"text": "ok"}\n{"text": 3}\n', "split.jsonl:2: a JSONL text line needs"),
                          ("take two\n", "split.jsonl:1: not a JSON object"),
                          ('["text"]\n', "split.jsonl:1: a JSONL text line needs")]:
        (tmp_path / "split.jsonl").write_text(body)
        with pytest.raises(TextFileError, match=message):
            list(read_jsonl_texts(tmp_path / "split.jsonl"))
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(TextFileError, match="latin1.jsonl: not readable UTF-8"):
        list(read_jsonl_texts(tmp_path / "latin1.jsonl"))
