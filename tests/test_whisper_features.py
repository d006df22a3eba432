"""Whisper's log-mel front end (``type: whisper_fbank``): agreement with faster-whisper's extractor,
fixed parameters, and storage precision in compute_fbank."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts  # noqa: E402

from synthasr.config import ConfigError, from_dict  # noqa: E402
from synthasr.data.features import FeatureConfig, compute_fbank, make_extractor, slaney_mel_filters  # noqa: E402

WHISPER = FeatureConfig(type="whisper_fbank")


def _audio(seconds: float = 3.0, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    sweep = 0.3 * np.sin(2 * np.pi * 300 * t * (1 + t))
    return (sweep + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_matches_faster_whisper_feature_extractor():
    fw = pytest.importorskip("faster_whisper.feature_extractor", reason="faster-whisper not installed")
    reference = fw.FeatureExtractor(feature_size=80)
    np.testing.assert_allclose(slaney_mel_filters(80), reference.mel_filters, rtol=1e-6, atol=1e-9)
    audio = _audio()
    ours = make_extractor(WHISPER).extract(audio, 16000)
    theirs = reference(audio, padding=0).T  # no 30 s padding: the same frames, per-utterance max
    assert ours.shape == theirs.shape == (300, 80)
    assert np.abs(ours - theirs).max() < 1e-4
    assert ours.max() - ours.min() <= 2.0 + 1e-6  # the max - 8 clamp, scaled by 1/4


def test_whisper_parameters_are_fixed():
    assert from_dict(FeatureConfig, {"type": "whisper_fbank", "num_mel_bins": 128}).num_mel_bins == 128
    for data, message in [({"type": "whisper_fbank", "sampling_rate": 8000}, "sampling_rate: whisper_fbank is fixed"),
                          ({"type": "whisper_fbank", "dither": 0.1}, "dither"),
                          ({"type": "mfcc"}, "type: expected one of")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(FeatureConfig, data)
        with pytest.raises(ConfigError, match=message):
            make_extractor(data)


def test_compute_fbank_stores_whisper_features_finely_and_never_reuses_kaldi_ones(tmp_path):
    cuts = make_tone_cuts(tmp_path / "audio", n=3)
    kaldi = compute_fbank(cuts, tmp_path, "train")
    assert {c.features.type for c in kaldi} == {"kaldi-fbank"}
    stored = compute_fbank(cuts, tmp_path, "train", feature_config=WHISPER)  # same prefix: must recompute
    extractor = make_extractor(WHISPER)
    for cut, raw in zip(stored, cuts):
        assert cut.features.type == "whisper-fbank"
        feats, direct = cut.load_features(), extractor.extract(raw.load_audio(), 16000)
        assert feats.shape == direct.shape
        assert np.abs(feats - direct).max() <= 2.0 ** -9 + 1e-6  # lilcom tick 2**-8, rounding
