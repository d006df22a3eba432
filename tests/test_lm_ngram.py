"""Token n-gram LM: Kneser-Ney against a direct implementation of its recursion, normalisation, ARPA
round trips and bad files, and shallow fusion against a reference one-hypothesis search."""
from __future__ import annotations

import gzip
import math
import random
from collections import defaultdict

import pytest
import torch

from synthasr.decode.search import ShallowFusion, modified_beam_search
from synthasr.lm.ngram import SOS_EOS_ID, NgramError, NgramLM, estimate_kneser_ney, ngram_counts, perplexity

V = 9  # ids: 0 blank, 1 <sos/eos>, 2..8 tokens
PIECES = ["<blk>", "<sos/eos>", "<unk>"] + [f"\u2581t{i}" for i in range(3, V)]
PIECE_IDS = {p: i for i, p in enumerate(PIECES)}


def _corpus(seed: int, n: int = 60):
    rng = random.Random(seed)
    return [[rng.choice(range(2, V)) for _ in range(rng.randint(1, 6))] for _ in range(n)]


def _reference_kn(sentences, order):
    """Interpolated Kneser-Ney written straight from its definition (dicts, recursion, no tables)."""
    seqs = [(SOS_EOS_ID,) + tuple(s) + (SOS_EOS_ID,) for s in sentences]
    raw = defaultdict(int)
    for seq in seqs:
        for i in range(1, len(seq)):
            for n in range(1, min(order, i + 1) + 1):
                raw[seq[i - n + 1: i + 1]] += 1

    def count(g):  # what order len(g) estimates from: raw at the top and after <s>, else continuation
        if len(g) == order or (len(g) > 1 and g[0] == SOS_EOS_ID):
            return raw.get(g, 0)
        return len({x for x in raw if len(x) == len(g) + 1 and x[1:] == g})

    grams = {g for g in raw} | {g[1:] for g in raw if len(g) > 1}
    counts = {g: count(g) for g in grams}

    def discount(n):
        cs = [c for g, c in counts.items() if len(g) == n]
        n1, n2 = cs.count(1), cs.count(2)
        return 0.5 if n1 == 0 or n2 == 0 else min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)

    def prob(h, w):
        n = len(h) + 1
        lower = 1.0 / (V - 1) if not h else prob(h[1:], w)
        followers = {g[-1]: c for g, c in counts.items() if len(g) == n and g[:-1] == h and c > 0}
        total = sum(followers.values())
        if total == 0:
            return lower
        d = discount(n)
        return max(followers.get(w, 0) - d, 0) / total + d * len(followers) / total * lower

    return prob


@pytest.mark.parametrize("order", [1, 2, 3])
def test_kneser_ney_matches_its_definition(order):
    sentences = _corpus(seed=order)
    lm = estimate_kneser_ney(sentences, order, V)
    reference = _reference_kn(sentences, order)
    histories = [(), (SOS_EOS_ID,), (3,), (4, 5), (SOS_EOS_ID, 2), (8, 8)]
    for h in histories:
        h = h[-(order - 1):] if order > 1 else ()
        got = lm.log_probs(h)
        for w in range(1, V):
            assert got[w].item() == pytest.approx(math.log(reference(h, w)), abs=1e-5), (h, w)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_history_is_a_distribution(order):
    lm = estimate_kneser_ney(_corpus(seed=10 + order, n=200), order, V)
    rng = random.Random(order)
    for _ in range(30):
        h = (SOS_EOS_ID,) + tuple(rng.choice(range(2, V)) for _ in range(rng.randint(0, 4)))
        p = lm.log_probs(h).exp()
        assert p[0] == 0.0  # the blank is never an LM token
        assert p.sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("suffix", [".arpa", ".arpa.gz"])
def test_arpa_round_trip(tmp_path, suffix):
    sentences = _corpus(seed=3, n=150)
    lm = estimate_kneser_ney(sentences, 3, V)
    path = lm.write_arpa(tmp_path / f"lm{suffix}", PIECES)
    again = NgramLM.read_arpa(path, PIECE_IDS, V)
    assert again.order == 3 and ngram_counts(again) == ngram_counts(lm)
    for h in [(SOS_EOS_ID,), (SOS_EOS_ID, 4), (5, 6), (7,), ()]:
        assert torch.allclose(again.log_probs(h)[1:], lm.log_probs(h)[1:], atol=1e-5)
    assert perplexity(again, sentences) == pytest.approx(perplexity(lm, sentences), rel=1e-5)
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    assert "-99.0000000\t<s>\t" in text and "\t</s>\n" in text and "\u2581t3" in text


def _write(tmp_path, text):
    path = tmp_path / "bad.arpa"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = "\\data\\\nngram 1=3\n\n\\1-grams:\n-99\t<s>\t-0.3\n-0.5\t</s>\n-0.2\t\u2581t3\n\n\\end\\\n"


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("ngram 1=3", "ngram 1=4"), "declares 4 1-grams, the file has 3"),
    (GOOD.replace("\u2581t3", "\u2581zz"), "bad.arpa:7: token '\u2581zz' is not in the BPE model"),
    (GOOD.replace("-0.2", "minus"), "bad.arpa:7: not a number"),
    (GOOD.replace("-0.2", "0.7"), "bad.arpa:7: log10 probability must be <= 0"),
    (GOOD.replace("\\end\\\n", ""), "not a complete ARPA file"),
    (GOOD.replace("ngram 1=3", "ngrams one"), "bad.arpa:2: expected 'ngram N=COUNT'"),
    (GOOD.replace("\\1-grams:", "\\2-grams:"), "bad.arpa:4: section '\\\\2-grams:' is not declared"),
])
def test_bad_arpa_is_one_line_naming_file_and_line(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(NgramError) as info:
        NgramLM.read_arpa(path, PIECE_IDS, V)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_good_arpa_reads(tmp_path):
    lm = NgramLM.read_arpa(_write(tmp_path, GOOD), PIECE_IDS, V)
    assert lm.order == 1 and lm.log_probs(())[3].item() == pytest.approx(-0.2 * math.log(10))
    assert lm.backoffs[(SOS_EOS_ID,)] == pytest.approx(-0.3 * math.log(10))


# ---- shallow fusion -------------------------------------------------------------------------------
class _Decoder(torch.nn.Module):
    """Prediction network with a one-token context (enough to make the LM/AM interplay real)."""

    blank_id = 0

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, 6)

    def start(self, batch, device):
        tokens = torch.zeros(batch, dtype=torch.long, device=device)
        return self.embed(tokens), tokens

    def step(self, tokens, state):
        return self.embed(tokens), tokens

    def select_state(self, state, rows):
        return state.index_select(0, rows)

    def scatter_state(self, state, rows, sub):
        return state.index_copy(0, rows, sub)


class _Joiner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(5, 8)
        self.dec = torch.nn.Linear(6, 8)
        self.out = torch.nn.Linear(8, V)

    def encoder_proj(self, x):
        return self.enc(x)

    def decoder_proj(self, x):
        return self.dec(x)

    def forward(self, enc, dec, project_input=True):
        return self.out(torch.tanh(enc + dec))


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder, self.joiner = _Decoder(), _Joiner()


def _reference_fused_greedy(model, enc, length, fusion):
    """One hypothesis, one symbol per frame: argmax of log p_rnnt + scale * log p_lm + bonus
    - ilm_scale * log p_ilm (non-blank), p_ilm = the joiner without its acoustic input, blank excluded."""
    ys, lm_state = [], fusion.lm.start()
    dec_out, _ = model.decoder.start(1, enc.device)
    for t in range(length):
        dec = model.joiner.decoder_proj(dec_out)
        logp = model.joiner(model.joiner.encoder_proj(enc[t:t + 1]), dec).log_softmax(-1)[0]
        ilm_logits = model.joiner.out(torch.tanh(dec))[0]
        ilm = torch.cat([ilm_logits[:1] * 0 - float("inf"), ilm_logits[1:]]).log_softmax(-1)
        fused = logp + fusion.scale * fusion.lm.log_probs(lm_state)[:V] + fusion.token_bonus
        fused[1:] -= fusion.ilm_scale * ilm[1:]
        fused[0] = logp[0]
        token = int(fused.argmax())
        if token != 0:
            ys.append(token)
            lm_state = fusion.lm.advance(lm_state, token)
            dec_out, _ = model.decoder.step(torch.tensor([token]), None)
    return ys


def test_beam_one_with_fusion_equals_reference_search():
    torch.manual_seed(0)
    model = _Model().eval()
    lm = estimate_kneser_ney(_corpus(seed=5, n=100), 3, V)
    enc = torch.randn(3, 12, 5)
    lens = torch.tensor([12, 9, 5])
    outputs = set()
    for scale, bonus, ilm in [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (1.0, 0.7, 0.0), (3.0, 2.0, 0.0), (0.5, 2.0, 1.0),
                              (0.0, 0.0, 3.0)]:
        fusion = ShallowFusion(lm, scale, bonus, ilm)
        got = modified_beam_search(model, enc, lens, beam_size=1, fusion=fusion)
        want = [_reference_fused_greedy(model, enc[b], int(lens[b]), fusion) for b in range(3)]
        assert got == want, (scale, bonus, ilm)
        outputs.add(repr(got))
    assert len(outputs) > 2  # the settings do change the search: the comparison is not vacuous
    plain = modified_beam_search(model, enc, lens, beam_size=3)
    assert modified_beam_search(model, enc, lens, beam_size=3, fusion=ShallowFusion(lm, 0.0, 0.0)) == plain


def test_fusion_refuses_an_lm_over_other_units():
    model = _Model().eval()
    lm = estimate_kneser_ney(_corpus(seed=1), 2, V + 3)
    with pytest.raises(ValueError, match="another BPE model"):
        modified_beam_search(model, torch.randn(1, 4, 5), torch.tensor([4]), fusion=ShallowFusion(lm, 0.5))
    with pytest.raises(ValueError, match="LM scale"):
        ShallowFusion(lm, -1.0)
    with pytest.raises(ValueError, match="internal LM scale"):
        ShallowFusion(lm, 0.5, ilm_scale=-0.1)


def test_estimation_refuses_bad_ids_and_empty_text():
    with pytest.raises(NgramError, match="sentence 2: token id 0"):
        estimate_kneser_ney([[2, 3], [0]], 2, V)
    with pytest.raises(NgramError, match="no text"):
        estimate_kneser_ney([], 2, V)


def test_frame_top_k_pads_beams_of_unequal_sizes():
    """The one padded top-k per frame picks, per beam, what a top-k over that beam's own rows picks."""
    from synthasr.decode.search import _frame_top_k

    counts = [3, 1, 4, 2]
    log_probs = torch.randn(sum(counts), V).log_softmax(-1)
    scores, idx = _frame_top_k(log_probs, counts, 5)
    offset = 0
    for count, got_scores, got_idx in zip(counts, scores, idx):
        own = log_probs[offset: offset + count].reshape(-1)
        want_scores, want_idx = own.topk(min(5, own.numel()))
        assert got_idx[: len(want_idx)] == want_idx.tolist()
        assert got_scores[: len(want_scores)] == want_scores.tolist()
        assert all(s == float("-inf") for s in got_scores[len(want_scores):])  # only a 1-row beam has < 5
        offset += count


def test_batched_beam_search_equals_one_utterance_at_a_time():
    """Beam 4, plain and with the LM, ILM and hotwords: a batch of unequal lengths gives each utterance the
    result it gets alone."""
    from synthasr.decode.context_graph import ContextGraph

    torch.manual_seed(0)
    model = _Model().eval()
    fusion = ShallowFusion(estimate_kneser_ney(_corpus(seed=3, n=100), 3, V), 0.5, 1.0, 0.3)
    graph = ContextGraph([[3, 4], [5, 6, 7]], default_score=1.5)
    enc, lens = torch.randn(5, 14, 5), torch.tensor([14, 3, 11, 7, 14])
    for kwargs in ({}, {"context_graph": graph, "fusion": fusion}):
        batched = modified_beam_search(model, enc, lens, beam_size=4, **kwargs)
        alone = [modified_beam_search(model, enc[b:b + 1, : int(lens[b])], lens[b:b + 1], beam_size=4, **kwargs)[0]
                 for b in range(5)]
        assert batched == alone, kwargs
