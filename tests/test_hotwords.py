"""Hotword biasing: Aho-Corasick automaton, exact boost/cancellation values, and its effect in search."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from synthasr.decode.context_graph import ContextGraph, HotwordError, parse_hotword
from synthasr.decode.search import greedy_search, modified_beam_search
from synthasr.model.decoder import StatelessDecoder

# Hand-made vocabulary: 1=a 2=b 3=c 4=d 5=e.  Phrases: "abc", "bc", "bd".
PHRASES = [[1, 2, 3], [2, 3], [2, 4]]


@pytest.fixture
def graph():
    return ContextGraph(PHRASES, default_score=1.0, phrases=["abc", "bc", "bd"])


def _walk(graph, tokens):
    state, total, steps = graph.root, 0.0, []
    for tok in tokens:
        score, state = graph.forward_one_step(state, tok)
        steps.append(score)
        total += score
    return state, total, steps


def test_trie_failure_arcs_and_output_links(graph):
    s = graph.states
    assert len(graph) == 7  # root, a, ab, abc, b, bc, bd
    assert [(n.id, n.token, n.depth, n.node_score, n.is_end) for n in s] == [
        (0, -1, 0, 0.0, False), (1, 1, 1, 1.0, False), (2, 2, 2, 2.0, False), (3, 3, 3, 3.0, True),
        (4, 2, 1, 1.0, False), (5, 3, 2, 2.0, True), (6, 4, 2, 2.0, True)]
    assert [n.fail.id for n in s[1:]] == [0, 4, 5, 0, 0, 0]  # ab -> b, abc -> bc
    assert s[3].output is s[5] and s[2].output is None and s[5].output is None
    assert s[3].output_score == 3.0 + 2.0  # abc itself + suffix bc
    assert graph.matched_phrases(s[3]) == ["abc", "bc"]


def test_boosts_and_cancellation_exact(graph):
    # partial match "ab" then an unrelated token: everything given back
    state, total, steps = _walk(graph, [1, 2, 7])
    assert steps == [1.0, 1.0, -2.0] and total == 0.0 and state is graph.root
    # "ab" then "d": the "a" part is cancelled, "bd" completes (2.0) and is still pending (2.0)
    state, total, steps = _walk(graph, [1, 2, 4])
    assert steps == [1.0, 1.0, 2.0 - 2.0 + 2.0] and total == 4.0
    assert total + graph.finalize(state) == 2.0  # exactly the score of "bd"
    # "abc" completes abc (3) and bc (2)
    state, total, _ = _walk(graph, [1, 2, 3])
    assert total + graph.finalize(state) == 5.0
    # unfinished partial match at the end is cancelled by finalize
    state, total, _ = _walk(graph, [5, 1, 2])
    assert total == 2.0 and graph.finalize(state) == -2.0
    # completed phrase keeps its boost after later unrelated tokens
    state, total, _ = _walk(graph, [2, 4, 5, 5])
    assert total == 2.0 and graph.finalize(state) == 0.0


def test_per_phrase_scores_and_shared_prefix():
    g = ContextGraph([[5, 6], [5, 7]], scores=[3.0, None], default_score=1.0)
    five = g.root.next[5]
    assert five.token_score == 3.0  # the shared arc keeps the larger boost
    assert five.next[6].node_score == 6.0 and five.next[7].node_score == 4.0
    _, total, _ = _walk(g, [5, 7, 1])
    assert total == 4.0  # phrase "5 7" is worth its node score


# Word-boundary vocabulary for whole-word tests: 1=▁a 2=▁b 3=c 4=▁d 5=e (3 and 5 continue a word).
CONTINUE = [3, 5]


def test_whole_words_cancel_a_phrase_continued_inside_its_word():
    g = ContextGraph([[2, 3], [1]], default_score=1.0, continuation_tokens=CONTINUE)
    worth = lambda tokens: (lambda st, total: total + g.finalize(st))(*_walk(g, tokens)[:2])  # noqa: E731
    assert worth([2, 3]) == 2.0 and worth([2, 3, 4]) == 2.0  # "bc", then the end or a new word: kept
    assert worth([2, 3, 5]) == 0.0  # "bc" + "e" is the word "bce", not "bc": taken back
    assert worth([1, 5]) == 0.0 and worth([1, 2, 3]) == 3.0 and worth([1, 2, 3, 5, 4]) == 1.0
    _, _, steps = _walk(g, [2, 3, 5])
    assert steps == [1.0, 1.0 + 2.0, -2.0 - 2.0]  # the pending node score and the completed phrase
    loose = ContextGraph([[2, 3], [1]], default_score=1.0)  # no word boundaries known: old behaviour
    state, total, _ = _walk(loose, [2, 3, 5])
    assert total + loose.finalize(state) == 2.0
    # a completed phrase and the suffix phrases it contains are all taken back
    nested = ContextGraph(PHRASES, default_score=1.0, continuation_tokens=[5])
    state, total, _ = _walk(nested, [1, 2, 3, 5])
    assert total + nested.finalize(state) == 0.0
    state, total, _ = _walk(nested, [1, 2, 3, 4])
    assert total + nested.finalize(state) == 5.0


def test_whole_word_tokens_from_a_sentencepiece_model(tmp_path):
    from synthasr.decode.context_graph import WORD_START, word_continuation_tokens
    from synthasr.tokenizer import Tokenizer, train_bpe

    tok = Tokenizer.load(train_bpe(["take amoxicillin twice daily", "metformin with food"] * 20, tmp_path / "bpe",
                                   vocab_size=40, hard_vocab_limit=False))
    cont = set(word_continuation_tokens(tok))
    pieces = {i: tok.id_to_piece(i) for i in range(tok.vocab_size)}
    assert cont and cont == {i for i, p in pieces.items() if not p.startswith(WORD_START) and not p.startswith("<")}
    assert 0 not in cont and tok.unk_id not in cont
    g = ContextGraph.from_phrases(["metformin"], tok, score=1.0)
    assert g.continuation_tokens == cont
    assert ContextGraph.from_phrases(["metformin"], tok, whole_words=False).continuation_tokens is None


def test_parse_hotword():
    assert parse_hotword("amoxicillin") == ("amoxicillin", None)
    assert parse_hotword("amoxicillin:2.5") == ("amoxicillin", 2.5)
    assert parse_hotword("ratio 1:x") == ("ratio 1:x", None)


class _CharTokenizer:
    """a..z -> 3..28, unknown -> 2 (like the real tokenizer's <unk>)."""

    unk_id = 2

    def encode(self, texts):
        return [[ord(ch) - 94 if "a" <= ch <= "z" else self.unk_id for ch in t.replace(" ", "")] for t in texts]


def test_from_phrases_normalizes_and_rejects_bad_phrases():
    tok = _CharTokenizer()
    g = ContextGraph.from_phrases(["Ab", ("cd", 2.0)], tok, score=1.0)
    assert g.root.next[3].next[4].node_score == 2.0 and g.root.next[5].next[6].node_score == 4.0
    assert ContextGraph.from_phrases([], tok) is None
    with pytest.raises(HotwordError, match="你好"):
        ContextGraph.from_phrases(["ok", "你好"], tok)
    with pytest.raises(HotwordError, match="it's"):
        ContextGraph.from_phrases(["it's"], tok)  # apostrophe survives normalize but is <unk> here


# -- effect in search: a fake transducer whose joiner output is the encoder frame itself -------------
class _FrameJoiner(nn.Module):
    """logits = encoder frame (decoder ignored) so each frame's distribution is set by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_proj = nn.Identity()

    def decoder_proj(self, dec):
        return torch.zeros(dec.shape[:-1] + (6,))

    def forward(self, enc, dec, project_input=True):
        return enc + dec[..., :6] * 0


class _FakeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = StatelessDecoder(vocab_size=6, decoder_dim=4)
        self.joiner = _FrameJoiner()


def _frames(*probs):
    """Encoder output whose per-frame log-softmax equals log(probs) (token 0 = blank)."""
    return torch.log(torch.tensor(probs, dtype=torch.float32)).unsqueeze(0), torch.tensor([len(probs)])


NEAR_TIE = ([0.05, 0.50, 0.45, 1e-9, 1e-9, 1e-9], [1.0 - 4e-9, 1e-9, 1e-9, 1e-9, 1e-9, 1e-9])


def test_biasing_flips_a_near_tie():
    model, (enc, lens) = _FakeModel(), _frames(*NEAR_TIE)
    assert modified_beam_search(model, enc, lens, beam_size=4) == [[1]]
    g = ContextGraph([[2]], default_score=0.5)
    assert modified_beam_search(model, enc, lens, beam_size=4, context_graph=g) == [[2]]
    # the flip needs a boost above log(0.50/0.45)
    weak = ContextGraph([[2]], default_score=0.5 * math.log(0.50 / 0.45))
    assert modified_beam_search(model, enc, lens, beam_size=4, context_graph=weak) == [[1]]


def test_huge_boost_on_a_partial_match_is_cancelled():
    """Phrase "2 3" with a large score: the hypothesis that only starts it must not win."""
    model, (enc, lens) = _FakeModel(), _frames(*NEAR_TIE)
    g = ContextGraph([[2, 3]], default_score=5.0)
    assert modified_beam_search(model, enc, lens, beam_size=4, context_graph=g) == [[1]]


def test_whole_words_stop_a_stray_piece_riding_on_a_hotword():
    """The recipe's "letairis" + "s" case: after the hotword, a continuation piece (3) narrowly beats a
    new word (4) acoustically; only with word boundaries does the biased search end the word."""
    frames = _frames([1e-6, 1e-6, 1.0 - 4e-6, 1e-6, 1e-6, 1e-6], [0.05, 1e-9, 1e-9, 0.50, 0.45, 1e-9])
    model = _FakeModel()
    assert modified_beam_search(model, *frames, beam_size=4, context_graph=ContextGraph([[2]], default_score=1.0)) == [[2, 3]]
    whole = ContextGraph([[2]], default_score=1.0, continuation_tokens=[3, 5])
    assert modified_beam_search(model, *frames, beam_size=4, context_graph=whole) == [[2, 4]]


def test_greedy_max_symbols_per_frame():
    model, (enc, lens) = _FakeModel(), _frames([0.1, 0.2, 0.7, 0, 0, 0], [0.8, 0.1, 0.1, 0, 0, 0])
    assert greedy_search(model, enc, lens) == [[2]]
    assert greedy_search(model, enc, lens, max_sym_per_frame=3) == [[2, 2, 2]]


def test_docs_recommend_only_the_measured_hotword_score():
    """README/docs examples use the API/CLI default, the score measured for the default search (beam 4,
    no LM: 0.5; 2.0 raised WER on every set). The recipe's decode.hotword_score goes with its LM and
    wide beam (1.0 at beam 32, chosen on its dev sets) and must be documented as such."""
    import inspect
    import re
    from pathlib import Path

    import yaml

    from synthasr.decode.bundle import ASRBundle

    repo = Path(__file__).resolve().parents[1]
    api_default = inspect.signature(ASRBundle.transcribe).parameters["hotword_score"].default
    assert api_default == 0.5
    found = []
    for path in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        for m in re.finditer(r"hotword_score=([0-9.]+)|--hotword-score ([0-9.]+)", path.read_text()):
            found.append((path.name, float(m.group(1) or m.group(2))))
    assert found and all(v == api_default for _, v in found), found
    decode = yaml.safe_load((repo / "recipes/medication/conf/default.yaml").read_text())["decode"]
    if decode["hotword_score"] != api_default:  # the recipe's own value needs its LM and beam stated
        doc = (repo / "docs/configuration.md").read_text()
        assert f"`default.yaml`: {decode['hotword_score']}" in doc and decode["lm"]["order"] > 0
