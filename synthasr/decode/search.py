"""Transducer searches from encoder output: batched greedy and modified beam search.

Both follow icefall's algorithms (at most one symbol per frame for modified beam search; greedy
defaults to one as well). Utterances are sorted by length so the rows still active at frame t are a
prefix of the batch; per frame the joiner runs once on all active rows/hypotheses and the prediction
network runs only on the rows/hypotheses that emitted a symbol. Joiner inputs are projected once
(``encoder_proj`` for the whole utterance, ``decoder_proj`` per new decoder output).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch

from synthasr.decode.context_graph import ContextGraph, ContextState


def _sorted_order(encoder_out_lens: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    lens = encoder_out_lens.detach().cpu().clamp(min=0)
    order = torch.argsort(lens, descending=True, stable=True)
    return order, lens[order].tolist()


def _active_count(sorted_lens: List[int], t: int) -> int:
    n = 0
    while n < len(sorted_lens) and sorted_lens[n] > t:
        n += 1
    return n


def _unsort(results: List[List[int]], order: torch.Tensor) -> List[List[int]]:
    out: List[List[int]] = [[] for _ in results]
    for sorted_pos, original in enumerate(order.tolist()):
        out[original] = results[sorted_pos]
    return out


@torch.inference_mode()
def greedy_search(model, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor,
                  max_sym_per_frame: int = 1, unk_id: Optional[int] = None) -> List[List[int]]:
    """Batched greedy search; returns token ids (no blanks) per utterance, in input order.

    ``unk_id``: that token is treated like blank (not emitted, no decoder step), as icefall's searches
    do: ``<unk>`` carries no text and would otherwise print as a stray symbol.
    """
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    batch = encoder_out.size(0)
    if batch == 0:
        return []
    order, sorted_lens = _sorted_order(encoder_out_lens)
    decoder, joiner, blank = model.decoder, model.joiner, model.decoder.blank_id
    enc_proj = joiner.encoder_proj(encoder_out.index_select(0, order.to(encoder_out.device)))
    dec_out, state = decoder.start(batch, encoder_out.device)
    dec_proj = joiner.decoder_proj(dec_out)
    hyps: List[List[int]] = [[] for _ in range(batch)]

    for t in range(sorted_lens[0] if sorted_lens else 0):
        rows = torch.arange(_active_count(sorted_lens, t), device=encoder_out.device)
        for _ in range(max_sym_per_frame):
            logits = joiner(enc_proj[rows, t], dec_proj[rows], project_input=False)
            tokens = logits.argmax(dim=-1)
            emitted = tokens != blank
            if unk_id is not None:
                emitted &= tokens != unk_id
            if not bool(emitted.any()):
                break
            rows, tokens = rows[emitted], tokens[emitted]
            for r, k in zip(rows.tolist(), tokens.tolist()):
                hyps[r].append(k)
            out, sub_state = decoder.step(tokens, decoder.select_state(state, rows))
            state = decoder.scatter_state(state, rows, sub_state)
            dec_proj = dec_proj.index_copy(0, rows, joiner.decoder_proj(out))
    return _unsort(hyps, order)


@dataclass
class _Hyp:
    ys: Tuple[int, ...]
    log_prob: float  # transducer score, plus hotword boosts and LM fusion scores so far
    row: int  # row of this hypothesis in the frame's batched decoder state / projection
    context_state: Optional[ContextState] = None
    lm_state: Tuple[int, ...] = ()  # the external LM's history (shallow fusion)


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow (two paths to the same token sequence merge)."""
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))


def _frame_top_k(log_probs: torch.Tensor, counts: List[int], k: int) -> Tuple[List[List[float]], List[List[int]]]:
    """Per beam, the ``k`` best (hypothesis, token) pairs of its rows of ``log_probs`` (H, V) in one top-k:
    beams are padded to the longest with -inf. Returns Python lists (scores, flat ``row * V + token``)."""
    n_beams, vocab, longest = len(counts), log_probs.size(1), max(counts)
    if all(c == longest for c in counts):
        padded = log_probs.view(n_beams, longest * vocab)
    else:
        beam_of_row = torch.repeat_interleave(torch.arange(n_beams), torch.tensor(counts))
        starts = torch.tensor([0] + counts[:-1]).cumsum(0)
        slot_of_row = torch.arange(log_probs.size(0)) - starts.repeat_interleave(torch.tensor(counts))
        padded = log_probs.new_full((n_beams, longest, vocab), -math.inf)
        padded[beam_of_row.to(log_probs.device), slot_of_row.to(log_probs.device)] = log_probs
        padded = padded.view(n_beams, longest * vocab)
    scores, idx = padded.topk(min(k, longest * vocab), dim=1)
    return scores.tolist(), idx.tolist()


@torch.inference_mode()
def modified_beam_search(model, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, beam_size: int = 4,
                         context_graph: Optional[ContextGraph] = None,
                         unk_id: Optional[int] = None, fusion: Optional["ShallowFusion"] = None
                         ) -> List[List[int]]:
    """Batched modified beam search (one symbol per frame, hypotheses with equal token sequences merged
    by log-add). With ``context_graph`` each emitted token gets the graph's boost; partial phrase
    matches are cancelled when they fail and at the end (``ContextGraph.finalize``). ``unk_id`` is
    treated like blank, as in :func:`greedy_search`.

    ``fusion`` (a :class:`ShallowFusion`) adds an external token LM's scores.

    Per frame the joiner, the LM scores and the top-k over every beam are single tensor operations;
    the per-hypothesis bookkeeping (merging, hotword and LM states) works on Python numbers.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    batch = encoder_out.size(0)
    if batch == 0:
        return []
    device = encoder_out.device
    order, sorted_lens = _sorted_order(encoder_out_lens)
    decoder, joiner, blank = model.decoder, model.joiner, model.decoder.blank_id
    silent = {blank} if unk_id is None else {blank, unk_id}  # tokens that extend no hypothesis
    enc_proj = joiner.encoder_proj(encoder_out.index_select(0, order.to(device)))

    dec_out, state = decoder.start(batch, device)
    dec_proj = joiner.decoder_proj(dec_out)
    start_ctx = context_graph.root if context_graph is not None else None
    start_lm = fusion.lm.start() if fusion is not None else ()
    beams: List[List[_Hyp]] = [[_Hyp((), 0.0, row=b, context_state=start_ctx, lm_state=start_lm)]
                               for b in range(batch)]

    for t in range(sorted_lens[0] if sorted_lens else 0):
        n_active = _active_count(sorted_lens, t)
        active = beams[:n_active]
        flat = [h for beam in active for h in beam]
        counts = [len(beam) for beam in active]
        rows = torch.tensor([h.row for h in flat], device=device)
        enc_t = enc_proj[:n_active, t].repeat_interleave(torch.tensor(counts, device=device), dim=0)
        hyp_dec_proj = dec_proj.index_select(0, rows)
        log_probs = joiner(enc_t, hyp_dec_proj, project_input=False).log_softmax(dim=-1)
        log_probs += torch.tensor([h.log_prob for h in flat], dtype=log_probs.dtype, device=device).unsqueeze(1)
        if fusion is not None:
            log_probs += fusion.token_scores(flat, silent, log_probs.size(1), device)
            if fusion.ilm_scale:
                log_probs -= fusion.ilm_scale * _internal_lm(joiner, hyp_dec_proj, silent)
        vocab = log_probs.size(1)
        top_scores, top_idx = _frame_top_k(log_probs, counts, beam_size)

        new_beams, parents, emit_tokens, emit_slots = [], [], [], []
        for beam, scores, indices in zip(active, top_scores, top_idx):
            merged: dict = {}
            for score, idx in zip(scores, indices):
                slot, token = divmod(idx, vocab)
                if slot >= len(beam):  # padding of a shorter beam (only reached when scores are -inf)
                    continue
                parent = beam[slot]
                new_hyp = _extend(parent, token, score, silent, context_graph, fusion)
                existing = merged.get(new_hyp.ys)
                if existing is not None:
                    existing.log_prob = _log_add(existing.log_prob, new_hyp.log_prob)
                    continue
                merged[new_hyp.ys] = new_hyp
                parents.append(parent.row)
                if token not in silent:
                    emit_tokens.append(token)
                    emit_slots.append(len(parents) - 1)
            new_beams.append(list(merged.values()))

        # Row i of the next frame's state is new hypothesis i; it inherits its parent's decoder state
        # and emitting hypotheses take one decoder step. Finished utterances (a suffix of the sorted
        # batch) keep their beams but need no rows any more.
        parent_rows = torch.tensor(parents, device=device)
        state = decoder.select_state(state, parent_rows)
        dec_proj = dec_proj.index_select(0, parent_rows)
        slot = 0
        for beam in new_beams:
            for h in beam:
                h.row = slot
                slot += 1
        if emit_tokens:
            slots = torch.tensor(emit_slots, device=device)
            out, sub_state = decoder.step(torch.tensor(emit_tokens, device=device),
                                          decoder.select_state(state, slots))
            state = decoder.scatter_state(state, slots, sub_state)
            dec_proj = dec_proj.index_copy(0, slots, joiner.decoder_proj(out))
        beams = new_beams + beams[n_active:]

    return _unsort([_best(beam, context_graph, fusion) for beam in beams], order)


@dataclass
class ShallowFusion:
    """An external token LM in the beam search: every emitted token scores
    ``scale * log P_lm(token | history) + token_bonus`` on top of the transducer, every finished
    hypothesis ``scale * log P_lm(</s> | history)``.

    ``lm`` needs ``start()``, ``advance(state, token)`` and ``log_probs(state) -> (V,)`` over the
    model's own units (e.g. :class:`synthasr.lm.ngram.NgramLM`). The bonus offsets the LM's cost per
    token, which otherwise favours blank and deletes words; tune both on a dev set. The defaults are
    the medication recipe's choice on its dev sets (docs/configuration.md, ``decode.lm``).

    ``ilm_scale`` > 0 also subtracts ``ilm_scale * log P_ilm(token | history)``, the transducer's own
    internal LM estimated by running the joiner without the acoustic input (ILME, Meng et al. 2021).
    The prediction network learnt the training text's word statistics; subtracting them lets the
    external LM take their place instead of being counted twice (after adaptation on medication
    sentences, that internal LM leans to the new domain's text).
    """

    lm: Any
    scale: float = 0.5
    token_bonus: float = 2.0
    ilm_scale: float = 0.0

    def __post_init__(self) -> None:
        if not self.scale >= 0:
            raise ValueError(f"LM scale must be >= 0, got {self.scale}")
        if not self.ilm_scale >= 0:
            raise ValueError(f"internal LM scale must be >= 0, got {self.ilm_scale}")

    def token_scores(self, hyps: Sequence[_Hyp], silent: set, vocab: int, device) -> torch.Tensor:
        """(H, V) fusion scores; hypotheses sharing an LM history (most of a beam) share one LM row."""
        if self.lm.vocab_size != vocab:
            raise ValueError(f"the LM has {self.lm.vocab_size} tokens, the model {vocab}: built with another BPE model")
        row_of: dict = {}
        rows = [row_of.setdefault(h.lm_state, len(row_of)) for h in hyps]
        table = torch.stack([self.lm.log_probs(state)[:vocab] for state in row_of]).to(device)
        table = table * self.scale + self.token_bonus
        table[:, sorted(silent)] = 0.0
        return table.index_select(0, torch.tensor(rows, device=device))

    def final_score(self, h: _Hyp) -> float:
        from synthasr.lm.ngram import SOS_EOS_ID

        return self.scale * float(self.lm.log_probs(h.lm_state)[SOS_EOS_ID])


def _internal_lm(joiner, dec_proj: torch.Tensor, silent: set) -> torch.Tensor:
    """Internal LM estimate of a transducer (ILME): the joiner with the acoustic input removed,
    normalised over the emitting tokens; silent tokens (blank, unk) get 0 so they are not rescored."""
    logits = joiner(torch.zeros_like(dec_proj), dec_proj, project_input=False)
    silent_cols = sorted(silent)
    logits[:, silent_cols] = float("-inf")
    ilm = logits.log_softmax(dim=-1)
    ilm[:, silent_cols] = 0.0
    return ilm


def _extend(parent: _Hyp, token: int, score: float, silent: set,
            context_graph: Optional[ContextGraph], fusion: Optional[ShallowFusion] = None) -> _Hyp:
    """Child of ``parent`` after emitting ``token`` (blank or unk: same sequence) with total ``score``."""
    if token in silent:
        return _Hyp(parent.ys, score, row=-1, context_state=parent.context_state, lm_state=parent.lm_state)
    context_state = parent.context_state
    if context_graph is not None:
        boost, context_state = context_graph.forward_one_step(context_state, token)
        score += boost
    lm_state = fusion.lm.advance(parent.lm_state, token) if fusion is not None else parent.lm_state
    return _Hyp(parent.ys + (token,), score, row=-1, context_state=context_state, lm_state=lm_state)


def _best(beam: Sequence[_Hyp], context_graph: Optional[ContextGraph], fusion: Optional[ShallowFusion] = None
          ) -> List[int]:
    """Highest-scoring hypothesis, after cancelling unfinished hotword matches and (with an LM) adding
    the sentence-end probability."""
    def final_score(h: _Hyp) -> float:
        score = float(h.log_prob)
        if context_graph is not None:
            score += context_graph.finalize(h.context_state)
        if fusion is not None:
            score += fusion.final_score(h)
        return score

    return list(max(beam, key=final_score).ys)
