"""ONNX export: each exported piece equals its PyTorch module; layout, metadata, atomicity, bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from synthasr.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from synthasr.config import to_dict  # noqa: E402
from synthasr.data.features import FeatureConfig  # noqa: E402
from synthasr.export.onnx import (  # noqa: E402
    FP32_FILES,
    ExportError,
    UnsupportedModelError,
    export_model_onnx,
    export_onnx,
    random_probe_inputs,
    read_metadata,
    reference_outputs,
    run_exported,
)
from synthasr.model import build_model  # noqa: E402

TEXTS = ["take two tablets daily", "aspirin with food", "call the doctor now"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from synthasr.tokenizer import Tokenizer, train_bpe

    return Tokenizer.load(train_bpe(TEXTS, tmp_path_factory.mktemp("lang"), vocab_size=30, hard_vocab_limit=False))


def _checkpoint(path: Path, tokenizer, feature_cfg: FeatureConfig = None, **model_overrides) -> Path:
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": tokenizer.vocab_size, **model_overrides})
    return save_checkpoint(path, model.state_dict(), to_dict(model.config), to_dict(feature_cfg or FeatureConfig()),
                           tokenizer.to_bytes())


@pytest.mark.parametrize("overrides", [{}, {"context_size": 1, "joiner_dim": 48},
                                       {"context_size": 3, "decoder_dim": 32, "feature_dim": 40}])
def test_each_exported_piece_matches_pytorch_at_new_lengths(tmp_path, overrides):
    torch.manual_seed(1)
    model = build_model({"preset": "tiny", "vocab_size": 37, **overrides}).eval()
    feature_cfg = FeatureConfig(num_mel_bins=model.config.feature_dim)
    export_model_onnx(model, "".join(f"t{i} {i}\n" for i in range(37)), feature_cfg, tmp_path, verify=False)
    # batch sizes and lengths the exporter never traced (it traced N=1, T=100)
    for lengths in [(83, 61, 29), (250,), (7, 8, 9, 10, 11)]:
        x, x_lens, y, enc, dec = random_probe_inputs(model, seed=sum(lengths), lengths=lengths)
        want = reference_outputs(model, x, x_lens, y, enc, dec)
        got = run_exported(tmp_path, x.numpy(), x_lens.numpy(), y.numpy(), enc.numpy(), dec.numpy())
        assert got["encoder"][1].dtype == np.int64
        np.testing.assert_array_equal(got["encoder"][1], want["encoder"][1])
        assert got["encoder"][0].shape == (len(lengths), int(want["encoder"][1].max()), model.config.joiner_dim)
        assert got["decoder"][0].shape == (y.shape[0], model.config.joiner_dim)
        assert got["joiner"][0].shape == (enc.shape[0], 37)
        for part in ("encoder", "decoder", "joiner"):
            np.testing.assert_allclose(got[part][0], want[part][0], atol=1e-4, rtol=1e-4, err_msg=f"{part} {lengths}")


def test_pieces_compose_like_the_models_own_search(tmp_path):
    """Chaining the files the way sherpa-onnx does (projected encoder frame + decoder output on the
    blank start context -> joiner) gives the logits the PyTorch search computes at every frame."""
    import onnxruntime as ort

    torch.manual_seed(2)
    model = build_model({"preset": "tiny", "vocab_size": 25}).eval()
    export_model_onnx(model, "".join(f"t{i} {i}\n" for i in range(25)), FeatureConfig(), tmp_path, verify=False)
    encoder, decoder, joiner = (ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
                                for name in FP32_FILES)
    x, x_lens, *_ = random_probe_inputs(model, seed=9, lengths=(60,))
    frames, _ = encoder.run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})
    (start,) = decoder.run(None, {"y": np.zeros((1, model.decoder.context_size), np.int64)})
    (got,) = joiner.run(None, {"encoder_out": frames[0], "decoder_out": np.repeat(start, frames.shape[1], 0)})
    with torch.no_grad():
        enc, _ = model.encode(x, x_lens)
        dec_out, _ = model.decoder.start(1, torch.device("cpu"))
        want = model.joiner(model.joiner.encoder_proj(enc[0]), model.joiner.decoder_proj(dec_out), project_input=False)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_layout_metadata_and_tokens(tmp_path, tokenizer):
    ckpt = _checkpoint(tmp_path / "m.pt", tokenizer, context_size=3)
    out = export_onnx(ckpt, tmp_path / "onnx", int8=True)
    names = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert names == sorted([*FP32_FILES, "encoder.int8.onnx", "decoder.int8.onnx", "joiner.int8.onnx", "tokens.txt"])
    assert (tmp_path / "onnx" / "tokens.txt").read_text() == tokenizer.tokens_txt()
    assert (tmp_path / "onnx" / "tokens.txt").read_text().splitlines()[0] == "<blk> 0"
    for decoder in (out.decoder, out.int8["decoder"]):  # quantization keeps the metadata sherpa-onnx needs
        meta = read_metadata(decoder)
        assert meta["vocab_size"] == str(tokenizer.vocab_size)
        assert meta["context_size"] == "3"
    encoder_meta = read_metadata(out.encoder)
    assert encoder_meta["model_type"] == "conformer"
    assert encoder_meta["feature_dim"] == "80" and encoder_meta["sample_rate"] == "16000"
    assert read_metadata(out.joiner)["joiner_dim"] == "64"
    assert out.files() == {"encoder": str(out.encoder), "decoder": str(out.decoder), "joiner": str(out.joiner),
                           "tokens": str(out.tokens)}
    # re-exporting without --int8 must not leave int8 files of the previous model next to the new one
    export_onnx(ckpt, tmp_path / "onnx", int8=False)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted([*FP32_FILES, "tokens.txt"])


def test_lstm_decoder_is_refused_with_one_line_error(tmp_path, tokenizer):
    ckpt = _checkpoint(tmp_path / "lstm.pt", tokenizer, decoder_type="lstm")
    with pytest.raises(UnsupportedModelError, match=r"decoder_type='lstm' cannot be exported") as err:
        export_onnx(ckpt, tmp_path / "onnx")
    assert "\n" not in str(err.value) and str(ckpt) in str(err.value)
    assert not (tmp_path / "onnx").exists()


def test_feature_config_sherpa_cannot_reproduce_is_refused(tmp_path, tokenizer):
    ckpt = _checkpoint(tmp_path / "fs.pt", tokenizer, feature_cfg=FeatureConfig(frame_shift=0.02))
    with pytest.raises(UnsupportedModelError, match=r"feature_config.frame_shift=0.02"):
        export_onnx(ckpt, tmp_path / "onnx")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint not found"):
        export_onnx(tmp_path / "nope.pt", tmp_path / "onnx")


def test_failed_export_leaves_previous_files_untouched(tmp_path, tokenizer, monkeypatch):
    import synthasr.export.onnx as export_module

    out_dir = tmp_path / "onnx"
    out_dir.mkdir()
    (out_dir / "encoder.onnx").write_bytes(b"previous export")

    def broken_joiner(model, path, opset):
        raise ExportError(f"{path.name}: torch.onnx.export failed: simulated")

    monkeypatch.setattr(export_module, "_export_joiner", broken_joiner)
    with pytest.raises(ExportError, match="simulated"):
        export_onnx(_checkpoint(tmp_path / "m.pt", tokenizer), out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["encoder.onnx"]  # no staging folder left behind
    assert (out_dir / "encoder.onnx").read_bytes() == b"previous export"


def test_verification_catches_an_export_that_disagrees_with_pytorch(tmp_path, tokenizer, monkeypatch):
    import synthasr.export.onnx as export_module

    real = export_module._export_decoder

    def export_then_corrupt(model, path, opset):  # export a decoder whose weights are off by +0.01
        with torch.no_grad():
            model.joiner.decoder_proj.bias += 0.01
        try:
            real(model, path, opset)
        finally:
            with torch.no_grad():
                model.joiner.decoder_proj.bias -= 0.01

    monkeypatch.setattr(export_module, "_export_decoder", export_then_corrupt)
    with pytest.raises(ExportError, match=r"decoder\.onnx: output differs from PyTorch"):
        export_onnx(_checkpoint(tmp_path / "m.pt", tokenizer), tmp_path / "onnx")
    assert not any((tmp_path / "onnx").iterdir())


def test_cli_exports_and_reports_errors_in_one_line(tmp_path, tokenizer):
    from click.testing import CliRunner

    from synthasr.cli import cli

    runner = CliRunner()
    ckpt = _checkpoint(tmp_path / "m.pt", tokenizer)
    ok = runner.invoke(cli, ["export", "--model", str(ckpt), "--format", "onnx", "--out-dir", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    assert "sherpa-onnx-offline --encoder=" in ok.output
    assert all((tmp_path / "o" / name).is_file() for name in (*FP32_FILES, "tokens.txt"))

    missing = runner.invoke(cli, ["export", "--model", str(tmp_path / "missing.pt"), "--out-dir", str(tmp_path / "x")])
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [f"Error: {tmp_path / 'missing.pt'}: checkpoint not found"]

    lstm = runner.invoke(cli, ["export", "--model", str(_checkpoint(tmp_path / "l.pt", tokenizer, decoder_type="lstm")),
                               "--out-dir", str(tmp_path / "y")])
    assert lstm.exit_code == 1
    assert len(lstm.output.strip().splitlines()) == 1 and "decoder_type='lstm'" in lstm.output


def test_int8_export_refuses_weights_that_saturate_without_vnni(tmp_path, tokenizer, monkeypatch):
    """Full-range int8 weights (what the export used to write) overflow VPMADDUBSW's int16 pairs on x86
    CPUs without VNNI; the export's int8 check refuses them on every CPU, not only where they break."""
    import synthasr.export.int8 as int8

    monkeypatch.setattr(int8, "REDUCE_RANGE", False)
    with pytest.raises(ExportError, match=r"int8 weights up to 127: pairs of u8\*s8 products reach 64770 > 32767"):
        export_onnx(_checkpoint(tmp_path / "m.pt", tokenizer), tmp_path / "onnx", int8=True)
    assert not any((tmp_path / "onnx").iterdir())


def _dynamic_quantize(x: np.ndarray):
    """ONNX DynamicQuantizeLinear: uint8 values, scale and zero point of the whole tensor."""
    scale = (max(float(x.max()), 0.0) - min(float(x.min()), 0.0)) / 255
    zero_point = int(np.clip(np.rint(-min(float(x.min()), 0.0) / scale), 0, 255))
    return np.clip(np.rint(x / scale) + zero_point, 0, 255).astype(np.int64), scale, zero_point


def _u8s8_matmul(a: np.ndarray, zero_point: int, q: np.ndarray, saturate: bool) -> np.ndarray:
    """Integer ``(a - zero_point) @ q`` as a VPMADDUBSW kernel forms it: raw u8*s8 products of
    neighbouring k summed in pairs (clipped to int16 when ``saturate``), then the zero point removed."""
    products = a[:, :, None] * q[None].astype(np.int64)
    pairs = products[:, 0::2] + products[:, 1::2]
    if saturate:
        pairs = np.clip(pairs, -32768, 32767)
    return pairs.sum(1) - zero_point * q.astype(np.int64).sum(0)[None]


@pytest.mark.parametrize("levels", [127, 64])
def test_quantization_error_bound_flags_int16_saturation(levels):
    """The bound that the int8 check applies holds for exact integer products and is exceeded by the
    saturated sums a non-VNNI u8s8 kernel produces from full-range int8 weights (levels=127), while
    7-bit weights (levels=64, the export's reduce_range) never saturate. Pure numpy: any CPU."""
    from synthasr.export.int8 import QuantizedWeight, matmul_error_ratio

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 30)).astype(np.float32)
    w[:2, 0] = np.abs(w).max()  # two neighbouring large weights of one sign: a pair that can overflow
    scale = np.float32(np.abs(w).max() / levels)
    q = np.clip(np.rint(w / scale), -levels, levels).astype(np.int8)
    weight = QuantizedWeight("w_quantized", "w", q, scale, np.zeros((), np.int8), w)
    x = np.tanh(2 * rng.standard_normal((6, 64))).astype(np.float32)
    x[0] = np.sign(w[:, 0])  # tanh outputs at +-1: uint8 255 exactly where the weights are positive
    a, x_scale, zero_point = _dynamic_quantize(x)
    exact = (_u8s8_matmul(a, zero_point, q, saturate=False) * (x_scale * scale)).astype(np.float32)
    saturated = (_u8s8_matmul(a, zero_point, q, saturate=True) * (x_scale * scale)).astype(np.float32)
    assert matmul_error_ratio(x, exact, weight) <= 1.0
    if levels == 127:
        assert matmul_error_ratio(x, saturated, weight) > 1.0
    else:
        np.testing.assert_array_equal(saturated, exact)
