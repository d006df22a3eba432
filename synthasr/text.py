"""One text normalizer for everything SynthASR reads or writes as words.

The same function turns TTS input text into what the voice speaks, training transcripts into what
the model learns, and references/hypotheses into what WER counts. Using one normalizer everywhere
means a synthetic utterance's transcript is exactly what was spoken, and scoring never counts a
formatting difference (``20mg`` vs ``twenty milligrams``) as a recognition error.

Output alphabet: lowercase words of ``[a-z']`` separated by single spaces. Anything the rules cannot
map (CJK, emoji, Greek letters, ``§``...) raises :class:`NormalizationError` naming the character and
its code point, so bad text is rejected loudly instead of being silently mangled.

Rules, in order: Unicode clean-up (curly quotes, dashes, vulgar fractions, ligatures, NFKD with accents
stripped), dotted prescription abbreviations (``b.i.d.``), money, clock times, ratios, numeric ranges,
fractions, ordinals, numbers with units (``20mg``, ``0.5 mcg/kg``, ``5%``), plural numbers (``1990s``),
remaining numbers, symbols (``&`` ``+`` ``@`` ``#`` ``=``), then punctuation. Every rule needs a digit or
a symbol to fire, and the output has neither, so ``normalize`` is idempotent.
"""
from __future__ import annotations

import re
import string
import unicodedata
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

__all__ = [
    "NormalizationError",
    "TextFileError",
    "jsonl_record_text",
    "read_jsonl_texts",
    "normalize",
    "normalize_lines",
    "is_normalized",
    "number_to_words",
    "ordinal_to_words",
]


class NormalizationError(ValueError):
    """Text contains a character the normalizer has no rule for; the message names it."""


NORMALIZED_RE = re.compile(r"^(?:[a-z']+(?: [a-z']+)*)?$")


def is_normalized(text: str) -> bool:
    """True if ``text`` is already in the normalizer's output form (``[a-z']`` words, single spaces)."""
    return bool(NORMALIZED_RE.match(text))


# ---------------------------------------------------------------------------------------------
# Number words
# ---------------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ["", "thousand", "million", "billion", "trillion", "quadrillion"]
_MAX_CARDINAL_DIGITS = 3 * len(_SCALES)  # longer digit strings are read digit by digit

_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def _below_thousand(n: int) -> List[str]:
    words: List[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest or not words:
        words.append(_ONES[rest])
    return words


def number_to_words(n: int) -> str:
    """Cardinal words without hyphens or "and": 105 -> "one hundred five"."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n == 0:
        return "zero"
    if len(str(n)) > _MAX_CARDINAL_DIGITS:
        return _digits_to_words(str(n))
    groups: List[str] = []
    scale = 0
    while n:
        n, chunk = divmod(n, 1000)
        if chunk:
            part = _below_thousand(chunk)
            if _SCALES[scale]:
                part.append(_SCALES[scale])
            groups.insert(0, " ".join(part))
        scale += 1
    return " ".join(groups)


def _ordinal_word(word: str) -> str:
    if word in _ORDINAL_IRREGULAR:
        return _ORDINAL_IRREGULAR[word]
    if word.endswith("y"):
        return word[:-1] + "ieth"
    return word + "th"


def ordinal_to_words(n: int) -> str:
    """Ordinal words: 21 -> "twenty first", 100 -> "one hundredth"."""
    words = number_to_words(n).split()
    words[-1] = _ordinal_word(words[-1])
    return " ".join(words)


def _plural_word(word: str) -> str:
    if word.endswith("y"):
        return word[:-1] + "ies"
    if word.endswith(("x", "s")):
        return word + "es"
    return word + "s"


def _digits_to_words(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _integer_string_to_words(digits: str) -> str:
    """Read an integer string; leading zeros ("007") and very long strings go digit by digit."""
    digits = digits.replace(",", "")
    if len(digits) > 1 and digits.startswith("0"):
        return _digits_to_words(digits)
    if len(digits) > _MAX_CARDINAL_DIGITS:
        return _digits_to_words(digits)
    return number_to_words(int(digits))


def _number_string_to_words(num: str) -> str:
    """"1,000" -> "one thousand", "2.5" -> "two point five", ".5" -> "point five"."""
    whole, _, frac = num.partition(".")
    words = _integer_string_to_words(whole) if whole else ""
    if frac:
        words = (words + " point " if words else "point ") + _digits_to_words(frac)
    return words


# ---------------------------------------------------------------------------------------------
# Unicode clean-up
# ---------------------------------------------------------------------------------------------

_CHAR_MAP: Dict[str, str] = {}
for _chars, _repl in [
    ("\u2018\u2019\u201a\u201b\u2032\u00b4\u02bc\u02b9`", "'"),
    ("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\u2039\u203a", '"'),
    ("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
    ("\u2044\u2215", "/"),
    ("\u2022\u00b7\u25cf\u25aa\u2023\u2043", " "),
    ("\u00ae\u2122\u00a9\u2120", ""),  # brand marks: "Lipitor(R)" is spoken "lipitor"
    ("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),  # zero-width characters, soft hyphen
    ("\u00d7", "x"),
    ("\u00df", "ss"),
    ("\u00e6\u00c6", "ae"),
    ("\u0153\u0152", "oe"),
    ("\u00f8\u00d8", "o"),
    ("\u0111\u0110\u00f0\u00d0", "d"),
    ("\u0142\u0141", "l"),
    ("\u00fe\u00de", "th"),
    ("\u0131", "i"),
]:
    for _c in _chars:
        _CHAR_MAP[_c] = _repl

# Vulgar fractions get a leading space so "1½" reads "one and one half", not "eleven halves".
for _c, _frac in {
    "\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3",
    "\u215b": "1/8", "\u215c": "3/8", "\u215d": "5/8", "\u215e": "7/8",
}.items():
    _CHAR_MAP[_c] = f" {_frac} "

_MICRO_RE = re.compile(r"[\u00b5\u03bc]([gGlL])")  # µg, μg, µL -> mcg, mcl

# Characters allowed after clean-up; each has a rule below or is removed as punctuation.
_HANDLED_SYMBOLS = set("&+@#=%$\u20ac\u00a3\u00a5\u00b0")
_PUNCTUATION = set(string.punctuation) - _HANDLED_SYMBOLS
_ALLOWED = set(string.ascii_lowercase + string.digits + " ") | _HANDLED_SYMBOLS | _PUNCTUATION


_TRANSLATE = str.maketrans(_CHAR_MAP)
_WHITESPACE_RE = re.compile(r"\s")


def _clean_unicode(text: str) -> str:
    if not text.isascii():
        text = _MICRO_RE.sub(r"mc\1", text)
        text = text.translate(_TRANSLATE)
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
        # NFKD can produce new mappable characters (e.g. "\u2044" from fractions not listed above).
        text = text.translate(_TRANSLATE)
    return _WHITESPACE_RE.sub(" ", text.lower())


_ALLOWED_RE = re.compile("[^" + re.escape("".join(sorted(_ALLOWED))) + "]")


def _check_characters(cleaned: str, original: str) -> None:
    bad = _ALLOWED_RE.search(cleaned)
    if bad is None:
        return
    c = bad.group(0)
    pos = original.find(c)
    where = f" at position {pos}" if pos >= 0 else ""
    name = unicodedata.name(c, "unnamed")
    raise NormalizationError(
        f"cannot normalize character {c!r} (U+{ord(c):04X} {name}){where} in {_excerpt(original)!r}"
    )


def _excerpt(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Rules on cleaned, lowercase ASCII text
# ---------------------------------------------------------------------------------------------

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_NUM_START = r"(?<![\d.,])"  # a number does not start in the middle of another one
_END = r"(?![a-z0-9'])"

_DOTTED_ABBREVIATIONS = {
    r"q\.d": "once a day",
    r"b\.i\.d": "twice a day",
    r"t\.i\.d": "three times a day",
    r"q\.i\.d": "four times a day",
    r"q\.h\.s": "at bedtime",
    r"p\.r\.n": "as needed",
    r"p\.o": "by mouth",
}
_DOTTED_RE = re.compile(
    r"(?<![a-z.])(" + "|".join(_DOTTED_ABBREVIATIONS) + r")\.(?![a-z])"
)
_DOTTED_LOOKUP = {k.replace("\\", ""): v for k, v in _DOTTED_ABBREVIATIONS.items()}

# unit spelling -> (singular, plural). Matched only directly after a number.
_UNITS: Dict[str, Tuple[str, str]] = {}
for _spellings, _sing, _plur in [
    ("mg mgs", "milligram", "milligrams"),
    ("mcg mcgs ug", "microgram", "micrograms"),
    ("g gm gms gr", "gram", "grams"),
    ("kg kgs", "kilogram", "kilograms"),
    ("ml mls", "milliliter", "milliliters"),
    ("mcl", "microliter", "microliters"),
    ("dl", "deciliter", "deciliters"),
    ("l", "liter", "liters"),
    ("cc", "c c", "c c"),
    ("iu", "international unit", "international units"),
    ("u", "unit", "units"),
    ("mmol", "millimole", "millimoles"),
    ("meq", "milliequivalent", "milliequivalents"),
    ("tab tabs", "tablet", "tablets"),
    ("cap caps", "capsule", "capsules"),
    ("hr hrs", "hour", "hours"),
    ("min mins", "minute", "minutes"),
    ("wk wks", "week", "weeks"),
    ("tsp", "teaspoon", "teaspoons"),
    ("tbsp", "tablespoon", "tablespoons"),
    ("x", "time", "times"),
    ("%", "percent", "percent"),
    ("\u00b0f", "degree fahrenheit", "degrees fahrenheit"),
    ("\u00b0c", "degree celsius", "degrees celsius"),
    ("\u00b0", "degree", "degrees"),
    ("a.m. a.m am", "a m", "a m"),
    ("p.m. p.m pm", "p m", "p m"),
]:
    for _s in _spellings.split():
        _UNITS[_s] = (_sing, _plur)

_UNIT_ALT = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_UNIT_RE = re.compile(
    _NUM_START
    + rf"(?P<num>{_NUM})\s*(?P<unit>{_UNIT_ALT})"
    + rf"(?:\s*/\s*(?P<per_num>{_NUM})?\s*(?P<per_unit>{_UNIT_ALT}|day|dose))?"
    + r"(?![a-z0-9'-])"
)

_CURRENCIES = {"$": ("dollar", "dollars"), "\u20ac": ("euro", "euros"), "\u00a3": ("pound", "pounds"),
               "\u00a5": ("yen", "yen")}
_MONEY_RE = re.compile(r"(?P<sym>[$\u20ac\u00a3\u00a5])\s*(?P<num>" + _NUM + r")")
_TIME_RE = re.compile(
    _NUM_START + r"(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?(?![\d:])"
    r"(?:\s*(?P<ampm>[ap])\.?m\.?(?![a-z]))?"
)
_RATIO_RE = re.compile(_NUM_START + r"(\d+):(\d+)(?![\d:])")
_RANGE_RE = re.compile(_NUM_START + r"(\d{1,3}(?:\.\d+)?)\s*-\s*(\d{1,3}(?:\.\d+)?)(?![\d.,]*\s*-\s*\d)(?![\d,])")
_NEGATIVE_RE = re.compile(r"(?<![\w.,])-(?=\d)")
_FRACTION_RE = re.compile(
    r"(?<![\d./,])(?:(?P<whole>\d+)\s+)?(?P<num>\d+)/(?P<den>\d+)(?![\d/])"
    + rf"(?:\s*(?P<unit>{_UNIT_ALT})(?![a-z0-9'-]))?"
)
_ORDINAL_RE = re.compile(_NUM_START + r"(\d+)(st|nd|rd|th)" + _END)
_PLURAL_NUM_RE = re.compile(_NUM_START + r"(\d+)'?s" + _END)
_LETTER_DIGIT_RE = re.compile(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])")
_ANY_NUM_RE = re.compile(_NUM)  # last pass: every digit left becomes words
_UNIT_PAIR_RE = re.compile(
    r"(?<![a-z0-9'])(?P<a>mg|mcg|g|kg|ml|l|iu|mmol|meq)/(?P<b>ml|l|kg|g|dl|hr|min|day|dose)(?![a-z0-9'])"
)
_PER_DENOMINATORS = {"day": ("day", "days"), "dose": ("dose", "doses")}

_SYMBOL_WORDS = {
    "&": " and ", "+": " plus ", "@": " at ", "#": " number ", "=": " equals ", "%": " percent ",
    "$": " dollars ", "\u20ac": " euros ", "\u00a3": " pounds ", "\u00a5": " yen ", "\u00b0": " degrees ",
}
_SYMBOL_RE = re.compile("[" + re.escape("".join(_SYMBOL_WORDS)) + "]")
_PUNCT_RE = re.compile("[" + re.escape("".join(sorted(_PUNCTUATION - {"'"}))) + "]")


def _sub_dotted(m: re.Match) -> str:
    return f" {_DOTTED_LOOKUP[m.group(1)]} "


def _is_one(num: str) -> bool:
    return num == "1"


def _sub_money(m: re.Match) -> str:
    singular, plural = _CURRENCIES[m.group("sym")]
    whole, _, frac = m.group("num").replace(",", "").partition(".")
    if len(frac) == 2 and m.group("sym") != "\u00a5":
        cents = int(frac)
        parts = []
        if whole and int(whole):
            parts.append(f"{_integer_string_to_words(whole)} {singular if whole == '1' else plural}")
        if cents or not parts:
            parts.append(f"{number_to_words(cents)} {'cent' if cents == 1 else 'cents'}")
        return " " + " and ".join(parts) + " "
    words = _number_string_to_words(m.group("num"))
    return f" {words} {singular if _is_one(m.group('num')) else plural} "


def _sub_time(m: re.Match) -> str:
    hours, minutes = int(m.group("h")), int(m.group("m"))
    ampm = m.group("ampm")
    if hours > 24 or minutes > 59:
        return f" {number_to_words(hours)} to {_integer_string_to_words(m.group('m'))} "
    words = [number_to_words(hours)]
    if minutes == 0:
        if not ampm:
            words.append("o'clock")
    elif minutes < 10:
        words += ["oh", _ONES[minutes]]
    else:
        words.append(number_to_words(minutes))
    if m.group("s"):
        words += ["and", number_to_words(int(m.group("s"))), "seconds"]
    if ampm:
        words += [ampm, "m"]
    return " " + " ".join(words) + " "


def _sub_ratio(m: re.Match) -> str:
    return f" {_integer_string_to_words(m.group(1))} to {_integer_string_to_words(m.group(2))} "


def _sub_range(m: re.Match) -> str:
    return f" {m.group(1)} to {m.group(2)} "


def _fraction_words(num: str, den: str) -> str:
    n, d = int(num), int(den)
    numerator = _integer_string_to_words(num)
    if d <= 1 or den.startswith("0") or num.startswith("0") and len(num) > 1:
        return f"{numerator} over {_integer_string_to_words(den)}"
    if d == 2:
        denominator = "half" if n == 1 else "halves"
    elif d == 4:
        denominator = "quarter" if n == 1 else "quarters"
    else:
        denominator = ordinal_to_words(d)
        if n != 1:
            denominator = " ".join(denominator.split()[:-1] + [denominator.split()[-1] + "s"])
    return f"{numerator} {denominator}"


def _sub_fraction(m: re.Match) -> str:
    if (m.group("num"), m.group("den")) == ("24", "7") and not m.group("unit"):
        return f" {m.group('whole') or ''} twenty four seven "
    words = _fraction_words(m.group("num"), m.group("den"))
    if m.group("whole"):
        words = f"{_integer_string_to_words(m.group('whole'))} and {words}"
    if m.group("unit"):
        singular, plural = _UNITS[m.group("unit")]
        is_single = not m.group("whole") and m.group("num") == "1"
        words += " " + (singular if is_single else plural)
    return f" {words} "


def _sub_unit_pair(m: re.Match) -> str:
    numerator = _UNITS[m.group("a")][1]
    b = m.group("b")
    denominator = _UNITS.get(b, _PER_DENOMINATORS.get(b))[0]
    return f" {numerator} per {denominator} "


def _sub_ordinal(m: re.Match) -> str:
    return f" {ordinal_to_words(int(m.group(1)))} "


def _unit_words(num: Optional[str], unit: str, singular: bool = False) -> str:
    one, many = _UNITS.get(unit) or _PER_DENOMINATORS[unit]
    return one if singular or (num is not None and _is_one(num)) else many


def _sub_unit(m: re.Match) -> str:
    num = m.group("num")
    words = f"{_number_string_to_words(num)} {_unit_words(num, m.group('unit'))}"
    if m.group("per_unit"):
        per_num = m.group("per_num")
        if per_num:
            words += f" per {_number_string_to_words(per_num)} {_unit_words(per_num, m.group('per_unit'))}"
        else:
            words += f" per {_unit_words(None, m.group('per_unit'), singular=True)}"
    return f" {words} "


def _decade_words(digits: str) -> Optional[str]:
    """Year-style reading for decades and centuries: "1990" -> "nineteen ninety", "1900" -> "nineteen hundred"."""
    if len(digits) != 4 or not digits.endswith("0") or not 1100 <= int(digits) <= 1990:
        return None
    century, rest = int(digits[:2]), int(digits[2:])
    return f"{number_to_words(century)} {number_to_words(rest) if rest else 'hundred'}"


def _sub_plural_number(m: re.Match) -> str:
    words = (_decade_words(m.group(1)) or _integer_string_to_words(m.group(1))).split()
    words[-1] = _plural_word(words[-1])
    return " " + " ".join(words) + " "


def _sub_number(m: re.Match) -> str:
    return f" {_number_string_to_words(m.group(0))} "


def _finish_words(text: str) -> str:
    words = []
    for word in text.split():
        word = word.strip("'")
        if word:
            words.append(word)
    return " ".join(words)


def normalize(text: str) -> str:
    """Normalize ``text`` to lowercase ``[a-z']`` words separated by single spaces.

    Raises :class:`NormalizationError` (a ``ValueError``) naming the first character it cannot map.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize() expects str, got {type(text).__name__}")
    cleaned = _clean_unicode(text)
    _check_characters(cleaned, text)
    t = _DOTTED_RE.sub(_sub_dotted, cleaned)
    if _NEEDS_NUMBER_RULES.search(t):
        t = _number_rules(t)
    t = _UNIT_PAIR_RE.sub(_sub_unit_pair, t)
    t = _SYMBOL_RE.sub(lambda m: _SYMBOL_WORDS[m.group(0)], t)
    t = _PUNCT_RE.sub(" ", t)
    return _finish_words(t)


_NEEDS_NUMBER_RULES = re.compile(r"[0-9]")


def _number_rules(t: str) -> str:
    """Every rule that needs a digit; skipped for digit-free text (most sentences) for speed."""
    t = _MONEY_RE.sub(_sub_money, t)
    t = _TIME_RE.sub(_sub_time, t)
    t = _RATIO_RE.sub(_sub_ratio, t)
    t = _RANGE_RE.sub(_sub_range, t)
    t = _NEGATIVE_RE.sub(" minus ", t)
    t = _FRACTION_RE.sub(_sub_fraction, t)
    t = _ORDINAL_RE.sub(_sub_ordinal, t)
    t = _UNIT_RE.sub(_sub_unit, t)
    t = _PLURAL_NUM_RE.sub(_sub_plural_number, t)
    t = _LETTER_DIGIT_RE.sub(" ", t)
    return _ANY_NUM_RE.sub(_sub_number, t)


def normalize_lines(lines: Iterable[str]) -> Iterator[Tuple[int, Union[str, NormalizationError]]]:
    """Yield ``(line_no, normalized_text or NormalizationError)`` for each line (1-based numbers).

    Lets batch callers (text prep, the ``normalize`` CLI) report every bad line with its number and
    decide themselves whether a bad line is fatal.
    """
    for line_no, line in enumerate(lines, start=1):
        try:
            yield line_no, normalize(line.rstrip("\n"))
        except NormalizationError as e:
            yield line_no, NormalizationError(f"line {line_no}: {e}")


class TextFileError(ValueError):
    """A text file cannot be read as sentences; the message names the file and line."""


def jsonl_record_text(line: str, where: str) -> Tuple[Optional[str], str]:
    """(id, text) of one JSONL record: the recipe's text splits keep the sentence under ``text`` (and
    an ``id``). ``where`` (``file:line``) starts the error message."""
    import json

    try:
        record = json.loads(line)
    except ValueError as e:
        raise TextFileError(f"{where}: not a JSON object ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise TextFileError(f"{where}: a JSONL text line needs a string 'text' field")
    utt_id = record.get("id")
    return (None if utt_id is None else str(utt_id)), record["text"]


def read_jsonl_texts(path) -> Iterator[Tuple[int, Optional[str], str]]:
    """(line number, id, text) of each record of a JSONL file (``.gz`` read as gzip); blank lines are
    skipped. Reading such a file as plain text would treat its keys and ids as words."""
    import gzip

    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    yield (line_no, *jsonl_record_text(line, f"{path}:{line_no}"))
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise TextFileError(f"{path}: not readable UTF-8 text ({e})") from None
