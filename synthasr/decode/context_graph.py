"""Hotword (contextual) biasing: an Aho-Corasick automaton over BPE token sequences.

Each arc of the trie carries a per-token boost (``score``; a phrase may override it). A hypothesis'
automaton state is the longest suffix of its token sequence that is a prefix of some phrase, as in
Aho-Corasick; failure arcs move between such states and output links find the phrases that end at
a state without being it.

Score bookkeeping (what makes partial matches cancel cleanly). Let ``node_score(s)`` be the sum of
arc boosts from the root to state ``s`` and ``output_score(s)`` the sum of the full scores of all
phrases ending at ``s`` (``s`` itself if it ends a phrase, plus its output-link chain). A step
``s --token--> s'`` is worth::

    node_score(s') - node_score(s) + output_score(s')

so after any token sequence the total boost is exactly::

    sum(score of every phrase occurrence completed so far) + node_score(current state)

i.e. tokens of an unfinished match are boosted while the match grows, the boost is taken back the
moment the match fails (the failure arc lands on a shallower state), and ``finalize`` takes back the
``node_score`` still pending when decoding ends. A large ``score`` therefore cannot "win" by half-
matching a phrase and deleting the rest of the utterance: the half match is worth nothing in the end.

Whole words (``continuation_tokens``): hotwords are words, so a phrase only counts when the word it
ends with ends too. Given the tokens that continue a word (BPE pieces without the word-start mark
``▁``), emitting one right after a phrase was completed takes that phrase's full score back, exactly
like a failed partial match. Without it, the boost for "letairis" also rewards "letairis" + "s": in the
recipe's decodes, rare names were often recognised with a stray piece stuck to them ("letairiss",
"rapaflof", "gaster" + "scription").
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

DEFAULT_HOTWORD_SCORE = 0.5  # the recipe's sweep (docs/recipe.md): 0.5 best, 2.0 worse on every test set


class HotwordError(ValueError):
    """A hotword phrase cannot be biased for (not normalizable, or outside the tokenizer)."""


@dataclass(eq=False)
class ContextState:
    """One automaton state (a trie node)."""

    id: int
    token: int  # token on the arc into this node; -1 for the root
    depth: int
    token_score: float  # boost of the arc into this node
    node_score: float  # sum of arc boosts from the root
    is_end: bool = False
    phrase: Optional[str] = None  # the phrase ending here, when is_end
    output_score: float = 0.0
    next: Dict[int, "ContextState"] = field(default_factory=dict)
    fail: Optional["ContextState"] = None
    output: Optional["ContextState"] = None  # nearest proper suffix state that ends a phrase

    def __repr__(self) -> str:
        return f"ContextState(id={self.id}, token={self.token}, depth={self.depth}, node_score={self.node_score})"


class ContextGraph:
    """Aho-Corasick automaton over token-id sequences, with per-token boosts."""

    def __init__(self, token_ids: Sequence[Sequence[int]], scores: Optional[Sequence[float]] = None,
                 phrases: Optional[Sequence[str]] = None, default_score: float = DEFAULT_HOTWORD_SCORE,
                 continuation_tokens: Optional[Iterable[int]] = None) -> None:
        if scores is not None and len(scores) != len(token_ids):
            raise ValueError(f"{len(scores)} scores for {len(token_ids)} phrases")
        self.default_score = default_score
        # Tokens that continue the current word: emitted right after a completed phrase, they cancel it.
        self.continuation_tokens = frozenset(continuation_tokens) if continuation_tokens is not None else None
        self.root = ContextState(id=0, token=-1, depth=0, token_score=0.0, node_score=0.0)
        self.root.fail = self.root
        self.states: List[ContextState] = [self.root]
        for i, ids in enumerate(token_ids):
            if not ids:
                raise HotwordError(f"hotword {i + 1} has no tokens")
            score = default_score if scores is None or scores[i] is None else float(scores[i])
            self._insert(list(ids), score, phrases[i] if phrases is not None else None)
        self._link_failures()

    # -- construction ---------------------------------------------------------------------------
    def _insert(self, ids: List[int], score: float, phrase: Optional[str]) -> None:
        node = self.root
        for token in ids:
            child = node.next.get(token)
            if child is None:
                child = ContextState(id=len(self.states), token=token, depth=node.depth + 1,
                                     token_score=score, node_score=node.node_score + score)
                node.next[token] = child
                self.states.append(child)
            elif score > child.token_score:
                # Shared prefix with different per-phrase scores: the arc keeps the larger boost.
                self._raise_arc_score(child, score - child.token_score)
            node = child
        node.is_end = True
        node.phrase = phrase if node.phrase is None else node.phrase

    def _raise_arc_score(self, node: ContextState, delta: float) -> None:
        node.token_score += delta
        stack = [node]
        while stack:
            n = stack.pop()
            n.node_score += delta
            stack.extend(n.next.values())

    def _link_failures(self) -> None:
        """Breadth-first: fail(child) = deepest proper suffix state; output = nearest ending suffix."""
        queue = deque()
        for child in self.root.next.values():
            child.fail = self.root
            queue.append(child)
        while queue:
            node = queue.popleft()
            for token, child in node.next.items():
                fallback = node.fail
                while token not in fallback.next and fallback is not self.root:
                    fallback = fallback.fail
                child.fail = fallback.next[token] if token in fallback.next and fallback.next[token] is not child \
                    else self.root
                queue.append(child)
        # Outputs after all failure arcs exist (BFS order guarantees fail targets are shallower).
        for node in sorted(self.states[1:], key=lambda n: n.depth):
            f = node.fail
            node.output = f if f.is_end else f.output
            node.output_score = (node.node_score if node.is_end else 0.0) + (
                node.output.output_score if node.output is not None else 0.0)

    # -- use in decoding ------------------------------------------------------------------------
    def forward_one_step(self, state: ContextState, token: int) -> Tuple[float, ContextState]:
        """Boost for emitting ``token`` in ``state`` and the next state (see module docstring)."""
        node = state
        while token not in node.next and node is not self.root:
            node = node.fail
        new_state = node.next.get(token, self.root)
        boost = new_state.node_score - state.node_score + new_state.output_score
        if self.continuation_tokens is not None and token in self.continuation_tokens:
            boost -= state.output_score  # the phrases completed at `state` ended inside a word
        return boost, new_state

    def finalize(self, state: ContextState) -> float:
        """Score to add at the end of decoding: cancels the unfinished (pending) partial match."""
        return -state.node_score

    def matched_phrases(self, state: ContextState) -> List[str]:
        """Phrases that end at ``state`` (for debugging / logging)."""
        out = []
        node: Optional[ContextState] = state if state.is_end else state.output
        while node is not None:
            out.append(node.phrase if node.phrase is not None else str(node.id))
            node = node.output
        return out

    def __len__(self) -> int:
        return len(self.states)

    # -- from text -------------------------------------------------------------------------------
    @classmethod
    def from_phrases(cls, hotwords: Sequence[Union[str, Tuple[str, float]]], tokenizer,
                     score: float = DEFAULT_HOTWORD_SCORE, whole_words: bool = True) -> Optional["ContextGraph"]:
        """Normalize and BPE-encode ``hotwords`` (strings, or ``(phrase, score)`` pairs; a string may
        also be ``"phrase:score"``). Returns None for an empty list (no biasing). ``whole_words``: a
        phrase followed by a piece that continues its last word earns nothing (module docstring)."""
        from synthasr.text import NormalizationError, normalize

        phrases, scores = [], []
        for item in hotwords:
            phrase, phrase_score = parse_hotword(item) if isinstance(item, str) else (item[0], float(item[1]))
            try:
                text = normalize(phrase)
            except NormalizationError as e:
                raise HotwordError(f"hotword {phrase!r}: {e}") from None
            if not text:
                raise HotwordError(f"hotword {phrase!r}: nothing left after normalization")
            phrases.append(text)
            scores.append(phrase_score)
        if not phrases:
            return None
        token_ids = tokenizer.encode(phrases)
        unk = tokenizer.unk_id
        for phrase, ids in zip(phrases, token_ids):
            if not ids or unk in ids:
                raise HotwordError(f"hotword {phrase!r}: contains characters the model's tokenizer does not know")
        continuation = word_continuation_tokens(tokenizer) if whole_words else None
        return cls(token_ids, scores, phrases=phrases, default_score=score, continuation_tokens=continuation)


WORD_START = "\u2581"  # sentencepiece's word-start mark


def word_continuation_tokens(tokenizer) -> Optional[List[int]]:
    """Ids of the pieces that continue a word: no leading ``▁`` and not a control symbol (``<blk>``).
    None for a tokenizer without sentencepiece pieces (``id_to_piece``): no word boundaries known."""
    if not hasattr(tokenizer, "id_to_piece") or not hasattr(tokenizer, "vocab_size"):
        return None
    out = []
    for i in range(tokenizer.vocab_size):
        piece = tokenizer.id_to_piece(i)
        if not piece.startswith(WORD_START) and not (piece.startswith("<") and piece.endswith(">")):
            out.append(i)
    return out


def parse_hotword(item: str) -> Tuple[str, Optional[float]]:
    """``"amoxicillin"`` -> (amoxicillin, None); ``"amoxicillin:3.0"`` -> (amoxicillin, 3.0)."""
    phrase, sep, tail = item.rpartition(":")
    if sep:
        try:
            return phrase.strip(), float(tail)
        except ValueError:
            pass
    return item.strip(), None


def read_hotwords_file(path) -> List[str]:
    """One hotword per line (``phrase`` or ``phrase:score``); blank lines and ``#`` comments skipped."""
    from pathlib import Path

    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
