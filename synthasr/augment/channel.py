"""Channel variety: a real telephone line (8 kHz, 300-3400 Hz, G.711 codec) and microphone colouring.

:class:`Telephone` differs from :class:`~synthasr.augment.bandlimit.BandLimit` /
:class:`~synthasr.augment.bandlimit.MuLaw` (kept as they are, at the native rate) in that it
round-trips through 8 kHz, as telephone audio that reaches a 16 kHz recogniser really does: the band
above 4 kHz is gone, not just attenuated, and the codec's companding noise is shaped like G.711's
(8-bit mu-law or A-law at 8 kHz). Band-pass and codec share one round trip when both are drawn.

:class:`MicEq` colours the spectrum like an unknown microphone/preamp: 1..n RBJ-cookbook biquads
(peaking, low shelf, high shelf) with random centre, gain and Q, drawn per cut by
:func:`draw_mic_eq` and stored in the transform, so the draw is serialisable and replayable. With
shelves at Q = 1/sqrt(2) (no overshoot) and peaking filters peaking exactly at their gain, the
response never exceeds the sum of the band gains in dB.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from lhotse.augmentation.transform import AudioTransform
from lhotse.utils import Seconds

from synthasr.augment.bandlimit import MuLaw, _bandpass_sos, add_recording_transform
from synthasr.utils.audio import resample

NARROWBAND_RATE = 8000
CODECS = ("mulaw", "alaw")
CODEC_SUFFIX = {"mulaw": "g711u", "alaw": "g711a"}
A_LAW = 87.6
EQ_KINDS = ("peak", "lowshelf", "highshelf")


def alaw_roundtrip(x: np.ndarray) -> np.ndarray:
    """A-law (A = 87.6) compression, 8-bit quantisation and expansion (G.711 A-law-like)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    ax = np.abs(x) * A_LAW
    norm = 1.0 + math.log(A_LAW)
    compressed = np.sign(x) * np.where(ax < 1.0, ax, 1.0 + np.log(np.maximum(ax, 1.0))) / norm
    levels = np.round((compressed + 1.0) / 2.0 * 255.0)
    decoded = levels / 255.0 * 2.0 - 1.0
    y = np.abs(decoded) * norm
    expanded = np.where(y < 1.0, y, np.exp(np.minimum(y, norm) - 1.0)) / A_LAW
    return np.sign(decoded) * expanded


def codec_roundtrip(x: np.ndarray, codec: str) -> np.ndarray:
    """8-bit G.711-like companding of 1-D ``x`` with ``codec`` ('mulaw' or 'alaw')."""
    if codec == "mulaw":
        return MuLaw(bits=8)(x, NARROWBAND_RATE).astype(np.float64)
    if codec == "alaw":
        return alaw_roundtrip(x)
    raise ValueError(f"codec: expected one of {list(CODECS)}, got {codec!r}")


def telephone(x: np.ndarray, sampling_rate: int, band: Optional[Tuple[float, float]], codec: str) -> np.ndarray:
    """1-D ``x`` through an 8 kHz line: optional band-pass, optional codec, back to ``sampling_rate``."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    narrow = resample(x.astype(np.float32), sampling_rate, NARROWBAND_RATE).astype(np.float64)
    if band is not None:
        from scipy.signal import sosfilt, sosfiltfilt

        sos = _bandpass_sos(float(band[0]), float(band[1]), 8, NARROWBAND_RATE)
        narrow = sosfiltfilt(sos, narrow) if len(narrow) > 3 * (2 * len(sos) + 1) else sosfilt(sos, narrow)
    if codec != "none":
        narrow = codec_roundtrip(narrow, codec)
    wide = resample(narrow.astype(np.float32), NARROWBAND_RATE, sampling_rate).astype(np.float64)
    return _fit_length(wide, len(x))


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


@dataclass
class Telephone(AudioTransform):
    """8 kHz round trip with an optional ``low_hz``..``high_hz`` band-pass and a G.711-like ``codec``.

    ``band=False`` with a codec is a narrowband codec channel without the telephone band edges.
    """

    band: bool = True
    low_hz: float = 300.0
    high_hz: float = 3400.0
    codec: str = "none"

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        limits = (self.low_hz, self.high_hz) if self.band else None
        samples = np.asarray(samples)
        rows = samples if samples.ndim > 1 else samples[None, :]
        out = np.stack([telephone(row, int(sampling_rate), limits, self.codec) for row in rows])
        return (out if samples.ndim > 1 else out[0]).astype(np.float32)

    def reverse_timestamps(
        self, offset: Seconds, duration: Optional[Seconds], sampling_rate: int
    ) -> Tuple[Seconds, Optional[Seconds]]:
        return offset, duration


def biquad(kind: str, freq_hz: float, gain_db: float, q: float, sampling_rate: int) -> np.ndarray:
    """One RBJ-cookbook biquad as a normalised second-order section ``[b0, b1, b2, 1, a1, a2]``."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * min(freq_hz, 0.45 * sampling_rate) / sampling_rate
    cos_w, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
    if kind == "peak":
        b = [1 + alpha * a, -2 * cos_w, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cos_w, 1 - alpha / a]
    elif kind in ("lowshelf", "highshelf"):
        sign = 1.0 if kind == "lowshelf" else -1.0
        root = 2.0 * math.sqrt(a) * alpha
        b = [a * ((a + 1) - sign * (a - 1) * cos_w + root), sign * 2 * a * ((a - 1) - sign * (a + 1) * cos_w),
             a * ((a + 1) - sign * (a - 1) * cos_w - root)]
        den = [(a + 1) + sign * (a - 1) * cos_w + root, -sign * 2 * ((a - 1) + sign * (a + 1) * cos_w),
               (a + 1) + sign * (a - 1) * cos_w - root]
    else:
        raise ValueError(f"mic EQ: unknown filter kind {kind!r} (expected one of {list(EQ_KINDS)})")
    return np.array(b + den) / den[0]


def eq_sos(bands: Sequence[Sequence], sampling_rate: int) -> np.ndarray:
    """Second-order sections of a list of ``[kind, freq_hz, gain_db, q]`` bands."""
    return np.stack([biquad(str(k), float(f), float(g), float(q), sampling_rate) for k, f, g, q in bands])


def draw_mic_eq(rng: random.Random, max_bands: int, max_gain_db: float) -> List[list]:
    """1..``max_bands`` random bands: shelves below 400 Hz / above 2 kHz, peaks 150 Hz-6 kHz, +-gain.

    Frequencies and peak Q are log-uniform (perceptually even); values are rounded so that the
    transform (and its manifest form) is compact and compares equal after a round trip.
    """
    bands = []
    for _ in range(rng.randint(1, max_bands)):
        kind = rng.choice(EQ_KINDS)
        low, high = {"peak": (150.0, 6000.0), "lowshelf": (80.0, 400.0), "highshelf": (2000.0, 7000.0)}[kind]
        freq = math.exp(rng.uniform(math.log(low), math.log(high)))
        gain = rng.uniform(-max_gain_db, max_gain_db)
        q = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # drawn for every kind: fixed consumption
        q = q if kind == "peak" else 1.0 / math.sqrt(2.0)
        bands.append([kind, round(freq, 1), round(gain, 2), round(q, 3)])
    return bands


@dataclass
class MicEq(AudioTransform):
    """Random-microphone colouring: a cascade of biquads ``[[kind, freq_hz, gain_db, q], ...]``."""

    bands: List[list] = field(default_factory=list)

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        from scipy.signal import sosfilt

        if not self.bands or np.asarray(samples).shape[-1] == 0:  # scipy cannot filter an empty array
            return np.asarray(samples, dtype=np.float32)
        sos = eq_sos(self.bands, int(sampling_rate))
        return sosfilt(sos, np.asarray(samples, dtype=np.float64), axis=-1).astype(np.float32)

    def reverse_timestamps(
        self, offset: Seconds, duration: Optional[Seconds], sampling_rate: int
    ) -> Tuple[Seconds, Optional[Seconds]]:
        return offset, duration


def telephone_cut(cut, band: Optional[Sequence[float]], codec: str = "none"):
    """Lazily send a MonoCut through an 8 kHz line (``band`` None: codec only); suffix ``_tel``/``_g711u``/..."""
    suffixes = (["tel"] if band is not None else []) + ([CODEC_SUFFIX[codec]] if codec != "none" else [])
    low, high = (band if band is not None else (300.0, 3400.0))
    transform = Telephone(band=band is not None, low_hz=float(low), high_hz=float(high), codec=codec)
    return add_recording_transform(cut, transform, "_".join(suffixes))


def mic_eq_cut(cut, bands: List[list]):
    """Lazily colour a MonoCut's audio with ``bands`` (id suffix ``_eq``)."""
    return add_recording_transform(cut, MicEq(bands=bands), "eq")
