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
