"""Cut-level, lazy, seeded data augmentation for one data source (SpecAugment lives in the dataset).

:func:`augment_cuts` maps every cut through speed -> volume -> reverberation -> band-limit ->
mu-law -> additive noise. Every random choice comes from ``random.Random(f"{seed}:{cut.id}")``, so
the same cut is augmented identically no matter in which order or process it is seen (resumable
training sees exactly the same data), while oversampled copies (``_rep<k>`` ids) differ.
Augmented cuts drop precomputed features: they need on-the-fly feature extraction.
"""
from __future__ import annotations

import random
from typing import List, Optional

from lhotse import CutSet, RecordingSet
from lhotse.lazy import LazyMapper

from synthasr.augment.bandlimit import BandLimit, MuLaw, bandlimit_cut, mulaw_cut
from synthasr.augment.config import AugmentConfig
from synthasr.augment.noise import add_noise, make_noise
from synthasr.augment.reverb import make_rirs, reverb_cut
from synthasr.augment.speed import speed_cut, volume_cut

__all__ = [
    "AugmentConfig",
    "AugmentError",
    "BandLimit",
    "MuLaw",
    "augment_cuts",
    "augment_one",
    "make_noise",
    "make_rirs",
]


class AugmentError(ValueError):
    """Augmentation asked for something it was not given (noise without noise cuts, ...)."""


def augment_cuts(
    cuts: CutSet,
    cfg: AugmentConfig,
    seed: int,
    noise_cuts: Optional[CutSet] = None,
    rirs: Optional[RecordingSet] = None,
) -> CutSet:
    """Return a lazy CutSet with ``cfg`` applied per cut (identity config returns ``cuts`` itself)."""
    cfg.validate()
    if cfg.is_identity:
        return cuts
    if cfg.noise_prob > 0 and not noise_cuts:
        raise AugmentError("noise_prob > 0 but no noise cuts were given (see synthasr.augment.make_noise)")
    if cfg.reverb_prob > 0 and not rirs:
        raise AugmentError("reverb_prob > 0 but no RIRs were given (see synthasr.augment.make_rirs)")
    fn = _Augmenter(cfg, seed, list(noise_cuts) if noise_cuts else [], list(rirs) if rirs else [])
    return CutSet(LazyMapper(cuts, fn=fn))


class _Augmenter:
    """Picklable per-cut function (dataloader workers may receive it)."""

    def __init__(self, cfg: AugmentConfig, seed: int, noise: List, rirs: List) -> None:
        self.cfg = cfg
        self.seed = seed
        self.noise = noise
        self.rirs = rirs

    def __call__(self, cut):
        return augment_one(cut, self.cfg, random.Random(f"augment:{self.seed}:{cut.id}"), self.noise, self.rirs)


def augment_one(cut, cfg: AugmentConfig, rng: random.Random, noise: List, rirs: List):
    """Augment a single cut; all random draws happen up front in a fixed order."""
    speed = rng.choice(cfg.speed)
    do_volume, volume = rng.random() < cfg.volume_prob, rng.uniform(*cfg.volume_range)
    do_reverb, rir_index = rng.random() < cfg.reverb_prob, rng.randrange(max(1, len(rirs)))
    do_band = rng.random() < cfg.bandlimit_prob
    do_mulaw = rng.random() < cfg.mulaw_prob
    do_noise, noise_index = rng.random() < cfg.noise_prob, rng.randrange(max(1, len(noise)))
    snr = rng.uniform(*cfg.snr_range)

    if speed != 1.0 or do_volume or do_reverb or do_band or do_mulaw or do_noise:
        # Precomputed features describe the clean audio; an augmented cut is featurized on the fly.
        # (Keeping them also breaks noise mixing: lhotse would mix features with a featureless noise cut.)
        cut = cut.drop_features()
    cut = speed_cut(cut, speed)
    if do_volume:
        cut = volume_cut(cut, volume)
    if do_reverb:
        cut = reverb_cut(cut, rirs[rir_index])
    if do_band:
        cut = bandlimit_cut(_require_recording(cut, "band-limit"), cfg.band_hz[0], cfg.band_hz[1])
    if do_mulaw:
        cut = mulaw_cut(_require_recording(cut, "mu-law"), cfg.mulaw_bits)
    if do_noise:
        cut = add_noise(cut, noise[noise_index], snr, rng)
    return cut


def _require_recording(cut, what: str):
    if getattr(cut, "recording", None) is None:
        raise AugmentError(f"cut {cut.id}: {what} needs a single-recording cut (MonoCut), got {type(cut).__name__}")
    return cut
