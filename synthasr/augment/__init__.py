"""Cut-level, lazy, seeded data augmentation (SpecAugment lives in the dataset).

:func:`augment_cuts` (one config) and :func:`augment_sources` (one config per mixing source) map every
cut through speed -> tempo -> pitch -> VTLP -> volume -> reverberation -> microphone EQ -> band-limit
-> mu-law -> telephone line/codec -> additive noise, i.e. roughly the physical order talker -> room ->
microphone -> channel (noise stays last: lhotse mixes it into a MixedCut, after which no recording
transform can be appended). Every random choice comes from an RNG seeded by
``(seed, epoch, source, cut id)``:

* the same cut in the same epoch is augmented identically in any order, process or rank, so a
  resumed run sees exactly the data it would have seen (the epoch is a saved integer);
* a new epoch draws fresh speed/noise/room for every cut: the returned CutSet is *epoch-aware*
  (``cuts.data.set_epoch(e)``; the training sampler calls it, see ``synthasr.data.dataset``);
* oversampled copies of a cut (``_rep<k>`` ids from ``synthasr.data.mixing``) differ from each
  other, because augmentation is applied *after* mixing and the copy index is part of the id.

Augmented cuts drop precomputed features: they need on-the-fly feature extraction.
"""
from __future__ import annotations

import random
from typing import Dict, Iterator, List, Mapping, Optional

from lhotse import CutSet, RecordingSet

from synthasr.augment.bandlimit import BandLimit, MuLaw, bandlimit_cut, mulaw_cut
from synthasr.augment.channel import MicEq, Telephone, draw_mic_eq, mic_eq_cut, telephone_cut
from synthasr.augment.config import AugmentConfig
from synthasr.augment.noise import add_noise, make_noise
from synthasr.augment.reverb import make_rirs, reverb_cut
from synthasr.augment.speed import speed_cut, volume_cut
from synthasr.augment.voice import PitchShift, Vtlp, WsolaTempo, pitch_cut, tempo_cut, vtlp_cut

__all__ = [
    "AugmentConfig",
    "AugmentError",
    "BandLimit",
    "MicEq",
    "MuLaw",
    "PitchShift",
    "Telephone",
    "Vtlp",
    "WsolaTempo",
    "augment_cuts",
    "augment_one",
    "augment_sources",
    "augmentation_rng",
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
    """Return a lazy, epoch-aware CutSet with ``cfg`` applied per cut (identity config returns ``cuts``)."""
    cfg.validate()
    if cfg.is_identity:
        return cuts
    _check_assets({"": cfg}, noise_cuts, rirs)
    return CutSet(AugmentedStream(cuts, {"": cfg}, seed, _as_list(noise_cuts), _as_list(rirs)))


def augment_sources(
    cuts: CutSet,
    configs: Mapping[str, AugmentConfig],
    seed: int,
    source_key: str,
    noise_cuts: Optional[CutSet] = None,
    rirs: Optional[RecordingSet] = None,
) -> CutSet:
    """Augment a mixed stream: each cut gets the config of its source (``supervision.custom[source_key]``).

    Cuts of a source without a config (or with an identity one) pass through unchanged. Returns ``cuts``
    itself when nothing can change.
    """
    active = {}
    for name, cfg in configs.items():
        cfg.validate()
        if not cfg.is_identity:
            active[name] = cfg
    if not active:
        return cuts
    _check_assets(active, noise_cuts, rirs)
    return CutSet(AugmentedStream(cuts, active, seed, _as_list(noise_cuts), _as_list(rirs), source_key=source_key))


def augmentation_rng(seed: int, epoch: int, source: str, cut_id: str) -> random.Random:
    """The RNG for one cut in one epoch (string seeding: stable across processes and PYTHONHASHSEED)."""
    return random.Random(f"augment:{seed}:{epoch}:{source}:{cut_id}")


def _as_list(items) -> List:
    return list(items) if items else []


def _check_assets(configs: Mapping[str, AugmentConfig], noise_cuts, rirs) -> None:
    if any(c.noise_prob > 0 for c in configs.values()) and not noise_cuts:
        raise AugmentError("noise_prob > 0 but no noise cuts were given (see synthasr.augment.make_noise)")
    if any(c.reverb_prob > 0 for c in configs.values()) and not rirs:
        raise AugmentError("reverb_prob > 0 but no RIRs were given (see synthasr.augment.make_rirs)")


class AugmentedStream:
    """The lazy, picklable iterable behind :func:`augment_cuts` / :func:`augment_sources`.

    ``set_epoch`` selects the epoch whose random draws the next iteration uses (and is forwarded to an
    epoch-aware input, e.g. a mixed stream); an iterator keeps the epoch it started with.
    """

    def __init__(
        self,
        cuts: CutSet,
        configs: Mapping[str, AugmentConfig],
        seed: int,
        noise: List,
        rirs: List,
        source_key: Optional[str] = None,
    ) -> None:
        self.cuts = cuts
        self.configs: Dict[str, AugmentConfig] = dict(configs)
        self.seed = seed
        self.noise = noise
        self.rirs = rirs
        self.source_key = source_key
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        inner = getattr(self.cuts, "data", None)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.cuts)

    def __iter__(self) -> Iterator:
        epoch = self.epoch
        for cut in self.cuts:
            source = self._source(cut)
            cfg = self.configs.get(source)
            if cfg is None:
                yield cut
                continue
            rng = augmentation_rng(self.seed, epoch, source, cut.id)
            yield augment_one(cut, cfg, rng, self.noise, self.rirs)

    def _source(self, cut) -> str:
        if self.source_key is None:
            return ""
        for sup in cut.supervisions:
            if sup.custom and self.source_key in sup.custom:
                return str(sup.custom[self.source_key])
        return ""


def augment_one(cut, cfg: AugmentConfig, rng: random.Random, noise: List, rirs: List):
    """Augment a single cut; all random draws happen up front in a fixed order.

    The transfer draws (voice/channel) come after all the older ones and only when a transfer
    probability is non-zero: configs without them consume the same random numbers as before, so
    their augmented audio is unchanged byte for byte.
    """
    speed = rng.choice(cfg.speed)
    do_volume, volume = rng.random() < cfg.volume_prob, rng.uniform(*cfg.volume_range)
    do_reverb, rir_index = rng.random() < cfg.reverb_prob, rng.randrange(max(1, len(rirs)))
    do_band = rng.random() < cfg.bandlimit_prob
    do_mulaw = rng.random() < cfg.mulaw_prob
    do_noise, noise_index = rng.random() < cfg.noise_prob, rng.randrange(max(1, len(noise)))
    snr = rng.uniform(*cfg.snr_range)
    transfer = draw_transfer(cfg, rng) if cfg.uses_transfer else {}

    if speed != 1.0 or do_volume or do_reverb or do_band or do_mulaw or do_noise or transfer:
        # Precomputed features describe the clean audio; an augmented cut is featurized on the fly.
        # (Keeping them also breaks noise mixing: lhotse would mix features with a featureless noise cut.)
        cut = cut.drop_features()
    cut = speed_cut(cut, speed)
    if "tempo" in transfer:
        cut = tempo_cut(_require_recording(cut, "tempo"), transfer["tempo"])
    if "pitch" in transfer:
        cut = pitch_cut(_require_recording(cut, "pitch shift"), transfer["pitch"])
    if "vtlp" in transfer:
        cut = vtlp_cut(_require_recording(cut, "VTLP"), transfer["vtlp"])
    if do_volume:
        cut = volume_cut(cut, volume)
    if do_reverb:
        cut = reverb_cut(cut, rirs[rir_index])
    if "mic_eq" in transfer:
        cut = mic_eq_cut(_require_recording(cut, "microphone EQ"), transfer["mic_eq"])
    if do_band:
        cut = bandlimit_cut(_require_recording(cut, "band-limit"), cfg.band_hz[0], cfg.band_hz[1])
    if do_mulaw:
        cut = mulaw_cut(_require_recording(cut, "mu-law"), cfg.mulaw_bits)
    if "telephone" in transfer or "codec" in transfer:  # one 8 kHz round trip for both
        cut = telephone_cut(_require_recording(cut, "telephone/codec"), transfer.get("telephone"),
                            transfer.get("codec", "none"))
    if do_noise:
        cut = add_noise(cut, noise[noise_index], snr, rng)
    return cut


def draw_transfer(cfg: AugmentConfig, rng: random.Random) -> Dict[str, object]:
    """The voice/channel draws for one cut: ``{name: parameter}`` for each transform that fires.

    Every decision and value is drawn whether or not it fires (fixed consumption), so changing one
    probability does not reshuffle the other transforms' draws. Values are rounded: they name the
    cut (``_vt1.047``) and are stored in the manifest form of the transform.
    """
    draws = {
        "vtlp": (rng.random() < cfg.vtlp_prob, round(rng.uniform(*cfg.vtlp_range), 3)),
        "pitch": (rng.random() < cfg.pitch_prob, round(rng.uniform(*cfg.pitch_semitones), 2)),
        "tempo": (rng.random() < cfg.tempo_prob, round(rng.uniform(*cfg.tempo_range), 3)),
        "mic_eq": (rng.random() < cfg.mic_eq_prob, draw_mic_eq(rng, cfg.mic_eq_bands, cfg.mic_eq_gain_db)),
        "telephone": (rng.random() < cfg.telephone_prob, list(cfg.telephone_band_hz)),
        "codec": (rng.random() < cfg.codec_prob, rng.choice(cfg.codecs)),
    }
    identity = {"vtlp": 1.0, "pitch": 0.0, "tempo": 1.0}
    return {k: v for k, (fire, v) in draws.items() if fire and identity.get(k) != v}


def _require_recording(cut, what: str):
    if getattr(cut, "recording", None) is None:
        raise AugmentError(f"cut {cut.id}: {what} needs a single-recording cut (MonoCut), got {type(cut).__name__}")
    return cut
