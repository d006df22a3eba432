"""Log-mel features: one definition shared by training, decoding and export tests.

Two front ends, named by ``FeatureConfig.type``:

* ``fbank`` (default): Kaldi-style 80-dim fbank, :class:`lhotse.Fbank` (pure torch; no torchaudio),
  for encoders trained from scratch;
* ``whisper_fbank``: Whisper's log-mel (25 ms Hann window, 10 ms hop, Slaney mel filters, log10, clamp
  to the utterance maximum - 8, then (x + 4) / 4), :class:`lhotse.WhisperFbank`, for the pretrained
  Whisper encoder, which only understands the features it was trained on.

Precomputed features are stored with lilcom compression (``LilcomChunkyWriter``); on-the-fly
extraction uses the same extractor, so a model never sees two kinds of features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

from synthasr.config import ConfigError


FEATURE_TYPES = ("fbank", "whisper_fbank")


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
        if self.type not in FEATURE_TYPES:
            raise ConfigError(f"type: expected one of {list(FEATURE_TYPES)}, got {self.type!r}")
        if self.type == "whisper_fbank":
            fixed = dict(sampling_rate=16000, frame_shift=0.01, frame_length=0.025, dither=0.0)
            for key, value in fixed.items():
                if getattr(self, key) != value:
                    raise ConfigError(f"{key}: whisper_fbank is fixed at {value} (Whisper's front end), "
                                      f"got {getattr(self, key)}")
        if self.num_mel_bins <= 0:
            raise ConfigError(f"num_mel_bins: must be positive, got {self.num_mel_bins}")
        if self.sampling_rate <= 0:
            raise ConfigError(f"sampling_rate: must be positive, got {self.sampling_rate}")


def make_extractor(cfg: Optional[Union[FeatureConfig, Dict[str, Any]]] = None):
    """Return the lhotse extractor for ``cfg`` (a FeatureConfig or its dict form): ``Fbank`` or ``WhisperFbank``."""
    from lhotse import Fbank, FbankConfig

    if cfg is None:
        cfg = FeatureConfig()
    elif isinstance(cfg, dict):
        cfg = FeatureConfig(**cfg)
    cfg.validate()  # e.g. a whisper_fbank config asking for 8 kHz must fail, not be silently ignored
    if cfg.type == "whisper_fbank":
        return _whisper_fbank(cfg.num_mel_bins)
    return Fbank(
        FbankConfig(
            sampling_rate=cfg.sampling_rate,
            num_mel_bins=cfg.num_mel_bins,
            frame_shift=cfg.frame_shift,
            frame_length=cfg.frame_length,
            dither=cfg.dither,
        )
    )


def slaney_mel_filters(num_mel_bins: int, sampling_rate: int = 16000, n_fft: int = 400) -> "np.ndarray":
    """(num_mel_bins, n_fft // 2 + 1) triangular filters on the Slaney mel scale, area-normalised.

    The filter bank Whisper was trained with (what ``librosa.filters.mel`` returns by default);
    computed here so the Whisper front end does not need librosa (and numba) for one small matrix.
    """
    import numpy as np

    linear_step, log_start_hz = 200.0 / 3, 1000.0  # Slaney: linear below 1 kHz, logarithmic above
    log_start_mel, log_step = log_start_hz / linear_step, np.log(6.4) / 27.0

    def hz_to_mel(hz):
        hz = np.asarray(hz, dtype=np.float64)
        return np.where(hz < log_start_hz, hz / linear_step,
                        log_start_mel + np.log(np.maximum(hz, 1e-10) / log_start_hz) / log_step)

    def mel_to_hz(mel):
        return np.where(mel < log_start_mel, mel * linear_step,
                        log_start_hz * np.exp(log_step * (mel - log_start_mel)))

    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sampling_rate / 2), num_mel_bins + 2))
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sampling_rate)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - left) / (centre - left)
    falling = (right - bins[None, :]) / (right - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return (filters * (2.0 / (right - left))).astype(np.float32)


def _whisper_fbank(num_mel_bins: int):
    """lhotse's WhisperFbank with the filter bank computed here instead of by librosa (its only use)."""
    import torch
    from lhotse.features.whisper_fbank import WhisperFbank, WhisperFbankConfig

    class _WhisperFbank(WhisperFbank):
        def __init__(self, config: WhisperFbankConfig) -> None:
            # FeatureExtractor.__init__ only stores the config; WhisperFbank's own __init__ imports librosa.
            super(WhisperFbank, self).__init__(config=config)
            self.sampling_rate, self.hop_length, self.n_fft = 16000, 160, 400
            self.num_filters = config.num_filters
            self.filters = torch.from_numpy(slaney_mel_filters(config.num_filters, self.sampling_rate, self.n_fft))
            self.window = torch.hann_window(self.n_fft)

    return _WhisperFbank(WhisperFbankConfig(num_filters=num_mel_bins, device="cpu"))


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
    from lhotse import CutSet

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
            storage_type=feature_writer(cfg),
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


# lilcom stores values on a grid of 2**tick_power. lhotse's default (-5: 0.031) is fine for Kaldi fbank
# (natural-log energies spanning ~20 units) but is 9 % of a Whisper log-mel's spread (log10 / 4, std ~0.17);
# measured on tiny.en, it moved the encoder output by 3.4 % RMS, against 0.4 % at -8 (bench/whisper_encoder.py).
LILCOM_TICK_POWER = {"fbank": -5, "whisper_fbank": -8}


def feature_writer(cfg: FeatureConfig):
    """The lilcom writer class for ``cfg``'s feature type, at a precision suited to its value range."""
    import functools

    from lhotse import LilcomChunkyWriter

    return functools.partial(LilcomChunkyWriter, tick_power=LILCOM_TICK_POWER[cfg.type])


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
    kind = make_extractor(cfg).name  # "kaldi-fbank" / "whisper-fbank": same shape, different features
    if sorted(c.id for c in done) != sorted(c.id for c in cuts):
        log.warning("%s: cut ids differ from the input; recomputing features", manifest)
        return False
    for cut in done:
        feats = cut.features if cut.has_features else None
        if feats is None or feats.num_features != cfg.num_mel_bins or abs(feats.frame_shift - cfg.frame_shift) > 1e-9:
            log.warning("%s: cut %s lacks %d-bin features; recomputing", manifest, cut.id, cfg.num_mel_bins)
            return False
        if feats.type != kind:
            log.warning("%s: cut %s has %s features, the config asks for %s; recomputing", manifest, cut.id,
                        feats.type, kind)
            return False
        if not Path(feats.storage_path).exists():
            log.warning("%s: feature archive %s is missing; recomputing", manifest, feats.storage_path)
            return False
    return True


# --- Shar output (large scale: sequential reads; see synthasr.data.shar) ---------------------------
class _FbankForShar:
    """Per-cut step run on the Shar workers: features in memory (written lilcom-compressed by the shard
    writer at this feature type's tick power), audio that lived only in the input shard dropped."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self._extractor = None

    def __call__(self, cut):
        from lhotse.features.io import MemoryRawWriter

        if self._extractor is None:  # built once per worker process
            import torch

            torch.set_num_threads(1)  # see compute_fbank: one small FFT per frame, threads only contend
            self._extractor = make_extractor(self.cfg)
        if cut.sampling_rate != self.cfg.sampling_rate:
            cut = cut.resample(self.cfg.sampling_rate)
        cut = cut.compute_and_store_features(self._extractor, MemoryRawWriter())
        source = cut.recording.sources[0].type if cut.has_recording else "file"
        return cut if source in ("file", "url") else cut.drop_recording()

    def __getstate__(self):
        return {"cfg": self.cfg, "_extractor": None}


def compute_fbank_shar(
    cuts_or_shar: Union[str, Path, Any],
    shar_dir: Union[str, Path],
    feature_config: Optional[Union[FeatureConfig, Dict[str, Any]]] = None,
    shard_size: int = 1000,
    num_jobs: int = 1,
    executor: Any = None,
) -> Dict[str, Any]:
    """Features of a cut manifest (a CutSet) or of a Shar directory's audio into Shar ``shar_dir``
    (``cuts`` + ``features`` shards), one task per shard; resumable (complete shards are kept).

    From a Shar input, output shard ``k`` holds input shard ``k``'s cuts, read by the worker itself.
    """
    from synthasr.data.shar import convert_shar, write_shar

    cfg = _as_feature_config(feature_config)
    cfg.validate()
    fields = {"features": "lilcom"}
    common = dict(num_jobs=num_jobs, executor=executor, prepare=_FbankForShar(cfg),
                  tick_power=LILCOM_TICK_POWER[cfg.type])
    if isinstance(cuts_or_shar, (str, Path)):
        return convert_shar(cuts_or_shar, shar_dir, fields, read_fields=("recording",), **common)
    return write_shar(cuts_or_shar, shar_dir, shard_size=shard_size, fields=fields, **common)
