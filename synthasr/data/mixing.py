"""Weighted multi-style data mixing: one training stream drawn from several sources by weight.

Why not plain concatenation: a few thousand synthetic medication utterances next to a large general
corpus would be a rounding error in a concatenated epoch, and training only on the synthetic set
makes the model forget the general domain. Mixing original and synthetic data *by weight* (e.g.
``general: 0.7, medication_synth: 0.3``) is what removes forgetting in practice (icefall's
fine-tune recipe muxes the original data back in for the same reason).

How the weights are realised
----------------------------
Every source is an *endless* stream: it is reshuffled (seeded) on every pass and cuts from the
second pass on get an ``_rep<k>`` id suffix, so a small synthetic set can be oversampled without
duplicate ids (and augmentation, applied after mixing, gives every copy its own draw). The stream
is epoch-aware: ``cuts.data.set_epoch(e)`` (called by the training sampler) reseeds the order and the
passes, so each epoch oversamples and undersamples different cuts, reproducibly. Two interleaving methods:

* ``"block"`` (default): the stream is cut into blocks of ``block_size`` cuts; each block gets its
  per-source counts by largest-remainder rounding of the cumulative target (the rounding error is
  carried into the next block), then the block is shuffled; the epoch's last block is shortened to
  end exactly at ``num_cuts``. The realised fraction therefore never drifts more than one cut per
  source from the target at any block boundary or at the end of the epoch, yet the order inside
  a block is random. This is what lets a short stage (a few thousand cuts) see the ratio it asked for.
* ``"mux"``: independent sampling-by-weight per cut (``lhotse.CutSet.mux`` over repeated sources);
  the realised ratio is right only in expectation (binomial noise, about ``sqrt(p(1-p)/N)``).

Epoch size: ``num_cuts`` if given; otherwise ``ceil(len(largest source) / its weight fraction)``,
i.e. the largest source is seen about once per epoch and the others are over- or under-sampled
according to their weights. Sources must therefore have a known length (eager CutSets, or lazy ones
that lhotse can count).
"""
from __future__ import annotations

import math
import random
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Literal, Optional

from lhotse import CutSet
from lhotse.utils import fastcopy

MixMethod = Literal["block", "mux"]


class MixingError(ValueError):
    """Bad mixing input (weights, sources); the message names the offending source."""


def mix_sources(
    sources: Dict[str, CutSet],
    weights: Dict[str, float],
    seed: int = 0,
    stop_early: bool = False,
    num_cuts: Optional[int] = None,
    method: MixMethod = "block",
    tag_key: Optional[str] = "mix_source",
    block_size: int = 64,
) -> CutSet:
    """Return a lazy CutSet of ``num_cuts`` cuts whose per-source fractions realise ``weights``.

    ``weights`` are relative (normalised here); a source with weight 0 is dropped. With
    ``stop_early=True`` the stream ends as soon as any source has been fully consumed once (no
    oversampling; the ratio then holds only up to that point). When ``tag_key`` is set, every
    supervision gets ``custom[tag_key] = <source name>`` so the trainer can log realised fractions
    per source rather than per domain.
    """
    fractions = normalized_weights(sources, weights)
    lengths = {name: _count_cuts(name, sources[name]) for name in fractions}
    if num_cuts is None:
        num_cuts = default_epoch_size(lengths, fractions)
    if num_cuts <= 0:
        raise MixingError(f"num_cuts must be positive, got {num_cuts}")
    if block_size <= 0:
        raise MixingError(f"block_size must be positive, got {block_size}")
    names = list(fractions)
    data = _MixedStream(
        sources={n: sources[n] for n in names},
        fractions=fractions,
        lengths=lengths,
        seed=seed,
        num_cuts=num_cuts,
        stop_early=stop_early,
        method=method,
        tag_key=tag_key,
        block_size=block_size,
    )
    return CutSet(data)


def normalized_weights(sources: Dict[str, CutSet], weights: Dict[str, float]) -> Dict[str, float]:
    """Validate ``weights`` against ``sources`` and return positive weights normalised to sum 1."""
    for name in weights:
        if name not in sources:
            raise MixingError(
                f"weight given for unknown source {name!r} (sources: {', '.join(sorted(sources)) or 'none'})"
            )
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or math.isnan(w) or w < 0:
            raise MixingError(f"source {name!r}: weight must be a non-negative number, got {w!r}")
    total = float(sum(weights.values()))
    if not total > 0:
        raise MixingError(f"weights must sum to > 0, got {total} ({weights})")
    return {name: float(w) / total for name, w in weights.items() if w > 0}


def default_epoch_size(lengths: Dict[str, int], fractions: Dict[str, float]) -> int:
    """Cuts per epoch such that the largest (positively weighted) source is seen about once."""
    largest = max(lengths, key=lambda n: (lengths[n], n))
    return max(1, math.ceil(lengths[largest] / fractions[largest]))


def realized_fractions(cuts: Iterable, key: str = "domain") -> Dict[str, float]:
    """Fraction of cuts per value of ``supervision.custom[key]`` (falls back to ``cut.custom[key]``).

    Cuts without the key are counted under ``"<missing>"`` so the fractions always sum to 1.
    """
    counts = source_counts(cuts, key)
    total = sum(counts.values())
    return {name: c / total for name, c in sorted(counts.items())} if total else {}


def source_counts(cuts: Iterable, key: str = "domain") -> Dict[str, int]:
    """Number of cuts per value of ``custom[key]`` (see :func:`realized_fractions`)."""
    counts: Counter = Counter()
    for cut in cuts:
        counts[_cut_tag(cut, key)] += 1
    return dict(counts)


def _cut_tag(cut, key: str) -> str:
    for sup in getattr(cut, "supervisions", None) or []:
        if sup.custom and key in sup.custom:
            return str(sup.custom[key])
    custom = getattr(cut, "custom", None)
    if custom and key in custom:
        return str(custom[key])
    return "<missing>"


def _count_cuts(name: str, cuts: CutSet) -> int:
    try:
        n = len(cuts)
    except TypeError:  # a lazy manifest of unknown length: count it once
        n = sum(1 for _ in cuts)
    if n == 0:
        raise MixingError(f"source {name!r} has no cuts")
    return n


class _MixedStream:
    """The lazy iterable behind :func:`mix_sources`; deterministic for a given (seed, epoch): resume-safe."""

    def __init__(
        self,
        sources: Dict[str, CutSet],
        fractions: Dict[str, float],
        lengths: Dict[str, int],
        seed: int,
        num_cuts: int,
        stop_early: bool,
        method: MixMethod,
        tag_key: Optional[str],
        block_size: int,
    ) -> None:
        if method not in ("block", "mux"):
            raise MixingError(f"method must be 'block' or 'mux', got {method!r}")
        self.sources = sources
        self.fractions = fractions
        self.lengths = lengths
        self.seed = seed
        self.num_cuts = num_cuts
        self.stop_early = stop_early
        self.method = method
        self.tag_key = tag_key
        self.block_size = block_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iteration's order and passes for ``epoch`` (an iterator keeps its epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_cuts

    def __iter__(self) -> Iterator:
        names = list(self.fractions)
        seed = f"{self.seed}:{self.epoch}"
        streams = {n: _endless(self.sources[n], seed, i) for i, n in enumerate(names)}
        consumed = Counter()
        order = self._source_order(names, seed)
        for _, name in zip(range(self.num_cuts), order):
            cut = next(streams[name])
            consumed[name] += 1
            if self.stop_early and consumed[name] > self.lengths[name]:
                return
            yield tag_cut(cut, self.tag_key, name) if self.tag_key else cut

    def _source_order(self, names: List[str], seed: str) -> Iterator[str]:
        rng = random.Random(f"mix-order:{seed}")
        weights = [self.fractions[n] for n in names]
        if self.method == "mux":
            while True:
                yield rng.choices(names, weights=weights, k=1)[0]
        emitted = Counter()
        total = 0
        while True:
            # The epoch's last block is cut to what is left, so the epoch as a whole is exact too.
            total = min(total + self.block_size, self.num_cuts) if total < self.num_cuts else total + self.block_size
            block = _block_counts(names, weights, total, emitted)
            order = [n for n in names for _ in range(block[n])]
            rng.shuffle(order)
            for n in order:
                emitted[n] += 1
                yield n


def _block_counts(names: List[str], weights: List[float], total: int, emitted: Counter) -> Dict[str, int]:
    """Largest-remainder allocation of the cumulative target ``total * w`` minus what was emitted."""
    targets = {n: total * w for n, w in zip(names, weights)}
    floors = {n: max(0, math.floor(targets[n]) - emitted[n]) for n in names}
    missing = total - sum(emitted.values()) - sum(floors.values())
    by_remainder = sorted(names, key=lambda n: targets[n] - math.floor(targets[n]), reverse=True)
    for n in by_remainder[: max(0, missing)]:
        floors[n] += 1
    return floors


def _endless(cuts: CutSet, seed: str, index: int) -> Iterator:
    """Yield the cuts of ``cuts`` forever, reshuffled each pass; passes >= 1 get ``_rep<k>`` ids."""
    rng = random.Random(f"mix-source:{seed}:{index}")
    eager = not cuts.is_lazy
    items = list(cuts) if eager else None
    epoch = 0
    while True:
        if eager:
            order = list(range(len(items)))
            rng.shuffle(order)
            source = (items[i] for i in order)
        else:
            source = iter(cuts.shuffle(random.Random(rng.random()), buffer_size=10000))
        for cut in source:
            yield cut if epoch == 0 else cut.with_id(f"{cut.id}_rep{epoch}")
        epoch += 1


def tag_cut(cut, key: str, name: str):
    """Copy ``cut`` with ``custom[key] = name`` on every supervision (the original is untouched).

    A MixedCut (e.g. speech + noise) carries its supervisions in its tracks, so each track is tagged.
    """
    from lhotse.cut import MixedCut

    if isinstance(cut, MixedCut):
        tracks = [fastcopy(t, cut=tag_cut(t.cut, key, name)) if t.cut.supervisions else t for t in cut.tracks]
        return fastcopy(cut, tracks=tracks)
    sups = [fastcopy(s, custom={**(s.custom or {}), key: name}) for s in cut.supervisions]
    return fastcopy(cut, supervisions=sups)
