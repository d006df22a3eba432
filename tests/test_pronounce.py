"""Pronunciation control (issue 13): phonemes asked for a term are the phonemes the engine uses.

espeak-ng is checked by what it reports back (``-x``) for the exact input the synthesizer was sent;
piper by the phoneme ids that reach the ONNX model.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from lhotse import CutSet, SupervisionSet

from synthasr.cli import cli
from tts_gen import pronounce
from tts_gen.engines.base import SynthesisError, get_engine
from tts_gen.generate import generate
from tts_gen.pronounce import (Pronunciation, PronunciationError, generate_variants, markup, read_lexicon,
                               stress_shifts)
from tts_gen.voices import Voice

ESPEAK = shutil.which("espeak-ng")
pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng not installed")
TERM = "levetiracetam"
SENTENCE = f"take {TERM} twice daily"
US = Voice.espeak("en-us", "", 175, 50)


@pytest.fixture(scope="module")
def variants():
    """All distinct variety forms (no cap) plus two stress shifts of levetiracetam, seed 0."""
    return generate_variants([TERM], max_variants=20, seed=0)[TERM]


def _tee_espeak(tmp_path: Path) -> str:
    """An espeak-ng wrapper that saves each stdin it gets (what the synthesizer was sent) and runs the real one."""
    script = tmp_path / "tee-espeak-ng"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$1" in --voices*) exec {ESPEAK} "$@";; esac
        cat > "{tmp_path}/stdin.txt"
        exec {ESPEAK} "$@" < "{tmp_path}/stdin.txt"
        """))
    script.chmod(0o755)
    return str(script)


def _stress_numbers(mnemonics: str) -> list:
    """Vowel-independent stress signature: index of each stress mark among the phoneme characters."""
    return [i for i, c in enumerate(mnemonics.replace(",", "")) if c == "'"]


# --- espeak-ng: the phonemes it reports are the ones asked --------------------------------------------
def test_espeak_input_carries_the_phonemes_and_espeak_reports_them_back(tmp_path):
    engine = get_engine("espeak", binary=_tee_espeak(tmp_path))
    asked = "l,EvI2t'3:ra#s,Et#am"  # stress on the 3rd vowel: not what en-us letter-to-sound says
    default_word = engine.phonemize(SENTENCE, US).split()[1]
    assert default_word != asked
    audio, _ = engine.synthesize(SENTENCE, US, pronunciations={TERM: asked})
    sent = (tmp_path / "stdin.txt").read_text(encoding="utf-8")
    assert sent == f"take [[{asked}]] twice daily"
    # what espeak-ng makes of exactly that input, with the synthesizing voice's argv
    argv = [a for a in engine.command(US) if a != "--stdout"] + ["-q", "-x"]
    argv[0] = ESPEAK
    reported = subprocess.run(argv, input=sent.encode(), capture_output=True, check=True).stdout.decode().split()
    assert reported[1] == asked
    assert engine.phonemize(SENTENCE, US, pronunciations={TERM: asked}).split()[1] == asked
    default_audio, _ = engine.synthesize(SENTENCE, US)
    assert len(audio) != len(default_audio) or not np.array_equal(audio, default_audio)


def test_each_variety_variant_round_trips_through_its_own_voice(variants):
    engine = get_engine("espeak")
    by_variety = [p for p in variants if "+stress" not in p.origin]
    assert len(by_variety) >= 3
    for p in by_variety:
        voice = Voice.espeak(p.origin, "", 175, 50)
        assert engine.phonemize(SENTENCE, voice, {TERM: p.espeak}).split()[1] == p.espeak, p.origin
        assert engine.phonemize(SENTENCE, voice, {TERM: p.espeak}, ipa=True).split()[1] == p.ipa, p.origin


def test_stress_variants_reach_espeak_with_the_stress_where_asked(variants):
    engine = get_engine("espeak")
    shifted = [p for p in variants if "+stress" in p.origin]
    assert len(shifted) == 2
    for p in shifted:
        reported = engine.phonemize(SENTENCE, US, {TERM: p.espeak}).split()[1]
        # espeak re-applies en-us allophony (t -> t# before an unstressed vowel), never moves the stress
        assert _stress_numbers(reported) == _stress_numbers(p.espeak)


def test_bad_phonemes_are_refused_before_espeak_sees_them():
    with pytest.raises(SynthesisError, match="not allowed inside"):
        get_engine("espeak").synthesize(SENTENCE, US, pronunciations={TERM: "l'E]] [[x"})


# --- piper: the phoneme ids sent to the model are those of the requested IPA ----------------------------
def test_piper_model_gets_the_ids_of_the_requested_ipa(monkeypatch, variants):
    from tts_gen.engines import piper as piper_mod

    engine = get_engine("piper")
    voice = Voice.piper("en_US-joe-medium", 1.0, 0)
    seen = []
    real_run = piper_mod._run

    def spy(loaded, ids, scales, seed):
        seen.append(list(ids))
        return real_run(loaded, ids, scales, seed)

    monkeypatch.setattr(piper_mod, "_run", spy)
    asked = next(p.ipa for p in variants if "+stress" in p.origin)
    loaded = engine._load(voice.name)
    want = loaded.voice.phonemes_to_ids(list(unicodedata.normalize("NFD", asked)))[2:-1]  # no BOS+PAD / EOS

    def contains(ids):
        return any(ids[i:i + len(want)] == want for i in range(len(ids) - len(want) + 1))

    audio, rate = engine.synthesize(SENTENCE, voice, seed=3, pronunciations={TERM: asked})
    assert len(seen) == 1 and contains(seen[0])
    assert rate == 22050 and audio.size > rate // 4 and np.abs(audio).max() > 0.5
    engine.synthesize(SENTENCE, voice, seed=3)  # piper's own guess is a different string of ids
    assert len(seen) == 2 and not contains(seen[1])
    both = engine.phonemize("zolpidem ibuprofen now", voice, {"zolpidem": "zˈɑːlpɪdəm", "ibuprofen": "ˈaɪbjuːpɹoʊfən"})
    assert ["".join(s) for s in both] == ["zˈɑːlpɪdəm ˈaɪbjuːpɹoʊfən nˈaʊ"]  # one word boundary between terms
    with pytest.raises(SynthesisError, match="not in voice en_US-joe-medium's phoneme set"):
        engine.synthesize(SENTENCE, voice, pronunciations={TERM: "l\u0436v"})


# --- variant generation ------------------------------------------------------------------------------
def test_varieties_give_distinct_phonemes_and_duplicates_are_dropped(variants):
    by_variety = [p for p in variants if "+stress" not in p.origin]
    origins = [p.origin for p in by_variety]
    assert origins[0] == "en-us" and "en-gb-scotland" in origins
    assert len({(p.espeak, p.ipa) for p in by_variety}) == len(by_variety)
    assert len({p.espeak for p in by_variety}) >= 3  # rhotic/non-rhotic, flapped t, Scottish r
    twice = generate_variants([TERM], max_variants=20, varieties=["en-us", "en-gb", "en-us"], max_stress=0)[TERM]
    assert [p.origin for p in twice] == ["en-us", "en-gb"]
    capped = generate_variants([TERM], max_variants=3, seed=0)[TERM]
    assert len(capped) == 3 and [p.origin for p in capped][:2] == ["en-us", "en-gb"] and "+stress" in capped[2].origin


def test_variants_are_deterministic_for_a_seed():
    a = generate_variants([TERM, "evolocumab"], max_variants=3, seed=5, max_stress=1)
    assert a == generate_variants(["evolocumab", TERM], max_variants=3, seed=5, max_stress=1)
    picks = {generate_variants([TERM], max_variants=3, seed=s, max_stress=1)[TERM][-1].origin for s in range(6)}
    assert len(picks) > 1  # the seed decides which stress shifts are kept


def test_stress_variants_move_the_primary_stress_mark_only(variants):
    base = variants[0]
    shifted = [p for p in variants if "+stress" in p.origin]
    for p in shifted:
        assert p.espeak.replace("'", "").replace(",", "") == base.espeak.replace("'", "").replace(",", "")
        assert p.espeak.count("'") == 1 and _stress_numbers(p.espeak) != _stress_numbers(base.espeak)
        assert p.ipa.count("\u02c8") == 1 and p.ipa != base.ipa
    words_x = [["l", "'E", "v", "I2", "t", ",3:"]]
    words_ipa = [["l", "ˈɛ", "v", "ɪ", "t", "ˌɜː"]]
    assert stress_shifts(words_x, words_ipa) == [("lEv'I2t,3:", 2), ("lEvI2t'3:", 3)]
    assert stress_shifts(words_x, [["l", "ˈɛ"]]) == []  # tokens that do not align: no guessing


# --- given pronunciations: lexicon and input lines ------------------------------------------------------
@pytest.mark.parametrize("line, why", [
    ("zolpidem\tespeak", "expected 3 tab-separated fields"),
    ("zolpidem\tcoqui\tz'0lpId@m", "takes no phoneme input"),
    ("zolpidem\tflite\tz'0lpId@m", "unknown TTS engine 'flite'"),
    ("zolpidem\tespeak\t ", "empty phonemes"),
    ("zolpidem\tespeak\tz'0l]]pId@m", "not allowed inside"),
    ("zolpidem\tpiper\tz\u0436lpidem", "not in piper's phoneme set"),
    ("\u2603\tespeak\tz'0lpId@m", "term"),
])
def test_malformed_lexicon_lines_name_file_and_line(tmp_path, line, why):
    lex = tmp_path / "lex.tsv"
    lex.write_text(f"# term\tengine\tphonemes\nibuprofen\tespeak\t,aIbju:pr'oUf@n\n\n{line}\n", encoding="utf-8")
    with pytest.raises(PronunciationError) as err:
        read_lexicon(lex)
    message = str(err.value)
    assert message.startswith(f"{lex}:4: ") and why in message and "\n" not in message


def test_lexicon_alternatives_and_ipa_derived_for_piper(tmp_path):
    lex = tmp_path / "lex.tsv"
    lex.write_text("Zolpidem\tespeak-ng\tz'0lpId@m\nzolpidem\tespeak\tz0lp'aId@m\nibuprofen\tpiper\tˈaɪbjuːpɹoʊfən\n",
                   encoding="utf-8")
    got = read_lexicon(lex)
    assert [p.espeak for p in got["zolpidem"]] == ["z'0lpId@m", "z0lp'aId@m"]
    assert [p.ipa for p in got["zolpidem"]] == ["zˈɑːlpɪdəm", "zɑːlpˈaɪdəm"]  # espeak-ng's own IPA for them
    assert got["ibuprofen"] == [Pronunciation("ibuprofen", ipa="ˈaɪbjuːpɹoʊfən")]
    assert markup("no ibuprofen or ibuprofens", {"ibuprofen": "X"}) == "no [[X]] or ibuprofens"
    spans = pronounce.term_spans("insulin glargine and insulin, glargine", ["insulin", "glargine", "insulin glargine"])
    assert [t for _s, _e, t in spans] == ["insulin glargine", "insulin", "glargine"]  # longest wins; ',' splits


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"id": "u1", "text": "Take levetiracetam twice daily.", "names": ["levetiracetam"]},
    {"id": "u2", "text": "Does zolpidem help?", "names": ["zolpidem"], "pronunciations": {"zolpidem": "z'0lpId@m"}},
    {"id": "u3", "text": "Is ibuprofen safe with levetiracetam?", "names": ["ibuprofen", "levetiracetam"]},
    {"id": "u4", "text": "Call your doctor."},
]
VOICES = [Voice.espeak("en-us", "", 175, 50), Voice.espeak("en-gb", "m3", 160, 40)]


def test_manifest_records_the_pronunciation_each_term_used(tmp_path):
    lex = tmp_path / "lex.tsv"
    lex.write_text("ibuprofen\tespeak\t'aIbju:proUf@n\n", encoding="utf-8")
    text = _jsonl(tmp_path / "in.jsonl", ROWS)
    summary = generate(text, tmp_path / "out", VOICES, domain="med", prefix="p", progress=False, seed=1,
                       lexicon=lex, pron_variants=3)
    assert summary.utterances == 4 and summary.failures == 0
    sups = {s.id: s for s in SupervisionSet.from_file(tmp_path / "out/p_supervisions.jsonl.gz")}
    options = {p.espeak: p.origin for p in generate_variants([TERM], max_variants=3, seed=1)[TERM]}
    (u1,) = sups["u1"].custom["pronunciations"]
    assert u1["term"] == TERM and options[u1["phonemes"]] == u1["origin"]
    assert sups["u2"].custom["pronunciations"] == [{"term": "zolpidem", "phonemes": "z'0lpId@m", "origin": "given"}]
    u3 = sups["u3"].custom["pronunciations"]
    assert [r["term"] for r in u3] == ["ibuprofen", TERM]
    assert u3[0] == {"term": "ibuprofen", "phonemes": "'aIbju:proUf@n", "origin": "given"}
    assert sups["u4"].custom["pronunciations"] == []
    cut = next(c for c in CutSet.from_file(tmp_path / "out/p_cuts.jsonl.gz") if c.supervisions[0].id == "u2")
    assert cut.supervisions[0].custom["pronunciations"][0]["origin"] == "given"
    # the audio is that of the recorded phonemes: espeak speaks u2 as asked
    voice = Voice.parse(sups["u2"].speaker)
    assert get_engine("espeak").phonemize(sups["u2"].text, voice, {"zolpidem": "z'0lpId@m"}).split()[1] == "z'0lpId@m"
    # a changed lexicon re-synthesizes the utterances whose pronunciation changed, and only those
    lex.write_text("ibuprofen\tespeak\t,aIbju:pr'oUf@n\n", encoding="utf-8")
    again = generate(text, tmp_path / "out", VOICES, domain="med", prefix="p", progress=False, seed=1,
                     lexicon=lex, pron_variants=3)
    assert again.resumed == 3 and again.synthesized == 1


def test_default_run_records_nothing_and_line_errors_name_the_line(tmp_path):
    text = _jsonl(tmp_path / "in.jsonl", [r for r in ROWS if "pronunciations" not in r])
    generate(text, tmp_path / "out", VOICES, domain="med", prefix="p", progress=False)
    assert all("pronunciations" not in s.custom for s in SupervisionSet.from_file(tmp_path / "out/p_supervisions.jsonl.gz"))
    bad = _jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"id": "x", "text": "Take aspirin.", "pronunciations": {"zolpidem": "z'0l"}}])
    with pytest.raises(PronunciationError, match=rf"^{bad}:2: pronunciations: term 'zolpidem' does not occur"):
        generate(bad, tmp_path / "o2", VOICES, domain="med", prefix="p", progress=False)
    bad.write_text(json.dumps({"id": "x", "text": "Take aspirin.", "pronunciations": ["aspirin"]}) + "\n")
    with pytest.raises(PronunciationError, match=rf"^{bad}:1: 'pronunciations' must be an object"):
        generate(bad, tmp_path / "o3", VOICES, domain="med", prefix="p", progress=False)


def test_cli_lexicon_option_and_one_line_error(tmp_path):
    runner = CliRunner()
    text = _jsonl(tmp_path / "in.jsonl", ROWS[:1])
    vfile = tmp_path / "v.txt"
    vfile.write_text(VOICES[0].id + "\n")
    lex = tmp_path / "lex.tsv"
    lex.write_text("levetiracetam\tespeak\tl,EvI2t'3:ra#s,Et#am\n", encoding="utf-8")
    args = ["tts-gen", str(text), str(tmp_path / "out"), "--domain", "d", "--prefix", "p", "--voices-file", str(vfile),
            "--no-progress", "--lexicon", str(lex)]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    (sup,) = SupervisionSet.from_file(tmp_path / "out/p_supervisions.jsonl.gz")
    assert sup.custom["pronunciations"] == [{"term": TERM, "phonemes": "l,EvI2t'3:ra#s,Et#am", "origin": "given"}]
    lex.write_text("levetiracetam\tespeak\n", encoding="utf-8")
    res = runner.invoke(cli, args)
    assert res.exit_code == 1 and f"Error: {lex}:1: expected 3 tab-separated fields" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_choice_is_per_utterance_and_engine_without_alphabet_keeps_its_own():
    assert {n: get_engine(n).phoneme_alphabet for n in ("espeak", "piper")} == pronounce.ENGINE_ALPHABETS
    opts = [Pronunciation(TERM, "a", "x", "en-us"), Pronunciation(TERM, "a", "y", "en-gb"),
            Pronunciation(TERM, "b", "z", "en-029")]
    espeak_picks = {pronounce.choose(opts, "espeak", 0, f"u{i}", TERM).espeak for i in range(40)}
    assert espeak_picks == {"a", "b"}  # duplicates by mnemonics count once, both get used
    assert pronounce.choose(opts, "espeak", 0, "u1", TERM) == pronounce.choose(opts, "espeak", 0, "u1", TERM)
    assert pronounce.choose(opts, "coqui", 0, "u1", TERM).record("coqui") == {"term": TERM, "phonemes": None,
                                                                              "origin": "engine"}
