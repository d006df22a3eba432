"""Transfer augmentation (voices and channels the TTS engines never produce): signal checks that can
fail, per-epoch variety, realised rates within binomial bounds, config errors, byte-identity when off."""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from lhotse.augmentation.transform import AudioTransform
from lhotse.utils import fastcopy, perturb_num_samples

from synthasr.augment import AugmentConfig, MicEq, PitchShift, Telephone, Vtlp, WsolaTempo, augment_cuts
from synthasr.augment.channel import codec_roundtrip, draw_mic_eq, eq_sos, telephone
from synthasr.augment.voice import N_FFT, pitch_shift, tempo_cut, vtlp, vtlp_unwarp, vtlp_warp
from synthasr.config import ConfigError, from_dict
from synthasr.train.schedule import StageConfig

SR = 16000
STFT_BIN_HZ = SR / N_FFT


def _tone(freq: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return amp * np.sin(2 * np.pi * freq * t)


def _peak_hz(x: np.ndarray) -> float:
    """Frequency of the largest spectral peak, refined by parabolic interpolation (well under a bin)."""
    spec = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64) * np.hanning(len(x))))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-20)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / len(x)


def _speechlike(seconds: float, seed: int, rms: float = 0.1) -> np.ndarray:
    """Harmonic source with a syllable-rate envelope, scaled to ``rms`` (speech level: ~-20 dBFS)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * (110 + 30 * rng.random()) * k * t + 6 * rng.random()) / k for k in range(1, 30))
    x = x * (0.3 + 0.7 * np.sin(2 * np.pi * 4 * t) ** 2)
    return rms * x / np.sqrt(np.mean(x**2))


def _power(x) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def _band_power(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


# --------------------------------------------------------------------------------------------- #
# Signal level
# --------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("alpha", [0.9, 0.95, 1.05, 1.1])
@pytest.mark.parametrize("freq", [500.0, 1500.0, 6000.0])
def test_vtlp_moves_a_tone_to_the_warped_frequency(alpha, freq):
    x = _tone(freq)
    y = vtlp(x, alpha, SR)
    expected = float(vtlp_warp(np.array([freq]), alpha, SR)[0])  # alpha * f below the knee
    if freq < 4000:
        assert expected == pytest.approx(alpha * freq)
    assert abs(_peak_hz(y) - expected) < STFT_BIN_HZ  # within one STFT bin
    assert len(y) == len(x)
    assert _power(y) == pytest.approx(_power(x), rel=1e-6)  # loudness kept
    # A clean tone, not a smear: almost all energy within +-2 bins of the new frequency.
    assert _band_power(y, expected - 2 * STFT_BIN_HZ, expected + 2 * STFT_BIN_HZ) > 0.95 * _band_power(y, 0, SR)


def test_vtlp_resynthesis_keeps_a_harmonic_spectrum():
    """A near-identity warp must give back the input's spectrogram: phase-locked resynthesis keeps
    each harmonic coherent (without locking, bins drift apart and the error is ~-10 dB)."""
    from synthasr.augment.voice import _stft

    x = _speechlike(2.0, 1)
    a, b = np.abs(_stft(vtlp(x, 1.0001, SR))), np.abs(_stft(x))
    assert 20 * np.log10(np.linalg.norm(a - b) / np.linalg.norm(b)) < -15.0


def test_vtlp_warp_is_monotone_fixes_nyquist_and_inverts():
    f = np.linspace(0, SR / 2, 1001)
    for alpha in (0.8, 0.9, 1.0, 1.1, 1.25):
        w = vtlp_warp(f, alpha, SR)
        assert np.all(np.diff(w) > 0) and w[0] == 0 and w[-1] == pytest.approx(SR / 2)
        np.testing.assert_allclose(vtlp_unwarp(w, alpha, SR), f, atol=1e-9)


@pytest.mark.parametrize("semitones", [-3.0, -1.0, 1.5, 4.0])
def test_pitch_shift_moves_a_tone_by_the_semitone_ratio_and_keeps_duration(semitones):
    x = _tone(440.0, seconds=1.5)
    y = pitch_shift(x, semitones, SR)
    assert len(y) == len(x)
    expected = 440.0 * 2 ** (semitones / 12)
    assert _peak_hz(y) == pytest.approx(expected, abs=1.0)  # 1 Hz: < 1/15 of a semitone at 440 Hz
    assert _power(y[SR // 10 : -SR // 10]) == pytest.approx(_power(x), rel=0.1)  # no level collapse


def test_pitch_shift_moves_every_harmonic_of_a_voice_like_signal():
    t = np.arange(SR) / SR
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in (1, 2, 3))
    y = pitch_shift(x, 2.0, SR)
    ratio = 2 ** (2 / 12)
    for k in (1, 2, 3):  # each harmonic's neighbourhood holds the shifted harmonic
        lo, hi = 150 * k * ratio - 15, 150 * k * ratio + 15
        assert _band_power(y, lo, hi) > 10 * _band_power(y, 150 * k - 5, 150 * k + 5)


def test_tempo_changes_duration_but_not_pitch(tmp_path):
    cut = _file_cut(tmp_path, "tone", _tone(300.0, seconds=2.0))
    out = tempo_cut(cut, 1.25)
    audio = out.load_audio()[0]
    assert out.id == "tone_tp1.25"
    assert out.num_samples == perturb_num_samples(cut.num_samples, 1.25) == audio.shape[0]
    assert out.supervisions[0].duration == pytest.approx(cut.duration / 1.25, abs=1 / SR)
    assert _peak_hz(audio) == pytest.approx(300.0, abs=1.0)
    assert isinstance(out.recording.transforms[-1], WsolaTempo)  # no torchaudio-backed Tempo left
    piece = out.truncate(offset=0.4, duration=0.5)  # lhotse's reverse_timestamps path
    assert piece.load_audio().shape[1] == piece.num_samples


def test_telephone_line_removes_energy_outside_the_band():
    x = 0.1 * np.random.default_rng(0).standard_normal(2 * SR)
    y = telephone(x, SR, (300.0, 3400.0), "none")
    total = _band_power(y, 0, SR)
    assert _band_power(y, 0, 200) < 0.002 * total
    assert _band_power(y, 3700, SR) < 0.005 * total
    assert _band_power(y, 4100, SR) < 1e-4 * total  # gone, not attenuated: the 8 kHz round trip
    assert _band_power(y, 400, 3200) == pytest.approx(_band_power(x, 400, 3200), rel=0.05)  # passband kept
    assert len(y) == len(x)


@pytest.mark.parametrize("codec", ["mulaw", "alaw"])
@pytest.mark.parametrize("rms", [0.03, 0.1, 0.25])
def test_g711_codec_snr_is_about_38_db_at_speech_levels(codec, rms):
    """Companding theory: SNR ~ 6.02*8 + 4.77 - 20 log10(ln(1 + 255)) = 38.1 dB (mu-law) and
    ... - 20 log10(1 + ln 87.6) = 38.2 dB (A-law), nearly independent of level; +-3 dB allowed."""
    x = _speechlike(1.0, 3, rms)
    snr = 10 * np.log10(_power(x) / _power(codec_roundtrip(x, codec) - x))
    assert 35.0 < snr < 41.0
    line = telephone(x, SR, None, "none")  # through the whole 8 kHz line: codec noise on top of it
    coded = telephone(x, SR, None, codec)
    assert 35.0 < 10 * np.log10(_power(line) / _power(coded - line)) < 41.0


def test_mic_eq_gain_is_bounded_by_its_bands():
    from scipy.signal import sosfreqz

    for i in range(200):
        bands = draw_mic_eq(random.Random(i), 3, 6.0)
        assert 1 <= len(bands) <= 3 and all(abs(g) <= 6.0 for _, _, g, _ in bands)
        _, h = sosfreqz(eq_sos(bands, SR), worN=2048, fs=SR)
        db = 20 * np.log10(np.abs(h))
        assert np.max(np.abs(db)) <= sum(abs(g) for _, _, g, _ in bands) + 0.01, bands
    # A single peaking band has exactly its gain at its centre: a +6 dB boost doubles a tone there.
    x = _tone(1000.0)
    y = MicEq(bands=[["peak", 1000.0, 6.0206, 1.0]])(x[None, :], SR)[0]
    assert np.sqrt(_power(y[SR // 2 :]) / _power(x[SR // 2 :])) == pytest.approx(2.0, rel=0.01)
    far = _tone(100.0)
    y_far = MicEq(bands=[["peak", 1000.0, 6.0206, 1.0]])(far[None, :], SR)[0]
    assert np.sqrt(_power(y_far[SR // 2 :]) / _power(far[SR // 2 :])) < 1.1  # a peak, not a gain


@pytest.mark.parametrize(
    "transform",
    [Vtlp(alpha=1.07), PitchShift(semitones=-1.5), WsolaTempo(factor=0.9),
     Telephone(band=True, codec="alaw"), MicEq(bands=[["lowshelf", 200.0, -4.5, 0.707], ["peak", 2500.0, 3.0, 1.2]])],
)
def test_transforms_round_trip_through_manifests(tmp_path, transform):
    cut = _file_cut(tmp_path, "ser", _speechlike(0.6, 1))
    rec = fastcopy(cut.recording, transforms=[transform])
    if isinstance(transform, WsolaTempo):
        rec = fastcopy(rec, num_samples=perturb_num_samples(rec.num_samples, transform.factor))
        rec = fastcopy(rec, duration=rec.num_samples / SR)
    restored = Recording.from_dict(rec.to_dict())
    t = restored.transforms[-1]
    t = t if isinstance(t, AudioTransform) else AudioTransform.from_dict(t)
    assert t == transform
    np.testing.assert_allclose(restored.load_audio(), rec.load_audio(), atol=1e-6)


# --------------------------------------------------------------------------------------------- #
# Per-epoch variety and realised rates
# --------------------------------------------------------------------------------------------- #
TRANSFER = AugmentConfig(vtlp_prob=0.4, pitch_prob=0.3, tempo_prob=0.2, mic_eq_prob=0.25, telephone_prob=0.15,
                         codec_prob=0.2, codecs=["mulaw", "alaw"])
FLAGS = {"vt": "vtlp_prob", "ps": "pitch_prob", "tp": "tempo_prob", "eq": "mic_eq_prob", "tel": "telephone_prob",
         "g711": "codec_prob"}
_TOKEN = re.compile(r"^(vt|ps|tp|eq|tel|g711)(.*)$")


def _file_cut(tmp_path: Path, name: str, audio: np.ndarray) -> MonoCut:
    path = tmp_path / f"{name}.flac"
    sf.write(str(path), np.asarray(audio, dtype=np.float32), SR, subtype="PCM_24")
    rec = Recording.from_file(path, recording_id=name)
    sup = SupervisionSegment(id=name, recording_id=name, start=0.0, duration=rec.duration, text="take two tablets")
    return fastcopy(rec.to_cut(), id=name, supervisions=[sup])


def _metadata_cuts(n: int) -> CutSet:
    """Cuts whose audio is never read: the transforms only edit metadata until audio is loaded."""
    out = []
    for i in range(n):
        rec = Recording(id=f"u{i}", sources=[AudioSource(type="file", channels=[0], source=f"/none/{i}.flac")],
                        sampling_rate=SR, num_samples=2 * SR, duration=2.0)
        sup = SupervisionSegment(id=f"u{i}", recording_id=rec.id, start=0.0, duration=2.0, text="a b")
        out.append(MonoCut(id=f"u{i}", start=0.0, duration=2.0, channel=0, recording=rec, supervisions=[sup]))
    return CutSet.from_cuts(out)


def _draws(augmented_id: str, base_id: str) -> dict:
    """{flag: value} read from the id suffixes (``_vt1.047``, ``_ps-0.5``, ``_tp0.93``, ``_eq``, ``_g711a``)."""
    out = {}
    for token in augmented_id[len(base_id):].split("_")[1:]:
        m = _TOKEN.match(token)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _pattern(draws: dict) -> tuple:
    return tuple(k in draws for k in FLAGS)


def _same_pattern_probability(cfg: AugmentConfig) -> float:
    """Chance that two independent draws fire exactly the same set of transfer transforms."""
    q = 1.0
    for name in FLAGS.values():
        p = getattr(cfg, name)
        q *= p * p + (1 - p) * (1 - p)
    return q


def _within_binomial(k: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(k - n * p) <= sigmas * (n * p * (1 - p)) ** 0.5


def _epoch_ids(cuts: CutSet, epoch: int):
    cuts.data.set_epoch(epoch)
    return [c.id for c in cuts]


def test_per_epoch_augmentation_variety():
    """Fresh draws every epoch, identical draws for the same (seed, epoch) in any object."""
    n = 400
    base = _metadata_cuts(n)
    stream = augment_cuts(base, TRANSFER, seed=5)
    e1, e2 = _epoch_ids(stream, 1), _epoch_ids(stream, 2)
    assert _epoch_ids(stream, 1) == e1
    assert _epoch_ids(augment_cuts(base, TRANSFER, seed=5), 2) == e2  # a new object (process) agrees
    assert _epoch_ids(augment_cuts(base, TRANSFER, seed=6), 1) != e1  # the seed matters
    d1 = [_draws(a, c.id) for a, c in zip(e1, base)]
    d2 = [_draws(b, c.id) for b, c in zip(e2, base)]
    same_pattern = _same_pattern_probability(TRANSFER)
    same = sum(_pattern(a) == _pattern(b) for a, b in zip(d1, d2))
    assert _within_binomial(same, n, same_pattern), (same, n * same_pattern)
    # Where VTLP fires in both epochs its factor is a fresh draw: equal only by rounding chance (1/200).
    both = [(a["vt"], b["vt"]) for a, b in zip(d1, d2) if "vt" in a and "vt" in b]
    assert len(both) > 20
    assert _within_binomial(sum(a == b for a, b in both), len(both), 1 / 200)


def test_per_epoch_variety_reaches_the_audio(tmp_path):
    cut = _file_cut(tmp_path, "utt", _speechlike(1.0, 2))
    cfg = AugmentConfig(vtlp_prob=1.0, pitch_prob=1.0, mic_eq_prob=1.0)
    stream = augment_cuts(CutSet.from_cuts([cut]), cfg, seed=1)
    audio = {}
    for epoch in (0, 1, 0):
        stream.data.set_epoch(epoch)
        (out,) = list(stream)
        audio.setdefault(epoch, []).append(out.load_audio())
    np.testing.assert_array_equal(audio[0][0], audio[0][1])  # same (seed, epoch): same samples
    assert audio[0][0].shape == audio[1][0].shape == (1, cut.num_samples)  # duration kept
    assert not np.allclose(audio[0][0], audio[1][0], atol=1e-3)


def test_realised_transfer_rates_match_configured_probabilities():
    n_cuts, epochs = 500, 3
    base = _metadata_cuts(n_cuts)
    stream = augment_cuts(base, TRANSFER, seed=9)
    draws = [_draws(i, c.id) for e in range(epochs) for i, c in zip(_epoch_ids(stream, e), base)]
    n = len(draws)
    for flag, name in FLAGS.items():
        p = getattr(TRANSFER, name)
        k = sum(flag in d for d in draws)
        assert _within_binomial(k, n, p), (name, k, n * p)
    codecs = [d["g711"] for d in draws if "g711" in d]
    assert _within_binomial(sum(c == "u" for c in codecs), len(codecs), 0.5)
    for flag, key in (("vt", "vtlp_range"), ("ps", "pitch_semitones"), ("tp", "tempo_range")):
        lo, hi = getattr(TRANSFER, key)
        values = [float(d[flag]) for d in draws if flag in d]
        assert all(lo <= v <= hi for v in values), key
        assert max(values) - min(values) > 0.8 * (hi - lo), key  # the whole range is used


def test_oversampled_copies_get_independent_transfer_draws():
    """Through the schedule's path (mix, then augment per source): ``_rep<k>`` copies differ."""
    from synthasr.augment import augment_sources
    from synthasr.data.mixing import mix_sources

    def tagged(n, prefix, source):
        return CutSet.from_cuts(fastcopy(c, id=f"{prefix}{i}", supervisions=[
            fastcopy(c.supervisions[0], id=f"{prefix}{i}", custom={"mix_source": source})])
            for i, c in enumerate(_metadata_cuts(n)))

    mixed = mix_sources({"general": tagged(600, "g", "general"), "medication_synth": tagged(100, "s", "medication_synth")},
                        {"general": 0.5, "medication_synth": 0.5}, seed=3, num_cuts=1200, tag_key="mix_source")
    stream = augment_sources(mixed, {"medication_synth": TRANSFER}, seed=3, source_key="mix_source")
    stream.data.set_epoch(1)
    copies = {}
    for cut in stream:
        base_id = cut.id.split("_")[0]
        if base_id.startswith("g"):
            assert cut.id == base_id  # no config for this source: untouched
            continue
        rep = next((t for t in cut.id.split("_") if t.startswith("rep")), "rep0")
        copies.setdefault(base_id, {})[rep] = _pattern(_draws(cut.id.replace(f"_{rep}", ""), base_id))
    pairs = [(v["rep0"], v["rep1"]) for v in copies.values() if "rep0" in v and "rep1" in v]
    assert len(pairs) >= 90
    assert _within_binomial(sum(a == b for a, b in pairs), len(pairs), _same_pattern_probability(TRANSFER))


def test_transfer_keys_off_leave_older_draws_untouched():
    """Byte-identity for existing configs: with every transfer probability at 0 nothing extra is
    drawn (other transfer keys are irrelevant); turning transfer on keeps the older on/off draws."""
    old = AugmentConfig(speed=[0.9, 1.0, 1.1], volume_prob=0.3, bandlimit_prob=0.2, mulaw_prob=0.2)
    tweaked = AugmentConfig(speed=[0.9, 1.0, 1.1], volume_prob=0.3, bandlimit_prob=0.2, mulaw_prob=0.2,
                            vtlp_range=[0.8, 1.2], codecs=["alaw"], mic_eq_bands=5)
    base = _metadata_cuts(200)
    ids_old = _epoch_ids(augment_cuts(base, old, seed=3), 1)
    assert _epoch_ids(augment_cuts(base, tweaked, seed=3), 1) == ids_old
    assert not any(_draws(i, c.id) for i, c in zip(ids_old, base))
    on = AugmentConfig(speed=[0.9, 1.0, 1.1], volume_prob=0.3, bandlimit_prob=0.2, mulaw_prob=0.2, vtlp_prob=0.5)
    ids_on = _epoch_ids(augment_cuts(base, on, seed=3), 1)
    strip = lambda i: re.sub(r"_(vt|ps|tp|eq|tel|g711)[^_]*", "", i)  # noqa: E731
    assert [strip(i) for i in ids_on] == ids_old


def test_identity_and_encoder_cache_view_of_transfer_keys():
    assert AugmentConfig().is_identity and not AugmentConfig().uses_transfer
    for name in FLAGS.values():
        assert not AugmentConfig(**{name: 0.1}).is_identity, name


# --------------------------------------------------------------------------------------------- #
# Config errors: one line, naming the key
# --------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "value, message",
    [
        ({"vtlp_prob": 1.5}, "augment.medication_synth.vtlp_prob: must be a probability in [0, 1], got 1.5"),
        ({"codec_prob": -0.1}, "augment.medication_synth.codec_prob: must be a probability"),
        ({"codec_prob": "often"}, "augment.medication_synth.codec_prob: expected float"),
        ({"vtlp_range": [1.1, 0.9]}, "augment.medication_synth.vtlp_range: expected [min, max]"),
        ({"vtlp_range": [0.3, 1.1]}, "augment.medication_synth.vtlp_range: expected [min, max] with min <= max (min >= 0.5"),
        ({"pitch_semitones": [-20.0, 2.0]}, "augment.medication_synth.pitch_semitones: expected"),
        ({"tempo_range": [0.9, 3.0]}, "augment.medication_synth.tempo_range: expected"),
        ({"mic_eq_bands": 0}, "augment.medication_synth.mic_eq_bands: must be in [1, 8], got 0"),
        ({"mic_eq_gain_db": 40.0}, "augment.medication_synth.mic_eq_gain_db: must be in [0, 24]"),
        ({"telephone_band_hz": [300.0, 5000.0]}, "augment.medication_synth.telephone_band_hz: expected"),
        ({"telephone_band_hz": [300.0, 300.0]}, "augment.medication_synth.telephone_band_hz: low and high must differ"),
        ({"codecs": ["gsm"]}, "augment.medication_synth.codecs: expected a non-empty list of ['mulaw', 'alaw']"),
        ({"codecs": []}, "augment.medication_synth.codecs: expected a non-empty list"),
        ({"vtlp_probability": 0.3}, "unknown key stages[0].augment.medication_synth.vtlp_probability"),
    ],
)
def test_schedule_augment_errors_name_the_key(value, message):
    stage = {"name": "adapt", "data": {"medication_synth": 1.0}, "augment": {"medication_synth": value}}
    with pytest.raises(ConfigError) as err:
        from_dict(StageConfig, stage, where="sched.yaml", key="stages[0]")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("sched.yaml: ")


def test_schedule_accepts_the_documented_transfer_block():
    block = {"vtlp_prob": 0.3, "vtlp_range": [0.9, 1.1], "pitch_prob": 0.3, "pitch_semitones": [-2, 2],
             "tempo_prob": 0.2, "tempo_range": [0.9, 1.1], "telephone_prob": 0.1, "codec_prob": 0.1,
             "codecs": ["mulaw", "alaw"], "mic_eq_prob": 0.3, "mic_eq_bands": 3, "mic_eq_gain_db": 6}
    stage = from_dict(StageConfig, {"name": "a", "data": {"medication_synth": 1.0},
                                    "augment": {"medication_synth": block}}, where="sched.yaml", key="stages[0]")
    cfg = stage.augment["medication_synth"]
    assert cfg.uses_transfer and cfg.pitch_semitones == [-2.0, 2.0] and cfg.mic_eq_gain_db == 6.0


@pytest.mark.parametrize("n", [0, 1, 5, 300])
def test_transforms_survive_tiny_inputs(n):
    """A 0- or 5-sample cut must not crash a training epoch; length-keeping transforms keep it."""
    x = (0.1 * np.random.default_rng(n).standard_normal((1, n))).astype(np.float32)
    for transform in (Vtlp(alpha=1.1), PitchShift(semitones=-2.0), Telephone(codec="mulaw"),
                      MicEq(bands=draw_mic_eq(random.Random(1), 3, 6.0))):
        y = transform(x, SR)
        assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y)), transform
    y = WsolaTempo(factor=0.9)(x, SR)
    assert y.shape == (1, perturb_num_samples(n, 0.9)) and np.all(np.isfinite(y))
