"""The encoder, decoder and joiner export to ONNX with a dynamic time axis and match PyTorch."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from synthasr.model import build_model

ort = pytest.importorskip("onnxruntime")


class _Encoder(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, x_lens):
        return self.model.encode(x, x_lens)


def _export(module, args, path, input_names, output_names, dynamic_axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_encoder_onnx_matches_torch_at_other_lengths(tmp_path):
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 30}).eval()
    session = _export(_Encoder(model), (torch.randn(2, 50, 80), torch.tensor([50, 33])), tmp_path / "enc.onnx",
                      ["x", "x_lens"], ["encoder_out", "encoder_out_lens"],
                      {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "encoder_out": {0: "N", 1: "T_out"},
                       "encoder_out_lens": {0: "N"}})
    for t in (50, 97):  # 97: a length the exporter never saw
        x = torch.randn(3, t, 80)
        x_lens = torch.tensor([t, t - 11, 20])
        out, out_lens = session.run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})
        with torch.no_grad():
            ref, ref_lens = model.encode(x, x_lens)
        np.testing.assert_array_equal(out_lens, ref_lens.numpy())
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-4)


def test_decoder_and_joiner_onnx(tmp_path):
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 30}).eval()

    class _Decoder(torch.nn.Module):
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder

        def forward(self, y):
            return self.decoder(y, need_pad=False)

    dec = _export(_Decoder(model.decoder), (torch.tensor([[0, 5]]),), tmp_path / "dec.onnx", ["y"], ["decoder_out"],
                  {"y": {0: "N"}, "decoder_out": {0: "N"}})
    y = torch.tensor([[0, 0], [4, 9], [7, 2]])
    with torch.no_grad():
        np.testing.assert_allclose(dec.run(None, {"y": y.numpy()})[0], model.decoder(y, need_pad=False).numpy(),
                                   atol=1e-5)
    join = _export(model.joiner, (torch.randn(1, 64), torch.randn(1, 64)), tmp_path / "join.onnx",
                   ["encoder_out", "decoder_out"], ["logit"],
                   {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}})
    e, d = torch.randn(4, 64), torch.randn(4, 64)
    with torch.no_grad():
        np.testing.assert_allclose(join.run(None, {"encoder_out": e.numpy(), "decoder_out": d.numpy()})[0],
                                   model.joiner(e, d).numpy(), atol=1e-5)
