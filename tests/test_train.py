"""The trainer's mechanics on a tiny model and tone audio: outputs, determinism, bad steps, freezing,
regularizer, source fractions, checkpoint pruning."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts, state_dicts_equal, tiny_train_config, train_tokenizer  # noqa: E402

from synthasr.checkpoint import load_checkpoint, tokenizer_proto  # noqa: E402
from synthasr.train.trainer import TrainingError, find_resume_checkpoint, fit  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    cuts = make_tone_cuts(root / "audio", n=10, seed=1)
    tok = train_tokenizer([c.supervisions[0].text for c in cuts], root / "bpe", vocab_size=20)
    return cuts, tok


def _log_text(exp_dir: Path) -> str:
    logs = sorted((exp_dir / "log").glob("log-train-*.txt"))
    assert logs, f"no log file in {exp_dir}/log"
    return "\n".join(p.read_text() for p in logs)


class LossHook(nn.Module):
    """Wraps a Transducer (same forward contract) to poison chosen steps and record train modes."""

    def __init__(self, inner: nn.Module, nan_steps=(), nan_from: int = -1) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.nan_steps = set(nan_steps)
        self.nan_from = nan_from
        self.encoder_modes: List[bool] = []

    def forward(self, x, x_lens, y, loss_cfg, step: int = 0) -> Dict[str, torch.Tensor]:
        self.encoder_modes.append(self.inner.encoder.training)
        out = self.inner(x, x_lens, y, loss_cfg, step)
        if step in self.nan_steps or 0 <= self.nan_from <= step:
            out = dict(out, loss=out["loss"] * float("nan"))
        return out


def _tiny_model(tok):
    from synthasr.model import build_model

    torch.manual_seed(0)
    return build_model({"preset": "tiny", "vocab_size": tok.vocab_size})


def test_fit_outputs_and_determinism(corpus, tmp_path):
    cuts, tok = corpus
    cfg = tiny_train_config(num_epochs=2, checkpoint_every_n_steps=2, keep_last_k=2, **{"model.dropout": 0.1})
    final = fit(cfg, tmp_path / "a", cuts, cuts.subset(first=3), tok)
    assert final == tmp_path / "a" / "final.pt"
    ckpt = load_checkpoint(final)
    assert "train_state" not in ckpt
    assert tokenizer_proto(ckpt) == tok.to_bytes()
    assert ckpt["model_config"]["vocab_size"] == tok.vocab_size and ckpt["model_config"]["encoder_dim"] == 64
    assert ckpt["feature_config"]["num_mel_bins"] == 80
    assert sum(ckpt["meta"]["source_counts"].values()) == 2 * len(cuts)
    exp = tmp_path / "a"
    assert (exp / "epoch-1.pt").is_file() and (exp / "epoch-2.pt").is_file()
    steps = sorted(int(p.stem.split("-")[1]) for p in exp.glob("checkpoint-*.pt"))
    assert len(steps) == 2 and steps[-1] == ckpt["meta"]["step"] - ckpt["meta"]["step"] % 2  # keep_last_k
    assert list((exp / "tensorboard").glob("events.out.tfevents.*"))
    text = _log_text(exp)
    assert "trainable of" in text and "validation at step" in text
    # Same seed on CPU -> identical weights; another seed -> different weights.
    again = fit(cfg, tmp_path / "b", cuts, cuts.subset(first=3), tok)
    assert state_dicts_equal(load_checkpoint(again)["model"], ckpt["model"]) is None
    other = fit(tiny_train_config(num_epochs=2, seed=8, **{"model.dropout": 0.1}), tmp_path / "c", cuts, None, tok)
    assert state_dicts_equal(load_checkpoint(other)["model"], ckpt["model"]) is not None
    # A finished stage returns at once without touching final.pt.
    stamp = final.stat().st_mtime_ns
    assert fit(cfg, exp, cuts, None, tok) == final and final.stat().st_mtime_ns == stamp


def test_resume_checkpoint_selection_prefers_newest_step(corpus, tmp_path):
    cuts, tok = corpus
    cfg = tiny_train_config(num_epochs=1, checkpoint_every_n_steps=1, keep_last_k=0)
    fit(cfg, tmp_path, cuts, None, tok)
    path, ckpt = find_resume_checkpoint(tmp_path)
    last_step = max(int(p.stem.split("-")[1]) for p in tmp_path.glob("checkpoint-*.pt"))
    assert ckpt["train_state"]["step"] == last_step
    assert path.name == "epoch-1.pt"  # same step as the last checkpoint; the epoch file closes the epoch
    assert ckpt["train_state"]["epoch"] == 2 and ckpt["train_state"]["batches_done"] == 0


def test_nan_batch_is_skipped_and_logged(corpus, tmp_path):
    cuts, tok = corpus
    model = LossHook(_tiny_model(tok), nan_steps={2})
    final = fit(tiny_train_config(num_epochs=1), tmp_path, cuts, None, tok, model=model)
    text = _log_text(tmp_path)
    line = next(line for line in text.splitlines() if "non-finite loss" in line)
    assert "step 2:" in line and "batch skipped (1 consecutive)" in line and "tone" in line
    weights = load_checkpoint(final)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_repeated_nan_stops_with_one_line_error(corpus, tmp_path):
    cuts, tok = corpus
    model = LossHook(_tiny_model(tok), nan_from=1)
    cfg = tiny_train_config(num_epochs=3, max_bad_steps=2)
    with pytest.raises(TrainingError) as e:
        fit(cfg, tmp_path, cuts, None, tok, model=model)
    msg = str(e.value)
    assert "3 consecutive bad steps at step 3" in msg and "max_bad_steps=2" in msg and "\n" not in msg
    assert not (tmp_path / "final.pt").exists()


def test_frozen_encoder_and_eval_mode_modules(corpus, tmp_path):
    cuts, tok = corpus
    model = LossHook(_tiny_model(tok))
    for p in model.inner.encoder.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(tiny_train_config(num_epochs=1), tmp_path, cuts, None, tok, model=model, eval_mode_modules=["inner.encoder"])
    after = load_checkpoint(tmp_path / "final.pt")["model"]
    enc = [k for k in before if k.startswith("inner.encoder.")]
    dec = [k for k in before if k.startswith("inner.decoder.")]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    assert model.encoder_modes and not any(model.encoder_modes)
    n_enc = sum(p.numel() for p in model.inner.encoder.parameters())
    n_all = sum(p.numel() for p in model.parameters())
    assert f"parameters: {n_all - n_enc} trainable of {n_all} total" in _log_text(tmp_path)
    with pytest.raises(TrainingError, match="no submodule 'inner.nope'"):
        fit(tiny_train_config(), tmp_path / "x", cuts, None, tok, model=LossHook(_tiny_model(tok)),
            eval_mode_modules=["inner.nope"])


def test_regularizer_is_added_and_logged(corpus, tmp_path):
    cuts, tok = corpus
    model = _tiny_model(tok)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = []

    def l2_to_start(m: nn.Module) -> torch.Tensor:
        calls.append(1)
        return 50.0 * sum(((p - anchor[n]) ** 2).sum() for n, p in m.named_parameters())

    fit(tiny_train_config(num_epochs=1, log_every_n_steps=1), tmp_path / "reg", cuts, None, tok,
        model=model, regularizer=l2_to_start)
    free = fit(tiny_train_config(num_epochs=1), tmp_path / "free", cuts, None, tok, model=_tiny_model(tok))

    def drift(path):
        w = load_checkpoint(path)["model"]
        return sum(float(((w[n] - anchor[n]) ** 2).sum()) for n in anchor)

    assert len(calls) >= 3
    regs = [float(part.split("=")[1]) for line in _log_text(tmp_path / "reg").splitlines()
            for part in line.split() if part.startswith("reg=")]
    assert regs[0] == 0.0 and max(regs) > 0.0  # zero at the anchor, positive once weights move
    assert drift(tmp_path / "reg" / "final.pt") < drift(free)


def test_cpu_training_flushes_subnormals_and_restores_the_default(corpus, tmp_path):
    """Subnormal arithmetic is many times slower on x86; fit() flushes them while it trains, then puts
    the process default back (a CPU without flush-to-zero support trains unflushed)."""
    cuts, tok = corpus
    subnormal = torch.tensor([1e-40])
    seen = []

    def probe(m: nn.Module) -> torch.Tensor:
        seen.append(float(subnormal * 1.0))
        return torch.zeros(())

    assert float(subnormal * 1.0) > 0.0
    fit(tiny_train_config(num_epochs=1), tmp_path / "flush", cuts, None, tok, model=_tiny_model(tok), regularizer=probe)
    supported = torch.set_flush_denormal(False)  # probe the CPU (and keep the default)
    assert seen and set(seen) == ({0.0} if supported else {float(subnormal)})
    assert float(subnormal * 1.0) > 0.0  # default again after fit()
    if supported:  # flushing set beforehand (as `synthasr train` does for all threads) is left on
        torch.set_flush_denormal(True)
        try:
            fit(tiny_train_config(num_epochs=1), tmp_path / "flush2", cuts, None, tok, model=_tiny_model(tok))
            assert float(subnormal * 1.0) == 0.0
        finally:
            torch.set_flush_denormal(False)


def test_source_fractions_logged_to_tensorboard(corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cuts, tok = corpus
    final = fit(tiny_train_config(num_epochs=1, log_every_n_steps=2), tmp_path, cuts, None, tok)
    counts = load_checkpoint(final)["meta"]["source_counts"]
    expected = {}
    for c in cuts:
        expected[c.supervisions[0].custom["domain"]] = expected.get(c.supervisions[0].custom["domain"], 0) + 1
    assert counts == expected
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/simple", "train/pruned", "train/lr", "train/grad_norm", "train/reg_loss",
            "train/source_frac/medication", "train/source_frac/general"} <= tags
    last = acc.Scalars("train/source_frac/medication")[-1].value
    assert math.isclose(last, expected["medication"] / len(cuts), rel_tol=1e-6)


def test_tokenizer_vocab_mismatch_is_rejected(corpus, tmp_path):
    cuts, tok = corpus
    cfg = tiny_train_config(**{"model.vocab_size": tok.vocab_size + 1})
    with pytest.raises(TrainingError, match="vocab_size"):
        fit(cfg, tmp_path, cuts, None, tok)
