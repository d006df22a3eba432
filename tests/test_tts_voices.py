"""Voice ids, seeded sampling, exclusion and train/test splits (tts_gen.voices)."""
from __future__ import annotations

import collections

import pytest

from tts_gen.engines.base import get_engine
from tts_gen.voices import (HoldoutRule, UnknownVoiceError, Voice, VoicePoolError, VoiceSpecError, check_voice,
                            parse_voices, read_voice_file, sample_voices, split_voices, write_voice_file)


@pytest.fixture(scope="module")
def espeak():
    return get_engine("espeak-ng")


@pytest.fixture(scope="module")
def piper():
    return get_engine("piper")


def test_espeak_id_roundtrip_and_fields():
    v = Voice.parse("espeak:en-gb-scotland+f3:r165:p42")
    assert (v.engine, v.name, v.variant, v.rate, v.pitch, v.amplitude) == ("espeak", "en-gb-scotland", "f3", 165, 42, 100)
    assert v.id == "espeak:en-gb-scotland+f3:r165:p42"
    assert v.base == "espeak:en-gb-scotland+f3"
    loud = Voice.espeak("en-us", "", 150, 60, amplitude=120)
    assert loud.id == "espeak:en-us:r150:p60:a120"
    assert Voice.parse(loud.id) == loud
    # the engine alias is canonicalized
    assert Voice.parse("espeak-ng:en-us:r150:p60").id == "espeak:en-us:r150:p60"


def test_piper_and_coqui_id_roundtrip():
    v = Voice.piper("en_US-joe-medium", length_scale=1.15, semitones=-2, noise_scale=0.5, noise_w=1.0)
    assert v.id == "piper:en_US-joe-medium:r1.15:p-2:ns0.5:nw1"
    assert Voice.parse(v.id) == v
    up = Voice.piper("en_US-joe-medium", semitones=1)
    assert ":p+1:" in up.id and Voice.parse(up.id).pitch == 1.0
    c = Voice.coqui("p225")
    assert c.id == "coqui:p225" and Voice.parse("coqui:p225") == c


@pytest.mark.parametrize("bad", ["espeak", "espeak:", "nosuch:en-us", "espeak:en-us:x12", "espeak:en us:r1"])
def test_parse_rejects_bad_ids(bad):
    with pytest.raises(VoiceSpecError):
        Voice.parse(bad)


def test_parse_voices_dedupes_and_files_roundtrip(tmp_path):
    voices = parse_voices(["espeak:en-us:r150:p50", "espeak:en-us:r150:p50", "piper:en_US-joe-medium:r1"])
    assert [v.id for v in voices] == ["espeak:en-us:r150:p50", "piper:en_US-joe-medium:r1:p0:ns0.667:nw0.8"]
    path = tmp_path / "v.txt"
    write_voice_file(path, voices)
    path.write_text(path.read_text() + "\n# comment\n", encoding="utf-8")
    assert read_voice_file(path) == [v.id for v in voices]


def test_sampling_is_seeded_distinct_and_reaches_50_from_two_engines(espeak, piper):
    a = sample_voices([espeak, piper], 60, seed=0)
    b = sample_voices([espeak, piper], 60, seed=0)
    c = sample_voices([espeak, piper], 60, seed=1)
    assert [v.id for v in a] == [v.id for v in b]
    assert [v.id for v in a] != [v.id for v in c]
    assert len({v.id for v in a}) == 60
    per_engine = collections.Counter(v.engine for v in a)
    assert set(per_engine) == {"espeak", "piper"}
    # default weights 0.85/0.15: 9 piper voices of 60
    assert per_engine["piper"] == 9
    # diversity first: espeak voices cover many distinct accent+variant bases
    assert len({v.base for v in a if v.engine == "espeak"}) == per_engine["espeak"]


def test_pool_sizes_allow_many_voices(espeak, piper):
    assert len(espeak.voice_pool()) >= 1000
    assert len(piper.voice_pool()) == 5 * 5 * 3 * 3
    assert {"en-us", "en-gb", "en-gb-scotland"} <= set(espeak.list_voices())


def test_exclude_by_name_id_and_rule(espeak):
    voices = sample_voices([espeak], 200, seed=3, exclude=["en-gb-scotland", "espeak:en-us+f3", "espeak:rate=140"])
    assert not any(v.name == "en-gb-scotland" for v in voices)
    assert not any(v.base == "espeak:en-us+f3" for v in voices)
    assert not any(v.rate == 140 for v in voices)
    first = sample_voices([espeak], 5, seed=0)
    again = sample_voices([espeak], 5, seed=0, exclude=[first[0].id])
    assert first[0].id not in {v.id for v in again}


def test_too_many_voices_is_an_error(piper):
    with pytest.raises(VoicePoolError, match="pools hold only 225"):
        sample_voices([piper], 226, seed=0)


def test_split_holds_out_accent_and_band_and_is_disjoint(espeak, piper):
    pool = espeak.voice_pool() + piper.voice_pool()
    split = split_voices(pool, test_fraction=0.1, seed=0,
                         holdout=["espeak:name=en-gb-scotland", "piper:rate=1.15..1.3"])
    train_ids, test_ids = {v.id for v in split.train}, {v.id for v in split.test}
    assert not train_ids & test_ids
    assert train_ids | test_ids == {v.id for v in pool}
    assert not any(v.name == "en-gb-scotland" for v in split.train)
    assert sum(v.name == "en-gb-scotland" for v in split.test) == len([v for v in pool if v.name == "en-gb-scotland"])
    assert not any(v.engine == "piper" and v.rate >= 1.15 for v in split.train)
    assert any(v.engine == "piper" and v.rate == 1.05 for v in split.train)
    # randomly held-out espeak speakers appear with none of their prosody configs in train
    train_bases = {v.base for v in split.train}
    random_test_bases = {v.base for v in split.test if v.engine == "espeak" and v.name != "en-gb-scotland"}
    assert random_test_bases and not random_test_bases & train_bases
    again = split_voices(pool, test_fraction=0.1, seed=0, holdout=["espeak:name=en-gb-scotland", "piper:rate=1.15..1.3"])
    assert [v.id for v in again.test] == [v.id for v in split.test]


def test_holdout_rule_errors():
    with pytest.raises(VoiceSpecError, match="unknown field"):
        HoldoutRule.parse("espeak:colour=red")
    with pytest.raises(VoiceSpecError, match="LO..HI"):
        HoldoutRule.parse("piper:rate=a..b")
    with pytest.raises(VoiceSpecError, match="matches no voice"):
        split_voices([Voice.espeak("en-us")], holdout=["espeak:name=en-zz"])


def test_unknown_voice_lists_close_names(espeak):
    with pytest.raises(UnknownVoiceError, match=r"en-gb-scotlnd.*close: en-gb-scotland"):
        check_voice(Voice.espeak("en-gb-scotlnd", "f3"), espeak)
    with pytest.raises(UnknownVoiceError, match=r"variant 'f33'.*close: .*f3"):
        check_voice(Voice.espeak("en-us", "f33"), espeak)
    check_voice(Voice.espeak("en-gb-scotland", "f3"), espeak)
