"""recipes/medication/local/probe_voices.py: which voice-factor levels are probed and which get excluded."""
import importlib.util
import random
import sys
from pathlib import Path

from tts_gen.voices import Voice, make_matcher

_SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "local" / "probe_voices.py"
_spec = importlib.util.spec_from_file_location("probe_voices", _SCRIPT)
P = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("probe_voices", P)
_spec.loader.exec_module(P)

POOL = [Voice.espeak(name, variant, rate, pitch)
        for name in ("en-us", "en-gb") for variant in ("", "f3", "m1")
        for rate in (140, 185) for pitch in (30, 50)] + [Voice.piper("joe", 1.0, s) for s in (0.0, 2.0)]


def test_plan_samples_every_level_of_every_probed_field():
    plan = P._plan(POOL, P.PROBED_FIELDS, per_level=2, rng=random.Random(0))
    levels = {key for key, _ in plan}
    assert levels == {"espeak:variant=", "espeak:variant=f3", "espeak:variant=m1", "espeak:name=en-us",
                      "espeak:name=en-gb", "espeak:rate=140.0", "espeak:rate=185.0", "espeak:pitch=30.0",
                      "espeak:pitch=50.0", "piper:rate=1.0", "piper:pitch=0.0", "piper:pitch=2.0"}
    for key, voice in plan:  # every sampled voice really has the level it stands for
        field, value = key.split(":", 1)[1].split("=")
        assert str(getattr(voice, field)) == value
    assert sum(1 for key, _ in plan if key == "piper:rate=1.0") == 2  # capped at per_level


def test_exclude_rules_threshold_keep_and_default_variant():
    table = {"espeak:variant=f3": {"wer": 95.0}, "espeak:variant=m1": {"wer": 30.0},
             "espeak:variant=": {"wer": 80.0}, "espeak:name=en-gb": {"wer": 70.0},
             "espeak:rate=185.0": {"wer": 60.0}}
    rules = P.exclude_rules(table, max_wer=60.0, keep=["espeak:name=en-gb"])
    assert rules == ["espeak:variant=f3"]  # 60.0 is not above 60; the kept rule and "variant=" never excluded
    excluded = make_matcher(rules)  # the rules are what `tts-voices split --exclude` accepts
    assert {v.variant for v in POOL if excluded(v)} == {"f3"}
