"""Whisper encoder family: lengths, batch independence, extra subsampling, config switch, and the
transducer around it (training steps, greedy/beam/hotword decoding, checkpoint + bundle, averaging)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from synthasr.config import ConfigError, to_dict
from synthasr.loss import LossConfig
from synthasr.model import ModelConfig, build_model
from synthasr.model.whisper import WhisperEncoder

TINY = {"n_mels": 80, "n_state": 32, "n_head": 4, "n_layer": 3, "n_ctx": 400}
TEXTS = ["take amoxicillin twice daily", "the patient needs ibuprofen", "metformin with food every morning",
         "call the doctor tomorrow", "pharmacy hours are short today"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _encoder(extra: int = 1) -> WhisperEncoder:
    torch.manual_seed(0)
    return WhisperEncoder(80, 32, 4, 2, n_ctx=400, extra_subsampling=extra).eval()


@pytest.mark.parametrize("extra", [1, 2])
def test_lengths_and_batch_independence(extra):
    enc = _encoder(extra)
    torch.manual_seed(1)
    lens = torch.tensor([61, 40, 1, 38])
    x = torch.randn(4, 61, 80)
    with torch.no_grad():
        out, out_lens = enc(x, lens)
        for i, n in enumerate(lens.tolist()):
            alone, alone_len = enc(x[i:i + 1, :n], lens[i:i + 1])
            assert int(alone_len) == int(out_lens[i]) == alone.size(1)
            torch.testing.assert_close(out[i, : int(out_lens[i])], alone[0], atol=2e-5, rtol=1e-5)
            assert not out[i, int(out_lens[i]):].any()
    stem = [(n - 1) // 2 + 1 for n in lens.tolist()]
    assert out_lens.tolist() == (stem if extra == 1 else [(s + 1) // 2 for s in stem])


def test_extra_subsampling_starts_as_pair_mean():
    plain, merged = _encoder(1), _encoder(2)
    merged.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 50, 80)
    with torch.no_grad():
        a, _ = plain(x, torch.tensor([50]))
        b, b_len = merged(x, torch.tensor([50]))
    assert int(b_len) == 13
    torch.testing.assert_close(b[0, :12], (a[0, 0:24:2] + a[0, 1:24:2]) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b[0, 12], a[0, 24] / 2, atol=1e-6, rtol=1e-5)  # odd tail pairs with zeros


def test_input_longer_than_positional_table_is_refused():
    with pytest.raises(ValueError, match="exceeds its 400 positions"):
        _encoder()(torch.randn(1, 803, 80), torch.tensor([803]))


def test_config_switch_and_strictness():
    cfg = ModelConfig.from_any({"encoder": "whisper", "whisper": {"dims": TINY}, "vocab_size": 9}).resolved()
    assert (cfg.encoder_dim, cfg.num_encoder_layers, cfg.num_heads, cfg.ff_dim) == (32, 3, 4, 128)
    assert ModelConfig.from_any(to_dict(cfg)).resolved() == cfg  # what a checkpoint stores resolves to itself
    bad = [({"encoder": "whisper", "vocab_size": 9}, "needs a whisper: section"),
           ({"encoder": "wav2vec", "vocab_size": 9}, "encoder: expected one of"),
           ({"whisper": {"dims": TINY}, "vocab_size": 9}, "only used with encoder: whisper"),
           ({"encoder": "whisper", "whisper": {}, "vocab_size": 9}, "give dims or a checkpoint"),
           ({"encoder": "whisper", "whisper": {"dims": TINY, "extra_subsampling": 4}, "vocab_size": 9},
            "extra_subsampling"),
           ({"encoder": "whisper", "whisper": {"dims": {**TINY, "n_heads": 4}}, "vocab_size": 9}, "unknown key"),
           ({"encoder": "whisper", "whisper": {"dims": TINY}, "encoder_dim": 64, "vocab_size": 9},
            "encoder_dim: 64 conflicts with the Whisper encoder")]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message):
            ModelConfig.from_any(data).resolved()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from synthasr.tokenizer import Tokenizer, train_bpe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("whisper")
    tok = Tokenizer.load(train_bpe(TEXTS * 3, root / "lang", vocab_size=40, hard_vocab_limit=False))
    torch.manual_seed(0)
    model = build_model({"encoder": "whisper", "whisper": {"dims": TINY, "extra_subsampling": 2},
                         "preset": "tiny", "vocab_size": tok.vocab_size})
    return {"root": root, "tok": tok, "model": model}


def test_transducer_trains_with_pruned_and_full_losses(assets):
    from synthasr.train.freeze import freeze

    model, tok = assets["model"], assets["tok"]
    torch.manual_seed(2)
    x, x_lens = torch.randn(2, 90, 80), torch.tensor([90, 70])
    y = tok.encode([TEXTS[0], TEXTS[3]])
    report = freeze(model, ["encoder.embed", "encoder.layers.0-1"])
    assert report.frozen_modules == ["encoder.embed", "encoder.layers.0", "encoder.layers.1"]
    frozen_before = model.encoder.layers[0].attn.qkv.weight.clone()
    top_before = model.encoder.layers[2].attn.qkv.weight.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for kind in ("pruned", "full"):
        out = model(x, x_lens, y, LossConfig(kind=kind, warmup_steps=0), step=10)
        assert torch.isfinite(out["loss"]) and int(out["num_frames"]) == 23 + 18
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert torch.equal(model.encoder.layers[0].attn.qkv.weight, frozen_before)
    assert not torch.equal(model.encoder.layers[2].attn.qkv.weight, top_before)
    freeze(model, [])
    model.eval()


def test_checkpoint_bundle_decoding_and_averaging(assets):
    from synthasr.checkpoint import save_checkpoint
    from synthasr.decode.bundle import ASRBundle
    from synthasr.decode.search import greedy_search, modified_beam_search
    from synthasr.train.average import write_averaged

    model, tok, root = assets["model"].eval(), assets["tok"], assets["root"]
    features = {"type": "whisper_fbank", "num_mel_bins": 80}
    paths = []
    for i in range(2):
        state = {k: v + 0.01 * i if v.is_floating_point() else v for k, v in model.state_dict().items()}
        paths.append(save_checkpoint(root / f"ckpt-{i}.pt", state, to_dict(model.config), features, tok.to_bytes()))
    averaged = write_averaged(paths, root / "avg.pt")
    bundle = ASRBundle.from_checkpoint(averaged)
    for key, value in model.state_dict().items():
        expected = value + 0.005 if value.is_floating_point() else value
        torch.testing.assert_close(bundle.model.state_dict()[key], expected, atol=1e-6, rtol=1e-6)
    assert bundle.feature_extractor.name == "whisper-fbank"

    rng = np.random.default_rng(0)
    speech = (0.1 * rng.standard_normal(32000)).astype(np.float32)
    wav = root / "a.wav"
    sf.write(wav, speech, 16000)
    feats = torch.from_numpy(bundle.feature_extractor.extract(speech, 16000)).unsqueeze(0)
    assert feats.shape == (1, 200, 80)
    with torch.no_grad():
        enc, lens = bundle.model.encode(feats, torch.tensor([200]))
    assert int(lens) == 50  # 100 frames/s -> 50 (stem) -> 25 (extra subsampling)
    greedy = bundle.tokenizer.decode(greedy_search(bundle.model, enc, lens))[0]
    assert bundle.transcribe(str(wav)) == greedy
    beam1 = bundle.tokenizer.decode(modified_beam_search(bundle.model, enc, lens, beam_size=1))[0]
    assert beam1 == greedy == bundle.transcribe(wav, method="modified_beam_search", beam_size=1)
    biased = bundle.transcribe(wav, hotwords=["metformin"], hotword_score=2.0, beam_size=4)
    assert isinstance(biased, str)


def test_onnx_export_of_whisper_model_matches_pytorch_on_whisper_features(assets, tmp_path):
    """sherpa-onnx cannot compute Whisper log-mel, so the deployable path is onnxruntime on our features."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from synthasr.data.features import FeatureConfig, make_extractor
    from synthasr.export.onnx import export_model_onnx, read_metadata

    model, tok = assets["model"].eval(), assets["tok"]
    features = FeatureConfig(type="whisper_fbank")
    exported = export_model_onnx(model, tok.tokens_txt(), features, tmp_path / "onnx")
    meta = read_metadata(exported.encoder)
    assert meta["subsampling_factor"] == "4" and "Whisper log-mel" in meta["feature"]
    rng = np.random.default_rng(1)
    extractor = make_extractor(features)
    clips = [extractor.extract((0.1 * rng.standard_normal(n)).astype(np.float32), 16000) for n in (9120, 5600, 3360)]
    lens = np.array([len(c) for c in clips], dtype=np.int64)  # 57, 35, 21 frames: odd after the stem
    x = np.zeros((3, lens.max(), 80), dtype=np.float32)
    for i, c in enumerate(clips):
        x[i, : len(c)] = c
    session = ort.InferenceSession(str(exported.encoder), providers=["CPUExecutionProvider"])
    out, out_lens = session.run(None, {"x": x, "x_lens": lens})
    with torch.no_grad():
        enc, enc_lens = model.encode(torch.from_numpy(x), torch.from_numpy(lens))
        want = model.joiner.encoder_proj(enc).numpy()
    assert out_lens.tolist() == enc_lens.tolist() == [15, 9, 6]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
