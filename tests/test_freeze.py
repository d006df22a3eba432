"""Encoder/decoder freezing: pattern expansion, errors, and bit-identical frozen weights after training."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.utils import fastcopy

from synthasr.model import ModelConfig, build_model
from synthasr.train.freeze import FreezeError, check_patterns, expand_patterns, freeze, valid_module_names

VOCAB = 40


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny", vocab_size=VOCAB))


def test_patterns_expand_ranges_and_single_modules(model):
    assert expand_patterns(model, ["encoder.layers.0-1"]) == ["encoder.layers.0", "encoder.layers.1"]
    assert expand_patterns(model, ["decoder", "joiner", "decoder"]) == ["decoder", "joiner"]
    assert expand_patterns(model, ["encoder.embed", "encoder.layers.1"]) == ["encoder.embed", "encoder.layers.1"]


def test_freeze_encoder_counts_and_eval_modules(model):
    enc = sum(p.numel() for p in model.encoder.parameters())
    total = sum(p.numel() for p in model.parameters())
    report = freeze(model, ["encoder"], eval_mode=True)
    assert report.total_params == total
    assert report.trainable_params == total - enc
    assert report.frozen_params == enc
    assert report.eval_mode_modules == ["encoder"]
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.joiner.parameters())
    assert "froze encoder" in report.summary()


def test_freeze_resets_previous_freezing_and_eval_mode_false(model):
    freeze(model, ["encoder"])
    report = freeze(model, ["decoder"], eval_mode=False)
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert all(not p.requires_grad for p in model.decoder.parameters())
    assert report.eval_mode_modules == []


def test_freeze_lower_layers_only(model):
    report = freeze(model, ["encoder.embed", "encoder.layers.0-0"])
    assert all(not p.requires_grad for p in model.encoder.layers[0].parameters())
    assert all(p.requires_grad for p in model.encoder.layers[1].parameters())
    expected = sum(p.numel() for p in model.encoder.embed.parameters()) + sum(
        p.numel() for p in model.encoder.layers[0].parameters()
    )
    assert report.frozen_params == expected


@pytest.mark.parametrize("pattern", ["encodr", "encoder.layers.0-9", "encoder.layers.3", "joiner.nope"])
def test_bad_pattern_lists_valid_module_names(model, pattern):
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(FreezeError) as e:
        freeze(model, ["decoder", pattern])
    msg = str(e.value)
    assert "\n" not in msg and repr(pattern) in msg
    assert "encoder.layers.0-1" in msg and "joiner" in msg and "decoder" in msg
    assert [p.requires_grad for p in model.parameters()] == before  # nothing changed on error


def test_check_patterns_does_not_modify(model):
    check_patterns(model, ["encoder"])
    assert all(p.requires_grad for p in model.parameters())
    assert "encoder.embed" in valid_module_names(model)


# ---- a real training run through synthasr.train.trainer.fit ------------------------------------ #
SENTENCES = ["take two tablets daily", "aspirin with water", "call the doctor now", "one tablet at night"]


def _corpus(tmp_path):
    from synthasr.tokenizer import Tokenizer, train_bpe

    bpe = train_bpe(SENTENCES * 5, tmp_path / "lang", vocab_size=VOCAB, hard_vocab_limit=False)
    tok = Tokenizer.load(bpe)
    rng = np.random.default_rng(0)
    cuts = []
    for i, text in enumerate(SENTENCES * 2):
        audio = (0.1 * rng.standard_normal(16000 + 2000 * (i % 4))).astype(np.float32)
        path = tmp_path / f"u{i}.flac"
        sf.write(str(path), audio, 16000)
        rec = Recording.from_file(path, recording_id=f"u{i}")
        sup = SupervisionSegment(f"u{i}", f"u{i}", 0.0, rec.duration, text=text, custom={"domain": "general"})
        cuts.append(fastcopy(rec.to_cut(), id=f"u{i}", supervisions=[sup]))
    return tok, CutSet.from_cuts(cuts)


def test_frozen_params_bit_identical_after_fit(tmp_path):
    fit = pytest.importorskip("synthasr.train.trainer").fit
    from synthasr.train.config import TrainConfig

    torch.set_num_threads(1)
    tok, cuts = _corpus(tmp_path)
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny", vocab_size=tok.vocab_size, dropout=0.1))
    report = freeze(model, ["encoder.embed", "encoder.layers.0-0", "decoder"], eval_mode=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(max_steps=3, checkpoint_every_n_steps=0, valid_every_n_steps=0, device="cpu", progress_bar=False)
    cfg.data.max_duration = 6.0
    cfg.data.bucketing = False
    cfg.data.on_the_fly_features = True
    cfg.data.spec_augment.enabled = False
    cfg.optim.warmup_steps = 0
    cfg.optim.lr = 1e-2
    fit(cfg, tmp_path / "exp", cuts, None, tok, model=model, eval_mode_modules=report.eval_mode_modules)
    after = model.state_dict()
    frozen_prefixes = ("encoder.embed.", "encoder.layers.0.", "decoder.")
    changed_trainable = 0
    for name, value in before.items():
        if name.startswith(frozen_prefixes):
            assert torch.equal(after[name], value), f"frozen tensor {name} changed"
        elif value.is_floating_point() and not torch.equal(after[name], value):
            changed_trainable += 1
    trainable_tensors = [n for n, p in model.named_parameters() if p.requires_grad]
    assert changed_trainable >= len(trainable_tensors) // 2
    assert any(n.startswith("encoder.layers.1.") for n in trainable_tensors)
