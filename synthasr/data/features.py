"""80-dim log-mel fbank features: one definition shared by training, decoding and export tests.

Extraction uses :class:`lhotse.Fbank` (pure torch; no torchaudio). Precomputed features are stored
with lilcom compression (``LilcomChunkyWriter``); on-the-fly extraction uses the same extractor, so a
model never sees two kinds of features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

from synthasr.config import ConfigError


@dataclass
class FeatureConfig:
    """What the model was trained on; stored in every checkpoint so decode() recomputes it exactly."""

    type: str = "fbank"
    num_mel_bins: int = 80
    sampling_rate: int = 16000
    frame_shift: float = 0.01
    frame_length: float = 0.025
    dither: float = 0.0

    def validate(self) -> None:
        if self.type != "fbank":
            raise ConfigError(f"type: only 'fbank' is supported, got {self.type!r}")
        if self.num_mel_bins <= 0:
            raise ConfigError(f"num_mel_bins: must be positive, got {self.num_mel_bins}")
        if self.sampling_rate <= 0:
            raise ConfigError(f"sampling_rate: must be positive, got {self.sampling_rate}")


def make_extractor(cfg: Optional[Union[FeatureConfig, Dict[str, Any]]] = None):
    """Return a ``lhotse.Fbank`` configured from ``cfg`` (a FeatureConfig or its dict form)."""
    from lhotse import Fbank, FbankConfig

    if cfg is None:
        cfg = FeatureConfig()
    elif isinstance(cfg, dict):
        cfg = FeatureConfig(**cfg)
    return Fbank(
        FbankConfig(
            sampling_rate=cfg.sampling_rate,
            num_mel_bins=cfg.num_mel_bins,
            frame_shift=cfg.frame_shift,
            frame_length=cfg.frame_length,
            dither=cfg.dither,
        )
    )


class FeatureComputationError(RuntimeError):
    """Feature extraction could not produce a complete feature manifest."""


def fbank_manifest_path(out_dir: Union[str, Path], prefix: str) -> Path:
    """Where :func:`compute_fbank` writes the cut manifest with features attached."""
    return Path(out_dir) / f"{prefix}_cuts_fbank.jsonl.gz"


MIN_CUTS_PER_JOB = 20000


def compute_fbank(
    cuts,
    out_dir: Union[str, Path],
    prefix: str,
    num_jobs: int = 1,
    feature_config: Optional[Union[FeatureConfig, Dict[str, Any]]] = None,
):
    """Extract fbank for ``cuts`` into lilcom archives and write ``<prefix>_cuts_fbank.jsonl.gz``.

    Resumable: when the manifest already exists and covers exactly these cuts with features of the
    configured shape whose archives still exist, it is loaded and returned without recomputing.
    The manifest is written atomically after all features are stored, so its presence means the
    archives are complete.
    """
    from lhotse import CutSet, LilcomChunkyWriter

    cfg = _as_feature_config(feature_config)
    out_dir = Path(out_dir)
    manifest = fbank_manifest_path(out_dir, prefix)
    if manifest.is_file():
        done = CutSet.from_file(manifest)
        if _is_complete(done, cuts, cfg, manifest):
            return done
    out_dir.mkdir(parents=True, exist_ok=True)
    # Features are stored on the whole cut; the resampling is lazy and exact (lhotse).
    cuts = cuts.resample(cfg.sampling_rate) if _needs_resample(cuts, cfg) else cuts
    import torch

    # One utterance's fbank is a few small FFTs: intra-op threads only add contention (measured: 16
    # utterances took 0.16 s on 1 thread, 3.7 s on 2 threads with the other core busy). Worker
    # processes only pay off for very large sets: one process stores ~180 utterances/s here, while
    # lhotse's process pool took minutes for 6000 (spawn + per-worker imports + chunk merging).
    num_jobs = max(1, min(num_jobs, len(cuts) // MIN_CUTS_PER_JOB))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with_feats = cuts.compute_and_store_features(
            extractor=make_extractor(cfg),
            storage_path=out_dir / f"{prefix}_feats",
            num_jobs=num_jobs,
            storage_type=LilcomChunkyWriter,
            progress_bar=True,
        )
    finally:
        torch.set_num_threads(threads)
    if len(with_feats) != len(cuts):
        raise FeatureComputationError(
            f"{manifest}: features computed for {len(with_feats)} of {len(cuts)} cuts (unreadable audio?)"
        )
    from synthasr.utils.io import atomic_path

    with atomic_path(manifest) as tmp:
        with_feats.to_file(tmp)
    return with_feats


def _as_feature_config(cfg: Optional[Union[FeatureConfig, Dict[str, Any]]]) -> FeatureConfig:
    if cfg is None:
        return FeatureConfig()
    return FeatureConfig(**cfg) if isinstance(cfg, dict) else cfg


def _needs_resample(cuts, cfg: FeatureConfig) -> bool:
    return any(c.sampling_rate != cfg.sampling_rate for c in cuts)


def _is_complete(done, cuts, cfg: FeatureConfig, manifest: Path) -> bool:
    """True when ``done`` holds features of the right shape for exactly the ids of ``cuts``."""
    import logging

    log = logging.getLogger(__name__)
    if sorted(c.id for c in done) != sorted(c.id for c in cuts):
        log.warning("%s: cut ids differ from the input; recomputing features", manifest)
        return False
    for cut in done:
        feats = cut.features if cut.has_features else None
        if feats is None or feats.num_features != cfg.num_mel_bins or abs(feats.frame_shift - cfg.frame_shift) > 1e-9:
            log.warning("%s: cut %s lacks %d-bin features; recomputing", manifest, cut.id, cfg.num_mel_bins)
            return False
        if not Path(feats.storage_path).exists():
            log.warning("%s: feature archive %s is missing; recomputing", manifest, feats.storage_path)
            return False
    return True
