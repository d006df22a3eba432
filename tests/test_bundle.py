"""ASRBundle: checkpoint round trip, audio of any kind, bad inputs, caching, the CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import synthasr
from synthasr.checkpoint import CheckpointError, save_checkpoint
from synthasr.config import to_dict
from synthasr.decode.bundle import ASRBundle, AudioError, load_audio, load_model
from synthasr.decode.context_graph import HotwordError
from synthasr.decode.search import greedy_search
from synthasr.model import build_model

TEXTS = ["take amoxicillin twice daily", "the patient needs ibuprofen", "metformin with food every morning",
         "call the doctor tomorrow", "pharmacy hours are short today"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from synthasr.tokenizer import Tokenizer, train_bpe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bundle")
    tok = Tokenizer.load(train_bpe(TEXTS * 3, root / "lang", vocab_size=40, hard_vocab_limit=False))
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": tok.vocab_size})
    ckpt = save_checkpoint(root / "pretrained.pt", model.state_dict(), to_dict(model.config),
                           {"sampling_rate": 16000, "num_mel_bins": 80}, tok.to_bytes())
    rng = np.random.default_rng(0)
    speech = (0.1 * rng.standard_normal(24000)).astype(np.float32)  # 1.5 s at 16 kHz
    wav = root / "a.wav"
    sf.write(wav, speech, 16000)
    return {"root": root, "tok": tok, "model": model, "ckpt": ckpt, "speech": speech, "wav": wav}


@pytest.fixture(scope="module")
def bundle(assets):
    return ASRBundle.from_checkpoint(assets["ckpt"])


def _reference_text(bundle, samples):
    feats = torch.from_numpy(bundle.feature_extractor.extract(samples, 16000)).unsqueeze(0)
    enc, lens = bundle.model.encode(feats, torch.tensor([feats.size(1)]))
    return bundle.tokenizer.decode(greedy_search(bundle.model, enc, lens))[0]


def test_round_trip_from_checkpoint(assets, bundle):
    for key, value in assets["model"].state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value), key
    assert bundle.tokenizer.vocab_size == assets["tok"].vocab_size
    assert bundle.feature_config.num_mel_bins == 80 and not bundle.model.training
    expected = _reference_text(bundle, assets["speech"])
    assert bundle.transcribe(str(assets["wav"])) == expected
    assert bundle.transcribe(assets["speech"], sample_rate=16000) == expected
    assert bundle.transcribe(torch.from_numpy(assets["speech"]), sample_rate=16000) == expected
    assert bundle.transcribe([assets["wav"], assets["wav"]]) == [expected, expected]
    beam = bundle.transcribe(assets["wav"], method="modified_beam_search", beam_size=1)
    assert beam == expected


def test_other_rates_and_stereo_are_converted(assets, bundle, tmp_path):
    from scipy.signal import resample_poly

    speech = assets["speech"]
    t = np.arange(24000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t)).astype(np.float32)
    t48 = np.arange(72000) / 48000
    tone48 = (0.3 * np.sin(2 * np.pi * 440 * t48) + 0.2 * np.sin(2 * np.pi * 2500 * t48)).astype(np.float32)
    sf.write(tmp_path / "stereo48k.wav", np.stack([tone48, tone48], axis=1), 48000, subtype="FLOAT")
    back = load_audio(tmp_path / "stereo48k.wav", 16000)
    assert back.shape == tone.shape
    assert np.abs(back - tone)[200:-200].max() < 1e-3  # band-limited content survives, edges aside
    s48 = resample_poly(speech, 3, 1).astype(np.float32)
    sf.write(tmp_path / "stereo48k.wav", np.stack([s48, s48], axis=1), 48000)
    s8 = resample_poly(speech, 1, 2).astype(np.float32)
    sf.write(tmp_path / "mono8k.flac", s8, 8000)
    assert load_audio(tmp_path / "mono8k.flac", 16000).shape == speech.shape
    texts = bundle.transcribe([tmp_path / "stereo48k.wav", tmp_path / "mono8k.flac"])
    assert all(isinstance(t, str) for t in texts)
    # (channels, samples) and (samples, channels) arrays are both downmixed
    two = np.stack([speech, np.zeros_like(speech)])
    np.testing.assert_allclose(load_audio(two, 16000, 16000), speech / 2)
    np.testing.assert_allclose(load_audio(two.T, 16000, 16000), speech / 2)


def test_short_and_empty_audio_give_empty_text(bundle):
    assert bundle.transcribe(np.zeros(160, dtype=np.float32), sample_rate=16000) == ""  # 10 ms
    assert bundle.transcribe(np.zeros(0, dtype=np.float32), sample_rate=16000) == ""
    assert bundle.transcribe(np.zeros(80, dtype=np.float32), sample_rate=8000) == ""


def test_bad_files(assets, bundle, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00garbage" * 10)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"corrupt\.wav: cannot read audio"):
        bundle.transcribe(corrupt)
    with pytest.raises(AudioError, match=r"empty\.flac: audio file is empty"):
        bundle.transcribe(empty)
    with pytest.raises(AudioError, match="missing.wav: audio file not found"):
        bundle.transcribe(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="sample_rate"):
        bundle.transcribe(assets["speech"])
    with pytest.warns(UserWarning) as caught:
        texts = bundle.transcribe([corrupt, assets["wav"], empty])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "corrupt.wav" in messages[0] and "empty.flac" in messages[1]
    assert texts[0] is None and texts[2] is None
    assert texts[1] == bundle.transcribe(assets["wav"])


def test_integer_pcm_arrays_are_scaled_by_their_range(assets, bundle):
    speech = np.clip(assets["speech"], -1.0, 32767 / 32768)
    pcm16 = np.round(speech * 32768).astype(np.int16)
    as_float = pcm16.astype(np.float32) / 32768
    np.testing.assert_array_equal(load_audio(pcm16, 16000, 16000), as_float)
    np.testing.assert_allclose(load_audio(pcm16.astype(np.int32) << 16, 16000, 16000), as_float, atol=1e-7)
    uint8 = ((pcm16 >> 8) + 128).astype(np.uint8)  # 8-bit WAV convention: unsigned, centred on 128
    np.testing.assert_allclose(load_audio(uint8, 16000, 16000), (pcm16 >> 8).astype(np.float32) / 128, atol=1e-7)
    expected = bundle.transcribe(as_float, sample_rate=16000)
    assert bundle.transcribe(pcm16, sample_rate=16000) == expected
    assert bundle.transcribe(torch.from_numpy(pcm16), sample_rate=16000) == expected
    half = torch.from_numpy(as_float).to(torch.bfloat16)
    assert load_audio(half, 16000, 16000).dtype == np.float32
    with pytest.raises(AudioError, match=r"<array>: unsupported sample type bool"):
        load_audio(np.ones(1600, dtype=bool), 16000, 16000)


def test_sample_rate_must_be_a_whole_number_of_hz(assets, bundle):
    speech = assets["speech"]
    assert bundle.transcribe(speech, sample_rate=16000.0) == bundle.transcribe(speech, sample_rate=16000)
    assert bundle.transcribe(speech, sample_rate=np.int64(16000)) == bundle.transcribe(speech, sample_rate=16000)
    for bad in (16000.5, 0, -8000, float("nan"), float("inf"), True, "16000"):
        with pytest.raises(AudioError, match=r"^sample_rate must be a positive whole number of Hz, got "):
            bundle.transcribe(speech, sample_rate=bad)
        with pytest.raises(AudioError, match=r"^sample_rate must be"):  # a list too: it is the call's argument
            bundle.transcribe([speech, speech], sample_rate=bad)


def test_truncated_files_are_errors_naming_the_file(assets, bundle, tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, assets["speech"], 16000, subtype="PCM_16")
    cut_short = tmp_path / "short.wav"
    cut_short.write_bytes(full.read_bytes()[: 44 + 20001])  # 10000.5 of 24000 samples
    assert sf.info(str(cut_short)).frames == 10000  # libsndfile alone shortens it without a word
    with pytest.raises(AudioError, match=r"short\.wav: truncated audio file: the WAV header declares 48000 bytes "
                                         r"of samples but only 20001 are present"):
        bundle.transcribe(cut_short)
    flac = tmp_path / "full.flac"
    sf.write(flac, assets["speech"], 16000, subtype="PCM_16")
    cut_flac = tmp_path / "short.flac"
    cut_flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    with pytest.raises(AudioError, match=r"short\.flac: (truncated audio file|cannot read audio)"):
        bundle.transcribe(cut_flac)
    with pytest.warns(UserWarning, match="short.wav: truncated"):
        assert bundle.transcribe([cut_short, full])[0] is None
    # a WAV streamed to a pipe (placeholder data size) is complete by design, not truncated
    streamed = bytearray(full.read_bytes())
    streamed[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    np.testing.assert_array_equal(load_audio(tmp_path / "streamed.wav", 16000), load_audio(full, 16000))


def test_decode_resamples_exactly_like_lhotse_training_features(tmp_path):
    """One resampler: decoding a 22.05/44.1/8 kHz file gives the samples lhotse's cut.resample gives."""
    from lhotse import Recording

    rng = np.random.default_rng(1)
    for rate in (22050, 44100, 8000):
        path = tmp_path / f"x{rate}.wav"
        sf.write(path, (0.1 * rng.standard_normal(rate)).astype(np.float32), rate, subtype="PCM_16")
        training = Recording.from_file(path).resample(16000).load_audio()[0]
        np.testing.assert_array_equal(load_audio(path, 16000), training)


def test_long_audio_is_chunked(assets, bundle):
    long = np.concatenate([assets["speech"]] * 3)  # 4.5 s
    chunks = bundle._chunk_features(0, long, chunk_seconds=2.0)
    assert len(chunks) == 3 and [c.position for c in chunks] == [0, 1, 2]
    assert all(abs(c.features.size(0) - 150) <= 2 for c in chunks)  # equal 1.5 s pieces
    expected = " ".join(t for t in [_reference_text(bundle, assets["speech"])] * 3 if t)
    assert bundle.transcribe(long, sample_rate=16000, chunk_seconds=1.5) == expected


def test_hotwords_through_bundle(assets, bundle):
    text = bundle.transcribe(assets["wav"], hotwords=["amoxicillin", "metformin:3"], hotword_score=2.0)
    assert isinstance(text, str)
    with pytest.raises(HotwordError, match="zzz"):
        bundle.transcribe(assets["wav"], hotwords=["zzz"])


def test_vocab_mismatch_and_weight_mismatch_are_clear(assets, tmp_path):
    from synthasr.tokenizer import Tokenizer, train_bpe

    model = assets["model"]
    other = Tokenizer.load(train_bpe(TEXTS * 3, tmp_path / "lang", vocab_size=30, hard_vocab_limit=False))
    bad_vocab = save_checkpoint(tmp_path / "vocab.pt", model.state_dict(), to_dict(model.config), {}, other.to_bytes())
    with pytest.raises(CheckpointError, match="tokenizer has 30 tokens but the model was built for vocab_size=40"):
        ASRBundle.from_checkpoint(bad_vocab)
    cfg = to_dict(model.config)
    cfg["num_encoder_layers"] = 3
    bad_weights = save_checkpoint(tmp_path / "w.pt", model.state_dict(), cfg, {}, assets["tok"].to_bytes())
    with pytest.raises(CheckpointError, match="missing key encoder.layers.2"):
        ASRBundle.from_checkpoint(bad_weights)
    cfg = to_dict(model.config)
    cfg["joiner_dim"] = 32
    bad_shape = save_checkpoint(tmp_path / "s.pt", model.state_dict(), cfg, {}, assets["tok"].to_bytes())
    with pytest.raises(CheckpointError, match=r"joiner.encoder_proj.weight has shape \[64, 64\], config expects \[32, 64\]"):
        ASRBundle.from_checkpoint(bad_shape)
    no_tok = save_checkpoint(tmp_path / "t.pt", model.state_dict(), to_dict(model.config), {}, None)
    with pytest.raises(CheckpointError, match="no embedded tokenizer"):
        ASRBundle.from_checkpoint(no_tok)


class Payload:
    """An arbitrary Python object: unpickling it could run code, so loading must refuse."""


def test_pickle_bearing_checkpoint_is_refused(assets, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "synthasr-checkpoint", "version": 1, "model": {}, "model_config": {},
                "meta": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        ASRBundle.from_checkpoint(path)


def test_load_model_cache_and_top_level_decode(assets, tmp_path):
    import os
    import shutil

    path = tmp_path / "m.pt"
    shutil.copy(assets["ckpt"], path)
    first = load_model(path)
    assert load_model(str(path)) is first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "rewritten" checkpoint
    assert load_model(path) is not first
    text = synthasr.decode(assets["wav"], model=path)
    assert text == first.transcribe(assets["wav"])


def test_import_synthasr_does_not_import_torch():
    code = "import sys, synthasr; assert 'torch' not in sys.modules; print(synthasr.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_cli_decode(assets, tmp_path):
    from click.testing import CliRunner

    from synthasr.cli import cli

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    result = CliRunner().invoke(cli, ["decode", "--model", str(assets["ckpt"]), str(assets["wav"]), str(bad)])
    assert result.exit_code == 1
    assert f"{assets['wav']}\t" in result.output
    assert "bad.wav: cannot read audio" in result.output
    result = CliRunner().invoke(cli, ["decode", "--model", str(tmp_path / "none.pt"), str(assets["wav"])])
    assert result.exit_code != 0 and "checkpoint not found" in result.output


def test_cli_evaluate(assets, tmp_path):
    from click.testing import CliRunner
    from lhotse import CutSet, Recording, SupervisionSegment

    from synthasr.cli import cli

    rec = Recording.from_file(assets["wav"], recording_id="a")
    cut = rec.to_cut()
    cut.supervisions = [SupervisionSegment(id="a", recording_id="a", start=0.0, duration=rec.duration,
                                           text="take amoxicillin")]
    CutSet.from_cuts([cut]).to_file(tmp_path / "cuts.jsonl.gz")
    args = ["evaluate", "--model", str(assets["ckpt"]), "--cuts", str(tmp_path / "cuts.jsonl.gz"),
            "--out-dir", str(tmp_path / "res"), "--name", "smoke"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "smoke\t" in result.output and "(2 words)" in result.output
    assert (tmp_path / "res" / "recogs-smoke-greedy_search.txt").is_file()
    result = CliRunner().invoke(cli, args + ["--hotword", "zzz"])
    assert result.exit_code != 0 and "zzz" in result.output

    # Several sets and decodings in one run: one result file per set and decoding, named SUFFIX[-TAG].
    two = ["evaluate", "--model", str(assets["ckpt"]), "--out-dir", str(tmp_path / "res2"),
           "--cuts", str(tmp_path / "cuts.jsonl.gz"), "--name", "a", "--cuts", str(tmp_path / "cuts.jsonl.gz"),
           "--name", "b", "--method", "modified_beam_search", "--suffix", "beam", "--hotword", "amoxicillin"]
    result = CliRunner().invoke(cli, two + ["--decoding", "plain", "--decoding", "hotwords"])
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        for suffix in ("beam", "beam-hotwords"):
            assert (tmp_path / "res2" / f"recogs-{name}-{suffix}.txt").is_file(), (name, suffix)
        assert f"{name} beam-hotwords\t" in result.output
    bad = CliRunner().invoke(cli, two + ["--decoding", "lm"])
    assert bad.exit_code != 0 and "--decoding lm needs --lm" in bad.output
    bad = CliRunner().invoke(cli, two[:-4] + ["--name", "c"])
    assert bad.exit_code != 0 and "one --name per --cuts" in bad.output


def test_lm_fusion_through_bundle_and_cli(assets, bundle, tmp_path):
    """transcribe(lm=ARPA path or loaded LM) is modified beam search with ShallowFusion; an ARPA over
    other pieces is one error naming the file (library and CLI)."""
    from click.testing import CliRunner

    from synthasr.cli import cli
    from synthasr.decode.search import ShallowFusion, modified_beam_search
    from synthasr.lm.ngram import NgramError, estimate_from_text
    from synthasr.tokenizer import Tokenizer, train_bpe

    tok = assets["tok"]
    lm = estimate_from_text(TEXTS * 5, tok, order=3)
    arpa = lm.write_arpa(tmp_path / "lm.arpa.gz", [tok.id_to_piece(i) for i in range(tok.vocab_size)])
    feats = torch.from_numpy(bundle.feature_extractor.extract(assets["speech"], 16000)).unsqueeze(0)
    enc, lens = bundle.model.encode(feats, torch.tensor([feats.size(1)]))
    for scale, bonus in [(0.0, 0.0), (0.5, 2.0), (5.0, 8.0)]:
        loaded = bundle.language_model(arpa)
        want = tok.decode(modified_beam_search(bundle.model, enc, lens, beam_size=4, unk_id=tok.unk_id,
                                               fusion=ShallowFusion(loaded, scale, bonus)))[0]
        assert bundle.transcribe(assets["wav"], lm=str(arpa), lm_scale=scale, lm_token_bonus=bonus) == want
    plain = bundle.transcribe(assets["wav"], method="modified_beam_search")
    assert bundle.transcribe(assets["wav"], lm=lm, lm_scale=0.0, lm_token_bonus=0.0) == plain

    other_tok = Tokenizer.load(train_bpe(["zebra quagga okapi"] * 5, tmp_path / "o", vocab_size=30,
                                         hard_vocab_limit=False))
    other = estimate_from_text(["zebra quagga okapi"] * 3, other_tok, order=2)
    other_arpa = other.write_arpa(tmp_path / "other.arpa",
                                  [other_tok.id_to_piece(i) for i in range(other_tok.vocab_size)])
    with pytest.raises(NgramError, match="not in the BPE model"):
        bundle.language_model(other_arpa)
    cmd = ["decode", "--model", str(assets["ckpt"]), "--lm"]
    result = CliRunner().invoke(cli, cmd + [str(other_arpa), str(assets["wav"])])
    assert result.exit_code != 0 and "other.arpa:" in result.output and "not in the BPE model" in result.output
    result = CliRunner().invoke(cli, cmd + [str(arpa), str(assets["wav"])])
    assert result.exit_code == 0 and result.output.startswith(f"{assets['wav']}\t")
    # The internal-LM correction only means something with an external LM.
    with pytest.raises(ValueError, match="ilm_scale needs lm"):
        bundle.transcribe(assets["wav"], ilm_scale=0.1)
    result = CliRunner().invoke(cli, ["decode", "--model", str(assets["ckpt"]), "--ilm-scale", "0.1", str(assets["wav"])])
    assert result.exit_code == 2 and "--ilm-scale needs --lm" in result.output
