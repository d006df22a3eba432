"""Weighted multi-style mixing: realised ratios, oversampling, determinism, bad input."""
from __future__ import annotations

from collections import Counter

import pytest
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource

from synthasr.data.mixing import MixingError, mix_sources, realized_fractions, source_counts


def _cuts(prefix: str, n: int, domain: str) -> CutSet:
    cuts = []
    for i in range(n):
        rec = Recording(
            id=f"{prefix}-rec-{i}",
            sources=[AudioSource(type="file", channels=[0], source=f"/nonexistent/{prefix}-{i}.flac")],
            sampling_rate=16000,
            num_samples=16000,
            duration=1.0,
        )
        sup = SupervisionSegment(
            id=f"{prefix}-{i}", recording_id=rec.id, start=0.0, duration=1.0, text="hello", custom={"domain": domain}
        )
        cuts.append(MonoCut(id=f"{prefix}-{i}", start=0.0, duration=1.0, channel=0, recording=rec, supervisions=[sup]))
    return CutSet.from_cuts(cuts)


@pytest.fixture(scope="module")
def sources():
    return {"general": _cuts("gen", 1500, "general"), "medication_synth": _cuts("med", 120, "medication")}


def test_block_mixing_realizes_weights_within_2_percent(sources):
    mixed = list(mix_sources(sources, {"general": 0.7, "medication_synth": 0.3}, seed=1, num_cuts=2000))
    assert len(mixed) == 2000
    frac = realized_fractions(mixed, key="mix_source")
    assert abs(frac["general"] - 0.7) <= 0.02
    assert abs(frac["medication_synth"] - 0.3) <= 0.02
    # Block interleaving is exact to within one cut per source.
    assert abs(source_counts(mixed, "mix_source")["medication_synth"] - 600) <= 1
    # The original domain tag is preserved next to the source tag.
    assert realized_fractions(mixed, key="domain") == {
        "general": frac["general"],
        "medication": frac["medication_synth"],
    }


def test_mux_method_realizes_weights_within_2_percent(sources):
    mixed = list(mix_sources(sources, {"general": 3, "medication_synth": 1}, seed=3, num_cuts=4000, method="mux"))
    frac = realized_fractions(mixed, key="domain")
    assert abs(frac["general"] - 0.75) <= 0.02
    assert abs(frac["medication"] - 0.25) <= 0.02


def test_small_source_is_oversampled_with_unique_ids(sources):
    mixed = list(mix_sources(sources, {"general": 0.5, "medication_synth": 0.5}, seed=0, num_cuts=1000))
    is_med = [c.supervisions[0].custom["mix_source"] == "medication_synth" for c in mixed]
    med = [c for c, m in zip(mixed, is_med) if m]
    # Guaranteed at block boundaries (64 cuts): within one cut of the target; 960 = 15 blocks.
    assert abs(sum(is_med[:960]) - 480) <= 1  # 120 synthetic cuts seen ~4x
    assert abs(len(med) - 500) <= 1  # ... and at the end of the epoch (a shortened last block)
    assert len({c.id for c in mixed}) == len(mixed)
    base_ids = Counter(c.id.split("_rep")[0] for c in med)
    assert set(base_ids) == {f"med-{i}" for i in range(120)}
    assert max(base_ids.values()) - min(base_ids.values()) <= 1  # every pass covers the whole set


def test_default_epoch_size_sees_largest_source_once(sources):
    mixed = mix_sources(sources, {"general": 0.75, "medication_synth": 0.25}, seed=0)
    assert len(mixed) == 2000  # 1500 / 0.75
    counts = source_counts(mixed, "mix_source")
    assert counts == {"general": 1500, "medication_synth": 500}


def test_same_seed_same_stream_different_seed_differs(sources):
    w = {"general": 0.6, "medication_synth": 0.4}
    a = [c.id for c in mix_sources(sources, w, seed=5, num_cuts=300)]
    b = [c.id for c in mix_sources(sources, w, seed=5, num_cuts=300)]
    c = [c.id for c in mix_sources(sources, w, seed=6, num_cuts=300)]
    assert a == b
    assert a != c


def test_stop_early_stops_when_a_source_is_exhausted(sources):
    mixed = list(mix_sources(sources, {"general": 0.5, "medication_synth": 0.5}, seed=0, num_cuts=1000, stop_early=True))
    counts = source_counts(mixed, "mix_source")
    assert counts["medication_synth"] == 120
    assert len(mixed) < 260


def test_zero_weight_source_is_dropped(sources):
    mixed = list(mix_sources(sources, {"general": 1.0, "medication_synth": 0.0}, seed=0, num_cuts=50))
    assert realized_fractions(mixed, "mix_source") == {"general": 1.0}


def test_inputs_are_not_mutated(sources):
    list(mix_sources(sources, {"general": 1, "medication_synth": 1}, seed=0, num_cuts=10))
    assert "mix_source" not in (sources["general"][0].supervisions[0].custom or {})


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"general": 0.0, "medication_synth": 0.0}, "sum to > 0"),
        ({"general": -0.1, "medication_synth": 1.0}, "'general'.*non-negative"),
        ({"general": 1.0, "nope": 1.0}, "unknown source 'nope'"),
    ],
)
def test_bad_weights_raise_one_line_errors(sources, weights, match):
    with pytest.raises(MixingError, match=match) as e:
        mix_sources(sources, weights, seed=0)
    assert "\n" not in str(e.value)


def test_empty_source_is_named():
    with pytest.raises(MixingError, match="source 'empty' has no cuts"):
        mix_sources({"a": _cuts("a", 3, "general"), "empty": CutSet.from_cuts([])}, {"a": 1, "empty": 1}, seed=0)
