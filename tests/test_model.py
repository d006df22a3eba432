"""Conformer transducer: shapes, exact length formula, padding invariance, losses, presets."""
from __future__ import annotations

import pytest
import torch

from synthasr.config import ConfigError, from_dict
from synthasr.loss import LossConfig, loss_scales, rnnt_loss
from synthasr.model import ModelConfig, TranscriptError, build_model, parameter_counts, subsampled_lengths
from synthasr.model.encoder import RelPositionMultiheadAttention, relative_positional_encoding

VOCAB = 20


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model({"preset": "tiny", "vocab_size": VOCAB})


def test_subsampled_lengths_match_conv_output(model):
    for t in range(7, 40):
        out = model.encoder.embed(torch.zeros(1, t, 80))
        assert out.size(1) == int(subsampled_lengths(torch.tensor([t]))[0]) == ((t - 1) // 2 - 1) // 2
    assert subsampled_lengths(torch.tensor([6, 7, 10, 11, 100])).tolist() == [0, 1, 1, 2, 24]


def test_encode_shapes_and_lengths(model):
    model.eval()
    out, lens = model.encode(torch.randn(3, 101, 80), torch.tensor([101, 57, 9]))
    assert out.shape == (3, 24, 64)
    assert lens.tolist() == [24, 13, 1]
    # padded frames are zeroed so downstream sums never see them
    assert out[1, 13:].abs().max() == 0 and out[2, 1:].abs().max() == 0


def test_padding_does_not_change_output(model):
    model.eval()
    torch.manual_seed(1)
    short = torch.randn(1, 45, 80)
    longer = torch.randn(1, 120, 80)
    alone, alone_lens = model.encode(short, torch.tensor([45]))
    batch = torch.zeros(2, 120, 80)
    batch[0] = longer[0]
    batch[1, :45] = short[0]
    batch[1, 45:] = 7.0  # garbage in the padding must not leak in
    together, lens = model.encode(batch, torch.tensor([120, 45]))
    n = int(alone_lens[0])
    assert lens[1] == n
    torch.testing.assert_close(together[1, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_relative_shift_picks_distance_i_minus_j():
    t, d = 5, 8
    pos = relative_positional_encoding(t, d, "cpu", torch.float32)
    assert pos.shape == (2 * t - 1, d)
    # row k encodes distance (t-1-k): distance 0 sits in the middle, sin(0)=0, cos(0)=1
    torch.testing.assert_close(pos[t - 1, 0::2], torch.zeros(d // 2))
    torch.testing.assert_close(pos[t - 1, 1::2], torch.ones(d // 2))
    scores = torch.arange(2 * (2 * t - 1) * t, dtype=torch.float32).reshape(1, 2, t, 2 * t - 1)
    shifted = RelPositionMultiheadAttention._relative_shift(scores, t)
    for i in range(t):
        for j in range(t):
            assert shifted[0, 1, i, j] == scores[0, 1, i, (t - 1) - (i - j)]


@pytest.mark.parametrize("decoder_type", ["stateless", "lstm"])
def test_decoder_step_api_matches_full_forward(decoder_type):
    torch.manual_seed(0)
    m = build_model({"preset": "tiny", "vocab_size": VOCAB, "decoder_type": decoder_type}).eval()
    y = torch.tensor([[0, 5, 9, 3], [0, 7, 7, 2]])
    full = m.decoder(y)
    assert full.shape == (2, 4, 64)
    out, state = m.decoder.start(2, torch.device("cpu"))
    torch.testing.assert_close(out, full[:, 0])
    for u in range(1, 4):
        out, state = m.decoder.step(y[:, u], state)
        torch.testing.assert_close(out, full[:, u], atol=1e-6, rtol=0)


def test_stateless_decoder_unpadded_form_for_export(model):
    y = torch.tensor([[4, 6]])
    torch.testing.assert_close(model.decoder(y, need_pad=False)[:, -1], model.decoder(y)[:, -1])
    assert model.decoder(y, need_pad=False).shape == (1, 1, 64)


def test_joiner_project_input_equivalence(model):
    enc, dec = torch.randn(3, 64), torch.randn(3, 64)
    j = model.joiner
    torch.testing.assert_close(j(enc, dec), j(j.encoder_proj(enc), j.decoder_proj(dec), project_input=False))
    assert j(enc, dec).shape == (3, VOCAB)


def _batch():
    torch.manual_seed(3)
    return torch.randn(2, 60, 80), torch.tensor([60, 41]), [[3, 5, 7, 9], [11, 2]]


def test_full_loss_is_sum_of_per_utterance_losses(model):
    model.eval()
    x, x_lens, y = _batch()
    cfg = LossConfig(kind="full")
    both = model(x, x_lens, y, cfg)
    assert set(both) == {"loss", "full", "num_frames"}
    with torch.no_grad():
        single = sum(float(model(x[i:i + 1, : int(x_lens[i])], x_lens[i:i + 1], [y[i]], cfg)["loss"])
                     for i in range(2))
    assert float(both["loss"].detach()) == pytest.approx(single, rel=1e-5)
    assert int(both["num_frames"]) == 14 + 9


def test_full_loss_matches_manual_joiner_lattice(model):
    model.eval()
    x, x_lens, y = _batch()
    enc, enc_lens = model.encode(x, x_lens)
    sos = torch.tensor([[0, 3, 5, 7, 9], [0, 11, 2, 0, 0]])
    logits = model.joiner(enc.unsqueeze(2), model.decoder(sos).unsqueeze(1))
    boundary = torch.tensor([[0, 0, 4, int(enc_lens[0])], [0, 0, 2, int(enc_lens[1])]])
    expected = rnnt_loss(logits, sos[:, 1:], boundary=boundary)
    got = model(x, x_lens, y, LossConfig(kind="full"))["loss"]
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_pruned_loss_combines_with_warmup_scales(model):
    x, x_lens, y = _batch()
    cfg = LossConfig(kind="pruned", warmup_steps=100, prune_range=3)
    for step in (0, 50, 500):
        out = model(x, x_lens, y, cfg, step=step)
        s, p = loss_scales(cfg, step)
        assert out["loss"].item() == pytest.approx(s * float(out["simple"]) + p * float(out["pruned"]), rel=1e-5)
        assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.simple_am_proj.weight.grad is not None
    assert model.joiner.output_linear.weight.grad.abs().sum() > 0
    assert model.encoder.layers[0].self_attn.in_proj.weight.grad.abs().sum() > 0


def test_losses_stay_float32_under_autocast(model):
    x, x_lens, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, x_lens, y, LossConfig(kind="pruned"))
    assert out["simple"].dtype == torch.float32 and out["pruned"].dtype == torch.float32
    assert torch.isfinite(out["loss"])


def test_loss_decreases_on_fixed_batch(model):
    x, x_lens, y = _batch()
    cfg = LossConfig(kind="pruned", warmup_steps=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        out = model(x, x_lens, y, cfg, step=10)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_batches_name_the_utterance(model):
    x, x_lens, y = _batch()
    with pytest.raises(TranscriptError, match="utterance 1: token id 20"):
        model(x, x_lens, [[3], [20]], LossConfig(kind="full"))
    with pytest.raises(TranscriptError, match="utterance 1: 6 feature frames"):
        model(x, torch.tensor([60, 6]), y, LossConfig(kind="full"))


def test_presets_sizes_and_overrides():
    counts = {p: parameter_counts(build_model({"preset": p, "vocab_size": 500})) for p in ("tiny", "small")}
    assert 0.3e6 <= counts["tiny"]["total"] <= 1e6
    assert 4.5e6 <= counts["small"]["total"] <= 6e6
    c = counts["small"]
    assert c["total"] == c["encoder"] + c["decoder"] + c["joiner"] + c["simple_proj"]
    cfg = ModelConfig(preset="small", num_encoder_layers=3, vocab_size=500).resolved()
    assert (cfg.encoder_dim, cfg.num_encoder_layers) == (144, 3)
    m = build_model(cfg)
    assert len(m.encoder.layers) == 3 and m.config.num_encoder_layers == 3
    names = dict(m.named_modules())
    for name in ("encoder.embed", "encoder.layers.2", "joiner.encoder_proj", "joiner.decoder_proj",
                 "joiner.output_linear", "decoder"):
        assert name in names
    assert m.decoder.blank_id == 0 and m.decoder.context_size == 2


def test_model_config_is_strict():
    with pytest.raises(ConfigError, match="unknown key encoder_dimm"):
        from_dict(ModelConfig, {"encoder_dimm": 3}, where="conf.yaml")
    with pytest.raises(ConfigError, match="preset"):
        from_dict(ModelConfig, {"preset": "huge"}, where="conf.yaml")
    with pytest.raises(ValueError, match="vocab_size"):
        build_model({"preset": "tiny"})
