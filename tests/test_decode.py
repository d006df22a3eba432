"""Searches on a tiny model that has memorised two utterances; CutSet evaluation end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthasr.decode.search import greedy_search, modified_beam_search
from synthasr.loss import LossConfig
from synthasr.model import build_model

TARGETS = [[3, 5, 7, 9, 4], [11, 2, 6]]


@pytest.fixture(scope="module")
def trained():
    """Overfit 2 random-feature utterances with the full loss (a small learning test in itself)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 20})
    x, x_lens = torch.randn(2, 60, 80), torch.tensor([60, 48])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = LossConfig(kind="full")
    first = None
    for _ in range(1500):  # stops early (~300 steps measured); the cap is not a tuned number
        loss = model(x, x_lens, TARGETS, cfg)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    model.eval()
    return model, x, x_lens, first, loss.item()


def test_training_overfits(trained):
    _, _, _, first, last = trained
    assert last < 0.05 < first / 100


def test_greedy_recovers_training_targets(trained):
    model, x, x_lens, *_ = trained
    enc, enc_lens = model.encode(x, x_lens)
    assert greedy_search(model, enc, enc_lens) == TARGETS


def test_beam_one_equals_greedy_and_beam_four_agrees(trained):
    model, x, x_lens, *_ = trained
    enc, enc_lens = model.encode(x, x_lens)
    greedy = greedy_search(model, enc, enc_lens)
    assert modified_beam_search(model, enc, enc_lens, beam_size=1) == greedy
    assert modified_beam_search(model, enc, enc_lens, beam_size=4) == TARGETS


def test_unk_is_treated_like_blank(trained):
    """Token 2 (``<unk>`` in our BPE layout) is one of the memorised targets; with ``unk_id=2`` no
    search may emit it, and the tokens before it are unchanged."""
    model, x, x_lens, *_ = trained
    enc, enc_lens = model.encode(x, x_lens)
    for hyps in (greedy_search(model, enc, enc_lens, unk_id=2),
                 modified_beam_search(model, enc, enc_lens, beam_size=4, unk_id=2)):
        assert hyps[0] == TARGETS[0]
        assert 2 not in hyps[1] and hyps[1][:1] == [11]


def test_results_follow_input_order(trained):
    """Batches are sorted by length internally; results must come back in the caller's order."""
    model, x, x_lens, *_ = trained
    flipped = torch.zeros(2, 60, 80)
    flipped[0, :48] = x[1, :48]
    flipped[1] = x[0]
    enc, enc_lens = model.encode(flipped, torch.tensor([48, 60]))
    assert greedy_search(model, enc, enc_lens) == TARGETS[::-1]
    assert modified_beam_search(model, enc, enc_lens, beam_size=3) == TARGETS[::-1]


def test_beam_search_with_lstm_decoder_runs():
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 20, "decoder_type": "lstm"}).eval()
    enc, enc_lens = model.encode(torch.randn(3, 70, 80), torch.tensor([70, 30, 12]))
    greedy = greedy_search(model, enc, enc_lens)
    assert modified_beam_search(model, enc, enc_lens, beam_size=1) == greedy
    assert len(modified_beam_search(model, enc, enc_lens, beam_size=4)) == 3


def test_empty_and_zero_length_inputs(trained):
    model, *_ = trained
    assert greedy_search(model, torch.zeros(0, 5, 64), torch.zeros(0, dtype=torch.int64)) == []
    enc = torch.zeros(2, 3, 64)
    assert greedy_search(model, enc, torch.tensor([0, 0])) == [[], []]
    assert modified_beam_search(model, enc, torch.tensor([0, 0])) == [[], []]


def _cuts_with_audio(tmp_path, texts):
    import soundfile as sf
    from lhotse import CutSet, Recording, SupervisionSegment

    cuts = []
    rng = np.random.default_rng(0)
    for i, text in enumerate(texts):
        path = tmp_path / f"utt{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(16000 + 4000 * i)).astype(np.float32), 16000)
        rec = Recording.from_file(path, recording_id=f"utt{i}")
        cut = rec.to_cut()
        cut.supervisions = [SupervisionSegment(id=f"utt{i}", recording_id=rec.id, start=0.0,
                                               duration=rec.duration, text=text)]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def _tiny_model_and_cuts(tmp_path):
    """Three medication sentences: a BPE over them, a random tiny model, cuts of noise 1-1.5 s long."""
    from synthasr.tokenizer import Tokenizer, train_bpe

    texts = ["take amoxicillin twice daily", "the patient needs ibuprofen", "call the doctor tomorrow"]
    tok = Tokenizer.load(train_bpe(texts * 3, tmp_path / "lang", vocab_size=30, hard_vocab_limit=False))
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": tok.vocab_size})
    return texts, tok, model, _cuts_with_audio(tmp_path, texts)


def test_evaluate_writes_icefall_results(tmp_path):
    from synthasr.decode.evaluation import decode_cuts, evaluate
    from synthasr.score import compute_wer

    texts, tok, model, cuts = _tiny_model_and_cuts(tmp_path)

    results = decode_cuts(model, tok, cuts, progress=False)
    assert sorted(r[0] for r in results) == ["utt0", "utt1", "utt2"]
    assert {r[0]: r[1] for r in results}["utt1"] == texts[1]

    wer = evaluate(model, tok, cuts, tmp_path / "out", "dev", method="modified_beam_search", beam_size=2)
    assert wer.word.ref_words == 12 and len(wer.utts) == 3
    again = compute_wer(decode_cuts(model, tok, cuts, method="modified_beam_search", beam_size=2, progress=False))
    assert wer.wer == pytest.approx(again.wer)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "recogs-dev-modified_beam_search_beam_size_2.txt" in names
    assert "errs-dev-modified_beam_search_beam_size_2.txt" in names
    assert "wer-summary-dev.txt" in names
    recogs = (tmp_path / "out" / "recogs-dev-modified_beam_search_beam_size_2.txt").read_text()
    assert "utt2" in recogs and "doctor" in recogs


def test_evaluate_decodings_encodes_each_set_once_and_matches_separate_decodes(tmp_path):
    from synthasr.decode.context_graph import ContextGraph
    from synthasr.decode.evaluation import Decoding, EvaluateError, decode_cuts, evaluate, evaluate_decodings

    texts, tok, model, cuts = _tiny_model_and_cuts(tmp_path)
    graph = ContextGraph.from_phrases(["amoxicillin:3.0"], tok)
    plan = [Decoding("greedy"), Decoding("beam", "modified_beam_search", 2),
            Decoding("beam-hotwords", "modified_beam_search", 2, context_graph=graph)]
    calls = []
    encode = model.encode
    model.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
    got = evaluate_decodings(model, tok, cuts, tmp_path / "many", "dev", plan, progress=False)
    assert len(calls) == 1  # one batch, encoded once for three searches
    for d in plan:
        alone = evaluate(model, tok, cuts, tmp_path / "one", "dev", method=d.method, beam_size=d.beam_size,
                         context_graph=d.context_graph, suffix=d.suffix)
        assert [u.hyp for u in got[d.suffix].utts] == [u.hyp for u in alone.utts], d.suffix
        assert (tmp_path / "many" / f"recogs-dev-{d.suffix}.txt").read_text() == \
            (tmp_path / "one" / f"recogs-dev-{d.suffix}.txt").read_text()
    summary = (tmp_path / "many" / "wer-summary-dev.txt").read_text()
    assert all(d.suffix in summary for d in plan)
    # Batched shortest first, returned in input order: here the input is longest first.
    from lhotse import CutSet

    longest_first = CutSet.from_cuts(sorted(cuts, key=lambda c: -c.duration))
    assert [r[0] for r in decode_cuts(model, tok, longest_first, max_duration=2.5, progress=False)] == \
        ["utt2", "utt1", "utt0"]
    with pytest.raises(EvaluateError, match="distinct result names"):
        evaluate_decodings(model, tok, cuts, tmp_path / "dup", "dev", [Decoding("x"), Decoding("x")], progress=False)
    with pytest.raises(ValueError, match="hotword biasing needs modified_beam_search"):
        Decoding("x", "greedy_search", context_graph=graph)


def test_evaluate_uses_precomputed_features(tmp_path):
    from lhotse import LilcomChunkyWriter

    from synthasr.data.features import make_extractor
    from synthasr.decode.evaluation import decode_cuts, _cuts_have_features

    class _Tok:
        unk_id = 2

        def decode(self, hyps):
            return [" ".join(map(str, h)) for h in hyps]

    cuts = _cuts_with_audio(tmp_path, ["a b", "c"])
    with_feats = cuts.compute_and_store_features(make_extractor(), tmp_path / "feats",
                                                 storage_type=LilcomChunkyWriter)
    assert _cuts_have_features(with_feats) and not _cuts_have_features(cuts)
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": 10})
    assert len(decode_cuts(model, _Tok(), with_feats, progress=False)) == 2


def test_supervision_rows_are_named_within_their_cut_not_their_batch():
    """Two cuts of two supervisions each: rows are <cut>-0, <cut>-1 whatever else shares the batch."""
    from types import SimpleNamespace

    from synthasr.decode.evaluation import _supervision_batch

    def batch(cuts):
        sup = {"sequence_idx": torch.tensor([i for i, _ in enumerate(cuts) for _ in range(2)]),
               "start_frame": torch.tensor([0, 10] * len(cuts)), "num_frames": torch.tensor([10, 8] * len(cuts)),
               "cut": [c for c in cuts for _ in range(2)], "text": [f"{c.id} {j}" for c in cuts for j in range(2)]}
        return {"inputs": torch.randn(len(cuts), 20, 4), "supervisions": sup}

    a, b = (SimpleNamespace(id=name, supervisions=[None, None]) for name in ("a", "b"))
    _, lens, ids, refs, cut_ids = _supervision_batch(batch([a, b]))
    assert ids == ["a-0", "a-1", "b-0", "b-1"] and cut_ids == ["a", "a", "b", "b"] and lens.tolist() == [10, 8] * 2
    assert _supervision_batch(batch([b]))[2] == ["b-0", "b-1"]
