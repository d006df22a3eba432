"""The trainer actually teaches: a tiny transducer trained on espeak-ng speech decodes it with WER 0.

Each utterance is a distinct ordering of a few words, so the model must align words to audio (with
a handful of fixed sentences it can memorise a sentence id at the first frame and emit every token
there, which greedy search with one symbol per frame cannot read back).
"""
from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import (  # noqa: E402
    VOICES,
    espeak_available,
    make_espeak_utterances,
    tiny_train_config,
    train_tokenizer,
)

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")


def _sentences(words, n: int, seed: int = 0):
    combos = list(itertools.permutations(words, 3))
    random.Random(seed).shuffle(combos)
    return [" ".join(c) for c in combos[:n]]


def _corpus(root: Path, sentences):
    return make_espeak_utterances(root, [(text, VOICES[i % len(VOICES)]) for i, text in enumerate(sentences)])


def _train_and_score(tmp_path: Path, words, n_utts: int, steps: int, lr: float) -> float:
    from synthasr.checkpoint import load_checkpoint
    from synthasr.decode.evaluation import evaluate
    from synthasr.model import build_model
    from synthasr.train.trainer import fit

    torch.set_num_threads(1)
    cuts = _corpus(tmp_path / "audio", _sentences(words, n_utts))
    tok = train_tokenizer([c.supervisions[0].text for c in cuts], tmp_path / "bpe", vocab_size=40)
    cfg = tiny_train_config(**{"max_steps": steps, "optim.lr": lr, "optim.warmup_steps": 30,
                               "loss.warmup_steps": 100, "data.max_duration": 12.0, "log_every_n_steps": 50})
    final = fit(cfg, tmp_path / "exp", cuts, None, tok)
    ckpt = load_checkpoint(final)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    result = evaluate(model, tok, cuts, tmp_path / "decode", "train", method="greedy_search",
                      feature_config=ckpt["feature_config"])
    assert len(result.utts) == n_utts and result.word.ref_words == 3 * n_utts
    return result.wer


def test_tiny_model_learns_small_espeak_set(tmp_path):
    """CI-sized: 10 utterances over 5 words."""
    wer = _train_and_score(tmp_path, ["take", "two", "pills", "call", "nurse"], n_utts=10, steps=200, lr=4e-3)
    assert wer == 0.0


@pytest.mark.slow
def test_tiny_model_learns_twenty_espeak_utterances(tmp_path):
    wer = _train_and_score(tmp_path, ["take", "two", "pills", "call", "nurse", "stop", "now"], n_utts=20,
                           steps=300, lr=3e-3)
    assert wer == 0.0
