"""Augmentation: signal properties of speed, noise (SNR), reverb (RIR shape), band-limit, mu-law."""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.augmentation.transform import AudioTransform
from lhotse.utils import fastcopy

from synthasr.augment import AugmentConfig, AugmentError, BandLimit, MuLaw, augment_cuts, make_noise, make_rirs
from synthasr.augment.bandlimit import bandlimit_cut
from synthasr.augment.noise import ETW_NOISE_GLOB, add_noise, coloured_noise
from synthasr.augment.reverb import reverb_cut
from synthasr.config import ConfigError, from_dict

SR = 16000


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Harmonic tone with a syllable-rate envelope: broadband enough to test filters and SNR."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * rng.random()
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6) / k for k in range(1, 30))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.3 * x * envelope / np.max(np.abs(x))).astype(np.float32)


def _cut(tmp_path: Path, name: str, audio: np.ndarray, domain: str = "medication"):
    path = tmp_path / f"{name}.flac"
    sf.write(str(path), audio, SR, subtype="PCM_24")
    rec = Recording.from_file(path, recording_id=name)
    cut = rec.to_cut()
    sup = SupervisionSegment(
        id=name, recording_id=name, start=0.0, duration=rec.duration, text="take two tablets", custom={"domain": domain}
    )
    return fastcopy(cut, id=name, supervisions=[sup])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("augment")


@pytest.fixture(scope="module")
def cuts(workdir):
    return CutSet.from_cuts([_cut(workdir, f"utt{i}", _speechlike(1.0 + 0.25 * i, i)) for i in range(6)])


@pytest.fixture(scope="module")
def rirs(workdir):
    return make_rirs(workdir / "rirs", n=3, seed=7)


@pytest.fixture(scope="module")
def noise(workdir, cuts):
    return make_noise(workdir / "noise", n=4, seed=3, babble_from=cuts, duration=3.0, real_noise_glob=None)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def test_speed_perturbation_changes_duration_and_supervisions(cuts):
    cfg = AugmentConfig(speed=[1.1])
    cut = cuts[0]
    out = next(iter(augment_cuts(CutSet.from_cuts([cut]), cfg, seed=0)))
    assert out.id == f"{cut.id}_sp1.1"
    assert out.duration == pytest.approx(cut.duration / 1.1, abs=1.0 / SR)
    assert out.supervisions[0].duration == pytest.approx(cut.duration / 1.1, abs=1.0 / SR)
    assert out.load_audio().shape[1] == out.num_samples == round(cut.num_samples / 1.1)


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_added_noise_has_requested_snr(cuts, noise, snr):
    import random

    cut = cuts[3]
    clean = cut.load_audio()[0]
    mixed = add_noise(cut, noise[0], snr, random.Random(0))
    audio = mixed.load_audio()[0]
    assert audio.shape == clean.shape
    realized = 10 * np.log10(_power(clean) / _power(audio - clean))
    assert realized == pytest.approx(snr, abs=0.2)
    assert mixed.supervisions[0].text == "take two tablets"


def test_short_noise_is_looped_to_cover_the_cut(workdir, noise):
    import random

    long_cut = _cut(workdir, "long", _speechlike(7.0, 42))  # noises are 3 s long
    mixed = add_noise(long_cut, noise[0], 10.0, random.Random(1))
    residual = mixed.load_audio()[0] - long_cut.load_audio()[0]
    last_second = residual[-SR:]
    assert _power(last_second) > 0.1 * _power(residual)


def test_coloured_noise_spectral_slopes():
    rng = np.random.default_rng(0)
    slopes = {}
    for name, alpha in {"white": 0.0, "pink": 1.0, "brown": 2.0}.items():
        x = coloured_noise(SR * 4, alpha, rng)
        psd = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / SR)
        band = lambda lo, hi: psd[(f >= lo) & (f < hi)].mean()  # noqa: E731
        slopes[name] = 10 * np.log10(band(3800, 4200) / band(950, 1050))  # two octaves apart
        assert np.sqrt(np.mean(x**2)) == pytest.approx(1.0, rel=1e-6)
    assert slopes["white"] == pytest.approx(0.0, abs=1.0)
    assert slopes["pink"] == pytest.approx(-6.0, abs=1.0)
    assert slopes["brown"] == pytest.approx(-12.0, abs=1.0)


def test_make_noise_writes_all_kinds_and_is_cached(workdir, noise, cuts):
    types = sorted(c.custom["noise_type"] for c in noise)
    assert types == ["babble", "brown", "pink", "white"]
    babble = [c for c in noise if c.custom["noise_type"] == "babble"][0]
    assert babble.duration == pytest.approx(3.0)
    assert babble.sampling_rate == SR
    assert _power(babble.load_audio()) > 1e-4
    again = make_noise(workdir / "noise", n=4, seed=3, babble_from=cuts, duration=3.0, real_noise_glob=None)
    assert [c.id for c in again] == [c.id for c in noise]


@pytest.mark.skipif(not glob.glob(ETW_NOISE_GLOB), reason="etw-data not installed")
def test_real_etw_noise_is_resampled_to_16k(tmp_path):
    cuts = make_noise(tmp_path, n=0, seed=0, real_noise_glob=ETW_NOISE_GLOB)
    assert len(cuts) == len(glob.glob(ETW_NOISE_GLOB))
    first = sorted(cuts, key=lambda c: c.id)[0]
    info = sf.info(glob.glob(ETW_NOISE_GLOB)[0])
    assert first.sampling_rate == SR
    assert {c.custom["noise_type"] for c in cuts} == {"real"}
    durations = {Path(p).stem: sf.info(p).duration for p in glob.glob(ETW_NOISE_GLOB)}
    assert first.duration == pytest.approx(durations[first.id.replace("noise-real-", "")], abs=1e-3)
    assert info.samplerate == 22050


def test_simulated_rirs_have_direct_path_peak_and_decay(rirs):
    assert len(rirs) == 3
    for rec in rirs:
        h = rec.load_audio()[0].astype(np.float64)
        assert rec.sampling_rate == SR
        peak = int(np.argmax(np.abs(h)))
        assert peak < 0.01 * SR  # direct path first (kept ~40 samples in)
        energy = h**2
        win = int(0.05 * SR)
        early = energy[peak : peak + win].sum()
        later = energy[peak + 2 * win : peak + 3 * win].sum()
        tail = energy[int(0.8 * len(h)) :].sum()
        assert later < early
        assert tail < 0.01 * energy.sum()


def test_reverb_spreads_an_impulse_into_the_rir(workdir, rirs):
    x = np.zeros(SR, dtype=np.float32)
    x[SR // 4] = 0.5
    click = _cut(workdir, "click", x)
    out = reverb_cut(click, rirs[0]).load_audio()[0]
    h = rirs[0].load_audio()[0]
    assert out.shape == x.shape
    assert int(np.argmax(np.abs(out))) == SR // 4  # alignment kept: output shifted by the RIR peak
    shape = out[SR // 4 : SR // 4 + 2000] / out[SR // 4]
    expected = h[np.argmax(h) : np.argmax(h) + 2000] / h.max()
    np.testing.assert_allclose(shape, expected, atol=1e-3)
    assert _power(out[SR // 4 + 200 :]) > 0  # a reverberant tail exists


def test_bandlimit_removes_energy_outside_the_telephone_band(workdir):
    x = coloured_noise(SR * 2, 0.0, np.random.default_rng(1)).astype(np.float32) * 0.1
    cut = bandlimit_cut(_cut(workdir, "white", x), 300.0, 3400.0)
    y = cut.load_audio()[0].astype(np.float64)
    psd = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / SR)
    outside = psd[(f < 200) | (f > 4200)].sum()
    inside = psd[(f > 400) & (f < 3200)].sum()
    assert outside < 0.005 * psd.sum()
    x_psd = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    assert inside == pytest.approx(x_psd[(f > 400) & (f < 3200)].sum(), rel=0.05)  # passband kept
    assert cut.id.endswith("_bl") and cut.recording.transforms[-1].__class__ is BandLimit


def test_mulaw_quantisation_noise_level():
    x = _speechlike(1.0, 5)[None, :]
    snr8 = 10 * np.log10(_power(x) / _power(MuLaw(bits=8)(x, SR) - x))
    snr12 = 10 * np.log10(_power(x) / _power(MuLaw(bits=12)(x, SR) - x))
    assert 25.0 < snr8 < 45.0  # G.711-like
    assert snr12 > snr8 + 18.0  # ~6 dB per extra bit


def test_custom_transforms_roundtrip_through_manifests(workdir):
    cut = bandlimit_cut(_cut(workdir, "ser", _speechlike(0.5, 1)), 300.0, 3400.0)
    restored = Recording.from_dict(cut.recording.to_dict())
    t = restored.transforms[-1]
    t = t if isinstance(t, AudioTransform) else AudioTransform.from_dict(t)
    assert t == BandLimit(low_hz=300.0, high_hz=3400.0)
    np.testing.assert_allclose(restored.load_audio(), cut.recording.load_audio(), atol=1e-6)


def test_augment_cuts_is_lazy_reproducible_and_seed_dependent(cuts, noise, rirs):
    cfg = AugmentConfig(speed=[0.9, 1.0, 1.1], noise_prob=0.5, reverb_prob=0.5, volume_prob=0.5, bandlimit_prob=0.3)
    a = augment_cuts(cuts, cfg, seed=11, noise_cuts=noise, rirs=rirs)
    assert a.is_lazy
    ids_a = [c.id for c in a]
    ids_b = [c.id for c in augment_cuts(cuts, cfg, seed=11, noise_cuts=noise, rirs=rirs)]
    ids_c = [c.id for c in augment_cuts(cuts, cfg, seed=12, noise_cuts=noise, rirs=rirs)]
    assert ids_a == ids_b and ids_a != ids_c
    first_a = next(iter(a)).load_audio()
    first_b = next(iter(augment_cuts(cuts, cfg, seed=11, noise_cuts=noise, rirs=rirs))).load_audio()
    np.testing.assert_array_equal(first_a, first_b)
    assert any("_sp" in i for i in ids_a) and any("_ns" in i for i in ids_a)
    assert all(len(c.supervisions) == 1 for c in a)


def test_identity_config_returns_input(cuts):
    assert augment_cuts(cuts, AugmentConfig(), seed=0) is cuts


def test_missing_noise_or_rirs_is_an_error(cuts):
    with pytest.raises(AugmentError, match="noise cuts"):
        augment_cuts(cuts, AugmentConfig(noise_prob=0.5), seed=0)
    with pytest.raises(AugmentError, match="RIRs"):
        augment_cuts(cuts, AugmentConfig(reverb_prob=0.5), seed=0)


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="sched.yaml: augment.noise_prob: must be a probability"):
        from_dict(AugmentConfig, {"noise_prob": 1.5}, where="sched.yaml", key="augment")
    with pytest.raises(ConfigError, match="snr_range"):
        from_dict(AugmentConfig, {"snr_range": [20, 5]}, where="x.yaml")
    with pytest.raises(ConfigError, match="unknown key speeed"):
        from_dict(AugmentConfig, {"speeed": [1.0]}, where="x.yaml")


def test_augmented_cut_with_stored_features_is_featurized_from_audio(workdir, cuts, noise):
    """A cut with precomputed (clean) features must not keep them once its audio is changed: lhotse
    would otherwise try to mix stored features with a featureless noise cut (a TypeError in training)."""
    from lhotse import LilcomChunkyWriter

    from synthasr.data.features import make_extractor

    with_feats = CutSet.from_cuts(cuts).compute_and_store_features(
        make_extractor(), storage_path=workdir / "feats_for_aug", storage_type=LilcomChunkyWriter)
    assert all(c.has_features for c in with_feats)
    aug = list(augment_cuts(with_feats, AugmentConfig(noise_prob=1.0, snr_range=[10.0, 10.0]), seed=0, noise_cuts=noise))
    assert all(not c.has_features for c in aug)
    assert all(c.load_audio().shape[-1] > 0 for c in aug)
    untouched = list(augment_cuts(with_feats, AugmentConfig(), seed=0))  # no augmentation drawn
    assert all(c.has_features for c in untouched)


# --------------------------------------------------------------------------------------------- #
# Fresh draws per epoch and per oversampled copy; realised rates match the configured ones
# --------------------------------------------------------------------------------------------- #
RATES = AugmentConfig(speed=[0.9, 1.0, 1.1], volume_prob=0.2, reverb_prob=0.3, bandlimit_prob=0.1,
                      mulaw_prob=0.15, noise_prob=0.5)
FLAGS = {"vp": "volume_prob", "rvb": "reverb_prob", "bl": "bandlimit_prob", "mu8": "mulaw_prob", "ns": "noise_prob"}


def _metadata_cuts(n: int, prefix: str = "u", source: str = "medication_synth") -> CutSet:
    """Cuts whose audio is never read: augmentation only edits metadata (lazy transforms)."""
    from lhotse import MonoCut
    from lhotse.audio import AudioSource

    out = []
    for i in range(n):
        rec = Recording(id=f"{prefix}{i}", sources=[AudioSource(type="file", channels=[0], source=f"/none/{i}.flac")],
                        sampling_rate=SR, num_samples=2 * SR, duration=2.0)
        sup = SupervisionSegment(id=f"{prefix}{i}", recording_id=rec.id, start=0.0, duration=2.0, text="a b",
                                 custom={"domain": "medication", "mix_source": source})
        out.append(MonoCut(id=f"{prefix}{i}", start=0.0, duration=2.0, channel=0, recording=rec, supervisions=[sup]))
    return CutSet.from_cuts(out)


def _signature(augmented_id: str, base_id: str):
    """(speed factor, volume?, reverb?, band-limit?, mu-law?, noise?) read from the id suffixes."""
    tokens = augmented_id[len(base_id):].split("_")[1:]
    speed = next((t[2:] for t in tokens if t.startswith("sp")), "1.0")
    return (speed,) + tuple(any(t == k or (k == "vp" and t.startswith("vp")) for t in tokens) for k in FLAGS)


def _same_draw_probability(cfg: AugmentConfig) -> float:
    """Chance that two independent draws give the same signature (speed factor and every on/off flag)."""
    q = 1.0 / len(cfg.speed)
    for name in FLAGS.values():
        p = getattr(cfg, name)
        q *= p * p + (1 - p) * (1 - p)
    return q


def _within_binomial(k: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(k - n * p) <= sigmas * (n * p * (1 - p)) ** 0.5


def _epoch_ids(cuts: CutSet, epoch: int):
    cuts.data.set_epoch(epoch)
    return [c.id for c in cuts]


def test_each_epoch_draws_fresh_yet_reproducible_augmentations(noise, rirs):
    n = 400
    base = _metadata_cuts(n)
    stream = augment_cuts(base, RATES, seed=5, noise_cuts=noise, rirs=rirs)
    e1, e2 = _epoch_ids(stream, 1), _epoch_ids(stream, 2)
    assert _epoch_ids(stream, 1) == e1  # the same epoch again: identical (resume sees the same data)
    fresh = augment_cuts(base, RATES, seed=5, noise_cuts=noise, rirs=rirs)
    assert _epoch_ids(fresh, 2) == e2  # ... in a new object/process too
    same = sum(_signature(a, c.id) == _signature(b, c.id) for a, b, c in zip(e1, e2, base))
    # Independent draws per epoch: equal signatures only by chance (under one shared seed: all n).
    assert _within_binomial(same, n, _same_draw_probability(RATES)), (same, n * _same_draw_probability(RATES))


def test_realised_augmentation_rates_match_configured_probabilities(noise, rirs):
    n_cuts, epochs = 500, 3
    base = _metadata_cuts(n_cuts)
    stream = augment_cuts(base, RATES, seed=9, noise_cuts=noise, rirs=rirs)
    signatures = [_signature(i, c.id) for e in range(epochs) for i, c in zip(_epoch_ids(stream, e), base)]
    n = len(signatures)
    for factor in ("0.9", "1.0", "1.1"):
        k = sum(s[0] == factor for s in signatures)
        assert _within_binomial(k, n, 1 / 3), (factor, k, n)
    for j, name in enumerate(FLAGS.values(), start=1):
        p = getattr(RATES, name)
        k = sum(s[j] for s in signatures)
        assert _within_binomial(k, n, p), (name, k, n * p)


def test_oversampled_copies_are_augmented_independently(noise, rirs):
    from synthasr.augment import augment_sources
    from synthasr.data.mixing import mix_sources

    general, synth = _metadata_cuts(600, "g", "general"), _metadata_cuts(100, "s", "medication_synth")
    mixed = mix_sources({"general": general, "medication_synth": synth}, {"general": 0.5, "medication_synth": 0.5},
                        seed=3, num_cuts=1200, tag_key="mix_source")
    stream = augment_sources(mixed, {"medication_synth": RATES}, seed=3, source_key="mix_source",
                             noise_cuts=noise, rirs=rirs)
    stream.data.set_epoch(1)
    by_base = {}
    for cut in stream:
        source = cut.supervisions[0].custom["mix_source"]
        base_id = cut.id.split("_")[0]
        if source == "general":
            assert cut.id == base_id  # no config for this source: untouched
            continue
        rep = next((t for t in cut.id.split("_") if t.startswith("rep")), "rep0")
        by_base.setdefault(base_id, {})[rep] = _signature(cut.id.replace(f"_{rep}", ""), base_id)
    pairs = [(v["rep0"], v["rep1"]) for v in by_base.values() if "rep0" in v and "rep1" in v]
    assert len(pairs) >= 90  # 600 synthetic slots over 100 cuts: ~6 copies each
    same = sum(a == b for a, b in pairs)
    assert _within_binomial(same, len(pairs), _same_draw_probability(RATES)), same
