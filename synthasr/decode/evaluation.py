"""Decode a CutSet and score it, writing icefall-style result files.

Batches come from lhotse (``SimpleCutSampler`` + ``K2SpeechRecognitionDataset``); features are
the precomputed ones when the cuts have them, otherwise they are extracted on the fly with the same
``make_extractor(feature_config)`` that training used. The dataset is called in-process (no
DataLoader workers) so evaluation is deterministic and cheap to start.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

log = logging.getLogger(__name__)


class EvaluateError(ValueError):
    """The cuts cannot be evaluated (empty set, missing transcripts...)."""


def _cuts_have_features(cuts) -> bool:
    for cut in cuts:
        return bool(cut.has_features)
    raise EvaluateError("evaluate: the CutSet is empty")


def _make_dataset(cuts, feature_config):
    from lhotse.dataset import K2SpeechRecognitionDataset, OnTheFlyFeatures, PrecomputedFeatures

    from synthasr.data.features import FeatureConfig, make_extractor

    if _cuts_have_features(cuts):
        return cuts, K2SpeechRecognitionDataset(input_strategy=PrecomputedFeatures(), return_cuts=True)
    cfg = feature_config if isinstance(feature_config, FeatureConfig) else FeatureConfig(**(feature_config or {}))
    rate = cfg.sampling_rate
    cuts = cuts.map(functools.partial(_resample_cut, rate=rate))
    # Per-utterance extraction: lhotse's batched path alters the last frame of shorter cuts, and
    # training (compute_fbank / the trainer's dataset) extracts one utterance at a time.
    strategy = OnTheFlyFeatures(make_extractor(cfg), use_batch_extract=False)
    return cuts, K2SpeechRecognitionDataset(input_strategy=strategy, return_cuts=True)


def _resample_cut(cut, rate: int):
    return cut if cut.sampling_rate == rate else cut.resample(rate)


def _supervision_batch(batch: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, List[str], List[str], List[str]]:
    """Slice each supervision's frames out of the batch (one row per supervision); also each row's cut id.

    A cut with several supervisions names its rows ``<cut id>-<n>``, n counted within the cut (a cut is
    never split across batches), so the names do not depend on how cuts were batched."""
    inputs = batch["inputs"]
    sup = batch["supervisions"]
    rows, lens, ids, refs, cut_ids = [], [], [], [], []
    seen_in_cut: Dict[str, int] = {}
    for k, seq in enumerate(sup["sequence_idx"].tolist()):
        start, num = int(sup["start_frame"][k]), int(sup["num_frames"][k])
        rows.append(inputs[seq, start: start + num])
        lens.append(num)
        cut = sup["cut"][k]
        n = seen_in_cut[cut.id] = seen_in_cut.get(cut.id, -1) + 1
        ids.append(cut.id if len(cut.supervisions) <= 1 else f"{cut.id}-{n}")
        refs.append(sup["text"][k] or "")
        cut_ids.append(cut.id)
    x = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    return x, torch.tensor(lens, dtype=torch.int64), ids, refs, cut_ids


@dataclass(frozen=True)
class Decoding:
    """One way of searching encoder outputs; ``suffix`` names its result files (``recogs-SET-SUFFIX.txt``).

    ``context_graph`` (hotword biasing) and ``fusion`` (an external LM,
    :class:`synthasr.decode.search.ShallowFusion`) need ``method="modified_beam_search"``."""

    suffix: str
    method: str = "greedy_search"
    beam_size: int = 4
    context_graph: Any = None
    fusion: Any = None

    def __post_init__(self) -> None:
        if self.method not in ("greedy_search", "modified_beam_search"):
            raise ValueError(f"method must be greedy_search or modified_beam_search, got {self.method!r}")
        if self.method != "modified_beam_search" and (self.fusion is not None or self.context_graph is not None):
            what = "LM fusion" if self.fusion is not None else "hotword biasing"
            raise ValueError(f"{what} needs modified_beam_search, not {self.method}")


def default_suffix(method: str, beam_size: int = 4, context_graph=None, fusion=None) -> str:
    """icefall-style setting name: method (+ beam size, LM weights, ``_hotwords``)."""
    suffix = method if method == "greedy_search" else f"{method}_beam_size_{beam_size}"
    if fusion is not None:
        suffix += f"_lm_scale_{fusion.scale:g}" + (f"_bonus_{fusion.token_bonus:g}" if fusion.token_bonus else "")
        suffix += f"_ilm_{fusion.ilm_scale:g}" if fusion.ilm_scale else ""
    if context_graph is not None:
        suffix += "_hotwords"
    return suffix


# encoder out, lengths, utterance ids, references, each row's position in the input
EncodedBatch = Tuple[torch.Tensor, torch.Tensor, List[str], List[str], List[int]]


@torch.inference_mode()
def encode_cuts(model, cuts, device: Union[str, torch.device] = "cpu", max_duration: float = 300.0,
                feature_config=None, progress: bool = True) -> List[EncodedBatch]:
    """Encoder outputs of every supervision of ``cuts``: the expensive half of decoding, computed once
    however many searches then run over it.

    Cuts are batched shortest first: padding a batch to its longest cut is what costs (general_real,
    0.6-25 s cuts: 27.8 s to encode in input order, 9.7 s sorted, the same hypotheses). Each row keeps
    its input position so :func:`search_encoded` returns results in input order. The outputs stay in
    memory: frames/s x encoder width x 4 bytes (Whisper tiny.en at 25 frames/s: about 140 MB an hour)."""
    from lhotse import CutSet
    from lhotse.dataset import SimpleCutSampler
    from tqdm import tqdm

    device = torch.device(device)
    model = model.to(device).eval()
    listed = list(cuts)
    position = {cut.id: i for i, cut in enumerate(listed)}
    by_length = CutSet.from_cuts(sorted(listed, key=lambda cut: cut.duration))
    cuts, dataset = _make_dataset(by_length, feature_config)
    # No bucketing: evaluation must not depend on a bucket-estimation pass.
    # world_size/rank pinned: under torchrun lhotse would otherwise read them from the environment
    # and give each rank only its share of the eval set.
    sampler = SimpleCutSampler(cuts, max_duration=max_duration, shuffle=False, world_size=1, rank=0)
    batches: List[EncodedBatch] = []
    for cut_batch in tqdm(sampler, desc="encode", unit="batch", disable=not progress):
        x, x_lens, ids, refs, cut_ids = _supervision_batch(dataset[cut_batch])
        enc, enc_lens = model.encode(x.to(device), x_lens.to(device))
        batches.append((enc, enc_lens, ids, refs, [position[c] for c in cut_ids]))
    return batches


@torch.inference_mode()
def search_encoded(model, tokenizer, batches: List[EncodedBatch], decoding: Decoding) -> List[Tuple[str, str, str]]:
    """(utt_id, reference, hypothesis) for every row of ``batches`` (from :func:`encode_cuts`), in the
    order of the cuts given to it."""
    from synthasr.decode.search import greedy_search, modified_beam_search

    model = model.eval()
    results: List[Tuple[str, str, str]] = []
    ranks: List[int] = []
    for enc, enc_lens, ids, refs, positions in batches:
        if decoding.method == "greedy_search":
            hyps = greedy_search(model, enc, enc_lens, unk_id=tokenizer.unk_id)
        else:
            hyps = modified_beam_search(model, enc, enc_lens, beam_size=decoding.beam_size,
                                        context_graph=decoding.context_graph, unk_id=tokenizer.unk_id,
                                        fusion=decoding.fusion)
        results.extend(zip(ids, refs, tokenizer.decode(hyps)))
        ranks.extend(positions)
    return [r for _, r in sorted(zip(ranks, results), key=lambda pair: pair[0])]


def decode_cuts(model, tokenizer, cuts, method: str = "greedy_search", beam_size: int = 4,
                device: Union[str, torch.device] = "cpu", max_duration: float = 300.0, feature_config=None,
                context_graph=None, progress: bool = True, fusion=None) -> List[Tuple[str, str, str]]:
    """(utt_id, reference, hypothesis) for every supervision of ``cuts``, in input order; ``fusion``:
    an external LM in modified beam search (:class:`synthasr.decode.search.ShallowFusion`)."""
    decoding = Decoding("", method, beam_size, context_graph, fusion)
    batches = encode_cuts(model, cuts, device, max_duration, feature_config, progress)
    return search_encoded(model, tokenizer, batches, decoding)


def evaluate(model, tokenizer, cuts, out_dir: Union[str, Path], test_set_name: str, method: str = "greedy_search",
             beam_size: int = 4, device: Union[str, torch.device] = "cpu", max_duration: float = 300.0,
             feature_config=None, context_graph=None, suffix: Optional[str] = None, terms=None,
             breakdown: Optional[str] = None, fusion=None):
    """Decode ``cuts``, write ``recogs-*``, ``errs-*`` and ``wer-summary-*`` into ``out_dir`` and return
    the :class:`synthasr.score.WerResult`. ``suffix`` defaults to the method (+ beam size). With
    ``terms`` (a :class:`synthasr.score.TermList`) term recall/precision are scored too and written to
    ``terms-*.txt`` and the ``wer-*.json``. With ``breakdown`` (a cut tag such as ``engine``) the same
    hypotheses are scored per tag value too (``wer-by-<tag>-*.txt``, ``result.breakdown``): per-engine
    WER and term recall from one decode. ``result.files`` says where each file went."""
    try:
        decoding = Decoding(suffix or default_suffix(method, beam_size, context_graph, fusion), method, beam_size,
                            context_graph, fusion)
    except ValueError as e:
        raise EvaluateError(f"{test_set_name}: {e}") from None
    return evaluate_decodings(model, tokenizer, cuts, out_dir, test_set_name, [decoding], device=device,
                              max_duration=max_duration, feature_config=feature_config, terms=terms,
                              breakdown=breakdown)[decoding.suffix]


def evaluate_decodings(model, tokenizer, cuts, out_dir: Union[str, Path], test_set_name: str,
                       decodings: Sequence[Decoding], device: Union[str, torch.device] = "cpu",
                       max_duration: float = 300.0, feature_config=None, terms=None,
                       breakdown: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """:func:`evaluate` for several decodings of one set, encoding it once: ``{suffix: WerResult}``.

    The encoder is most of the cost of a decode; comparing settings (with and without hotwords or an
    LM) then costs a search each, not a decode each."""
    from synthasr.data.tags import TagError, tag_values

    suffixes = [d.suffix for d in decodings]
    if not decodings:
        raise EvaluateError(f"{test_set_name}: no decoding to run")
    if len(set(suffixes)) != len(suffixes):
        raise EvaluateError(f"{test_set_name}: decodings need distinct result names, got {suffixes}")
    group_of = None
    if breakdown is not None:
        try:  # before decoding: a set without the tag fails in a second, not after the decode
            group_of = tag_values(cuts, breakdown)
        except TagError as e:
            raise EvaluateError(f"{test_set_name}: cannot break results down by {breakdown!r}: {e}") from None
    batches = encode_cuts(model, cuts, device, max_duration, feature_config, progress)
    out = {}
    for decoding in decodings:
        results = search_encoded(model, tokenizer, batches, decoding)
        out[decoding.suffix] = _score_and_write(results, out_dir, test_set_name, decoding.suffix, terms,
                                                group_of, breakdown)
    return out


def _score_and_write(results, out_dir, test_set_name: str, suffix: str, terms, group_of, breakdown: Optional[str]):
    from synthasr.score import add_breakdown, compute_wer, write_results

    wer = compute_wer(results, terms=terms)
    if group_of is not None:
        add_breakdown(wer, results, group_of, breakdown, terms=terms)
    wer.files = {kind: str(path) for kind, path in write_results(out_dir, test_set_name, suffix, wer).items()}
    log.info("%s %s: WER %.2f%% over %d utterances", test_set_name, suffix, wer.wer, len(results))
    if wer.terms is not None:
        t = wer.terms.total
        log.info("%s %s: term recall %s, precision %s (%d reference mentions, %d false alarms)", test_set_name,
                 suffix, _percent(t.recall), _percent(t.precision), t.ref, t.false_alarms)
    for value, sub in sorted(wer.breakdown.items()):
        recall = "" if sub.terms is None else f", term recall {_percent(sub.terms.total.recall)}"
        log.info("%s %s [%s=%s]: WER %.2f%% over %d utterances%s", test_set_name, suffix, breakdown, value,
                 sub.wer, len(sub.utts), recall)
    return wer


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def eval_summary(wer, relative_to: Optional[Union[str, Path]] = None, top_terms: int = 20) -> Dict[str, Any]:
    """The numbers a stage's ``eval.json`` keeps for one eval set (what the report reads).

    ``recogs`` (the per-utterance hypotheses, for report.html) is given relative to ``relative_to``
    (the stage directory) when it lies below it, so the experiment directory can be moved.
    """
    out: Dict[str, Any] = {
        "wer": float(wer.wer), "cer": float(wer.cer), "num_utts": len(wer.utts),
        "ref_words": int(wer.word.ref_words), "errors": int(wer.word.errors),
        "ins": int(wer.word.ins), "dels": int(wer.word.dels), "subs": int(wer.word.subs),
    }
    if wer.terms is not None:
        out["terms"] = wer.terms.to_dict(top_terms)
    if wer.breakdown:
        out["breakdown"] = {"field": wer.breakdown_field, "groups": wer.breakdown_summary()}
    recogs = wer.files.get("recogs")
    if recogs is not None:
        path = Path(recogs)
        if relative_to is not None:
            try:
                path = path.resolve().relative_to(Path(relative_to).resolve())
            except ValueError:
                pass
        out["recogs"] = str(path)
    return out
