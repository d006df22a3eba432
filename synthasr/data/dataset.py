"""Batches for RNN-T training: lhotse samplers + a small map-style dataset.

A batch is ``{"features" (B,T,F) float, "feature_lens" (B,) int64, "texts", "cut_ids", "sources"}``,
sorted by decreasing length. Features are read from disk when every cut in the batch has them and
``on_the_fly_features`` is off; otherwise they are computed from audio with the one shared extractor
(audio-level augmentation produces cuts without features, so that path is needed for it).

Exact resume: every random choice made while building a batch (SpecAugment, lhotse audio transforms)
draws from RNGs seeded by ``(seed, epoch, batch_index)`` and restored afterwards, so a batch depends
only on its position in the epoch -- not on the worker that built it, nor on whether the run was
interrupted. The position in an epoch is a plain int; :class:`EpochBatches` fast-forwards to it.
Cut-level randomness (augmentation, weighted mixing) lives in epoch-aware lazy CutSets whose
``data.set_epoch`` :class:`EpochBatches` calls before each epoch, so it too depends only on the epoch.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from synthasr.data.features import FeatureConfig, make_extractor

Batch = Dict[str, Any]


class DatasetError(ValueError):
    """The cuts cannot be turned into a training batch (missing text, feature mismatch, ...)."""


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """A stable 63-bit seed for the batch at ``index`` of ``epoch`` (independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python/numpy/torch-CPU RNGs for a block and restore their previous states afterwards."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.default_generator.manual_seed(seed)  # CPU only: CUDA streams (dropout) stay untouched
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def make_spec_augment(params: Any) -> Optional[torch.nn.Module]:
    """``lhotse.dataset.SpecAugment`` from a config object; None when ``params.enabled`` is False."""
    if params is None or not getattr(params, "enabled", True):
        return None
    from lhotse.dataset import SpecAugment

    return SpecAugment(
        time_warp_factor=params.time_warp_factor,
        num_feature_masks=params.num_feature_masks,
        features_mask_size=params.features_mask_size,
        num_frame_masks=params.num_frame_masks,
        frames_mask_size=params.frames_mask_size,
        max_frames_mask_fraction=params.max_frames_mask_fraction,
        p=params.p,
    )


def cut_text(cut) -> str:
    """The transcript of a cut: its supervisions' texts in time order."""
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    texts = [s.text for s in sups if s.text]
    if not texts:
        raise DatasetError(f"cut {cut.id}: no supervision text")
    return " ".join(texts)


def cut_source(cut, source_key: str) -> str:
    """``supervision.custom[source_key]`` of the cut's first supervision, or 'unknown'."""
    for sup in cut.supervisions:
        custom = sup.custom or {}
        if source_key in custom:
            return str(custom[source_key])
    return "unknown"


class AsrDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches (a lhotse CutSet, optionally with its position).

    ``dataset[(epoch, index, cuts)]`` builds the batch under RNGs seeded from the position;
    ``dataset[cuts]`` (dev/eval) builds it without touching any RNG state beyond augmentation-free reads.
    """

    def __init__(
        self,
        feature_config: Optional[FeatureConfig] = None,
        on_the_fly_features: bool = False,
        spec_augment: Optional[torch.nn.Module] = None,
        seed: int = 0,
        source_key: str = "domain",
    ) -> None:
        from lhotse.dataset import OnTheFlyFeatures, PrecomputedFeatures

        self.feature_config = feature_config or FeatureConfig()
        self.force_on_the_fly = on_the_fly_features
        self.precomputed = PrecomputedFeatures()
        # Per-utterance extraction: lhotse's batched path zero-pads the audio, which changes the last
        # frame of shorter cuts; per-utterance matches compute_fbank and single-file decoding exactly.
        self.on_the_fly = OnTheFlyFeatures(make_extractor(self.feature_config), use_batch_extract=False)
        self.spec_augment = spec_augment
        self.seed = seed
        self.source_key = source_key

    def __getitem__(self, item: Union[Any, Tuple[int, int, Any]]) -> Batch:
        if isinstance(item, tuple):
            epoch, index, cuts = item
            with seeded_rngs(batch_seed(self.seed, epoch, index)):
                batch = self._make_batch(cuts)
            batch["position"] = (epoch, index)
            return batch
        return self._make_batch(item)

    def _make_batch(self, cuts) -> Batch:
        cuts = cuts.sort_by_duration(ascending=False)
        features, lens = self._features(cuts)
        if self.spec_augment is not None:
            segments = torch.stack(
                [torch.arange(len(lens), dtype=torch.int32), torch.zeros_like(lens, dtype=torch.int32),
                 lens.to(torch.int32)], dim=1,
            )
            features = self.spec_augment(features, supervision_segments=segments)
        return {
            "features": features,
            "feature_lens": lens.to(torch.int64),
            "texts": [cut_text(c) for c in cuts],
            "cut_ids": [c.id for c in cuts],
            "sources": [cut_source(c, self.source_key) for c in cuts],
        }

    def _features(self, cuts) -> Tuple[torch.Tensor, torch.Tensor]:
        use_stored = not self.force_on_the_fly and all(c.has_features for c in cuts)
        if use_stored:
            bad = next((c for c in cuts if c.num_features != self.feature_config.num_mel_bins), None)
            if bad is not None:
                raise DatasetError(
                    f"cut {bad.id}: stored features have {bad.num_features} bins, "
                    f"config expects {self.feature_config.num_mel_bins}"
                )
            out = self.precomputed(cuts)
        else:
            bad = next((c for c in cuts if not c.has_recording), None)
            if bad is not None:
                raise DatasetError(f"cut {bad.id}: neither features nor audio to compute them from")
            bad = next((c for c in cuts if c.sampling_rate != self.feature_config.sampling_rate), None)
            if bad is not None:
                raise DatasetError(
                    f"cut {bad.id}: sampling rate {bad.sampling_rate} != features.sampling_rate "
                    f"{self.feature_config.sampling_rate} (resample the cuts first)"
                )
            out = self.on_the_fly(cuts)
        features, lens = out[0], out[1]
        return features.to(torch.float32), torch.as_tensor(lens, dtype=torch.int64)


class EncoderOutDataset(AsrDataset):
    """Batches of a frozen encoder's stored outputs (``cut.encoder_out``, see
    :mod:`synthasr.data.encoder_cache`) instead of features:
    ``{"encoder_out" (B,T',D) float, "encoder_out_lens" (B,) int64, "texts", "cut_ids", "sources"}``.

    Same cut order and position seeding as :class:`AsrDataset`; no SpecAugment (it acts on features).
    """

    def __init__(self, seed: int = 0, source_key: str = "domain") -> None:
        super().__init__(spec_augment=None, seed=seed, source_key=source_key)

    def _make_batch(self, cuts) -> Batch:
        from synthasr.data.encoder_cache import load_encoder_out

        cuts = cuts.sort_by_duration(ascending=False)
        arrays = [torch.from_numpy(load_encoder_out(c)) for c in cuts]
        return {
            "encoder_out": torch.nn.utils.rnn.pad_sequence(arrays, batch_first=True),
            "encoder_out_lens": torch.tensor([a.shape[0] for a in arrays], dtype=torch.int64),
            "texts": [cut_text(c) for c in cuts],
            "cut_ids": [c.id for c in cuts],
            "sources": [cut_source(c, self.source_key) for c in cuts],
        }


def make_sampler(
    cuts,
    max_duration: float,
    shuffle: bool,
    seed: int,
    bucketing: bool = True,
    num_buckets: int = 10,
    drop_last: bool = False,
    world_size: int = 1,
    rank: int = 0,
):
    """A lhotse sampler over ``cuts`` (bucketed for training, simple for dev), sharded by rank."""
    from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
        if bucketing:
            sampler = DynamicBucketingSampler(
                cuts, max_duration=max_duration, num_buckets=num_buckets, shuffle=shuffle,
                drop_last=drop_last, seed=seed, world_size=world_size, rank=rank,
            )
        else:
            sampler = SimpleCutSampler(
                cuts, max_duration=max_duration, shuffle=shuffle, drop_last=drop_last, seed=seed,
                world_size=world_size, rank=rank,
            )
    setattr(sampler, _EPOCH_AWARE_CUTS, cuts if getattr(cuts, "is_lazy", False) else None)
    return sampler


_EPOCH_AWARE_CUTS = "_synthasr_epoch_aware_cuts"


def set_cuts_epoch(sampler, epoch: int) -> None:
    """Tell the epoch-aware streams in the CutSet behind a :func:`make_sampler` sampler which epoch comes next."""
    cuts = getattr(sampler, _EPOCH_AWARE_CUTS, None)
    if cuts is not None:
        set_epoch_deep(cuts, epoch)


def set_epoch_deep(cuts, epoch: int) -> None:
    """``set_epoch(epoch)`` on every epoch-aware stream inside a lazy CutSet, however deeply wrapped.

    Why deep: a Shar source (:class:`synthasr.data.shar.SharStream`, shard order per epoch) sits under
    lhotse maps (domain and source tagging), a mix or augmentation; calling only the outermost stream
    would leave its shard order to lhotse's iteration count, which a resumed run does not reproduce.
    Descends through lhotse's lazy wrappers (``iterator``/``iterators``) and our streams' inputs
    (``cuts``, ``sources``); an eager CutSet ends the walk. Setting the same epoch twice is harmless.
    """
    from lhotse import CutSet

    seen = set()
    stack = [cuts]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, CutSet):
            if node.is_lazy:
                stack.append(node.data)
            continue
        if hasattr(node, "set_epoch"):
            node.set_epoch(epoch)
        inner = getattr(node, "iterators", None)
        stack.extend(inner if isinstance(inner, (list, tuple)) else [])
        for attr in ("iterator", "cuts", "sources"):
            child = getattr(node, attr, None)
            children = list(child.values()) if isinstance(child, dict) else [child]
            stack.extend(c for c in children if isinstance(c, CutSet) or hasattr(c, "__iter__") and attr == "iterator")


class EpochBatches(torch.utils.data.Sampler):
    """Yields ``(epoch, index, CutSet)`` for one epoch of a lhotse sampler, skipping ``skip`` batches.

    The lhotse sampler's own ``state_dict`` counts batches the DataLoader *prefetched*, not the ones
    the trainer consumed; resuming from ``(epoch, batches consumed)`` and re-drawing the (cheap,
    metadata-only) sampler deterministically is exact regardless of prefetching.
    """

    def __init__(self, sampler, epoch: int, skip: int = 0) -> None:
        self.sampler = sampler
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[Tuple[int, int, Any]]:
        set_cuts_epoch(self.sampler, self.epoch)  # before the sampler reads its first cut
        self.sampler.set_epoch(self.epoch)
        self.sampler.allow_iter_to_reset_state()
        for index, cuts in enumerate(self.sampler):
            if index >= self.skip:
                yield self.epoch, index, cuts


def make_loader(dataset: AsrDataset, batches: torch.utils.data.Sampler, num_workers: int = 0):
    """A DataLoader over whole batches that never draws from the global torch RNG."""
    return torch.utils.data.DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )


def dev_loader(cuts, feature_config: FeatureConfig, max_duration: float, source_key: str = "domain"):
    """Unshuffled, unaugmented batches over ``cuts`` for validation loss."""
    sampler = make_sampler(cuts, max_duration=max_duration, shuffle=False, seed=0, bucketing=False)
    dataset = AsrDataset(feature_config=feature_config, spec_augment=None, source_key=source_key)
    return make_loader(dataset, sampler, num_workers=0)


def sample_loader(cuts, feature_config: FeatureConfig, max_duration: float, seed: int, source_key: str = "domain"):
    """Unaugmented batches over ``cuts`` in a seeded random order: its first batches are a reproducible
    random sample (e.g. for the EWC Fisher), not the manifest's first (often sorted) cuts."""
    sampler = make_sampler(cuts, max_duration=max_duration, shuffle=True, seed=seed, bucketing=False)
    sampler.set_epoch(0)
    dataset = AsrDataset(feature_config=feature_config, spec_augment=None, source_key=source_key)
    return make_loader(dataset, sampler, num_workers=0)
