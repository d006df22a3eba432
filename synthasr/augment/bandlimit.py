"""Make clean synthetic speech sound less synthetic: telephone band-pass and mu-law codec noise.

Design choice: lazy lhotse ``AudioTransform`` subclasses, not pre-rendered FLAC variants.
lhotse registers every ``AudioTransform`` subclass by class name (``__init_subclass__``), so a
``@dataclass`` subclass serialises to ``{"name": "BandLimit", "kwargs": {...}}`` inside the
recording's ``transforms`` list exactly like lhotse's own ``Speed``/``Volume``; nothing is written
to disk and the effect composes with speed perturbation and reverberation. The one caveat of the
registry is that a process must ``import synthasr.augment`` before it deserialises a manifest
containing these transforms; ``synthasr.augment`` imports this module, and augmented cuts are
produced lazily in the training process anyway (never stored in manifests), so the caveat does not
bite. lhotse's own ``Narrowband``/``MuLawCodec`` need torchaudio, which is not available here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
from lhotse.augmentation.transform import AudioTransform
from lhotse.utils import Seconds, fastcopy


@dataclass
class BandLimit(AudioTransform):
    """Zero-phase Butterworth band-pass (``low_hz``..``high_hz``); 300-3400 Hz is the telephone band."""

    low_hz: float = 300.0
    high_hz: float = 3400.0
    order: int = 8

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        from scipy.signal import sosfilt, sosfiltfilt

        sos = _bandpass_sos(self.low_hz, self.high_hz, self.order, sampling_rate)
        x = np.asarray(samples, dtype=np.float64)
        padlen = 3 * (2 * len(sos) + 1)
        if x.shape[-1] > padlen:
            y = sosfiltfilt(sos, x, axis=-1)
        else:  # too short for the forward-backward pass: filter once
            y = sosfilt(sos, x, axis=-1)
        return y.astype(np.float32)

    def reverse_timestamps(
        self, offset: Seconds, duration: Optional[Seconds], sampling_rate: int
    ) -> Tuple[Seconds, Optional[Seconds]]:
        return offset, duration


@dataclass
class MuLaw(AudioTransform):
    """Mu-law companding + ``bits``-bit quantisation + expansion (G.711-like codec noise at 8 bits)."""

    bits: int = 8

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        mu = float(2**self.bits - 1)
        x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0)
        companded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
        levels = np.round((companded + 1.0) / 2.0 * mu)
        decoded = levels / mu * 2.0 - 1.0
        expanded = np.sign(decoded) * ((1.0 + mu) ** np.abs(decoded) - 1.0) / mu
        return expanded.astype(np.float32)

    def reverse_timestamps(
        self, offset: Seconds, duration: Optional[Seconds], sampling_rate: int
    ) -> Tuple[Seconds, Optional[Seconds]]:
        return offset, duration


@lru_cache(maxsize=16)
def _bandpass_sos(low_hz: float, high_hz: float, order: int, sampling_rate: int) -> np.ndarray:
    from scipy.signal import butter

    nyquist = sampling_rate / 2.0
    if not 0 < low_hz < high_hz:
        raise ValueError(f"band-limit: need 0 < low_hz < high_hz, got {low_hz}..{high_hz}")
    high = min(high_hz, 0.999 * nyquist)
    return butter(order, [low_hz, high], btype="bandpass", fs=sampling_rate, output="sos")


def add_recording_transform(cut, transform: AudioTransform, suffix: str):
    """Copy a MonoCut with ``transform`` appended to its recording's lazy transform chain."""
    recording = cut.recording
    transforms = list(recording.transforms or []) + [transform]
    new_recording = fastcopy(recording, id=f"{recording.id}_{suffix}", transforms=transforms)
    supervisions = [fastcopy(s, recording_id=new_recording.id) for s in cut.supervisions]
    return fastcopy(cut, id=f"{cut.id}_{suffix}", recording=new_recording, supervisions=supervisions, features=None)


def bandlimit_cut(cut, low_hz: float = 300.0, high_hz: float = 3400.0):
    """Lazily band-limit a cut's audio (features, if any, are dropped: they no longer match)."""
    return add_recording_transform(cut, BandLimit(low_hz=low_hz, high_hz=high_hz), "bl")


def mulaw_cut(cut, bits: int = 8):
    """Lazily apply mu-law codec quantisation to a cut's audio."""
    return add_recording_transform(cut, MuLaw(bits=bits), f"mu{bits}")
