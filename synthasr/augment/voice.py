"""Speaker- and prosody-like perturbations: vocal-tract-length warp, pitch shift, tempo without pitch.

TTS engines have a handful of voices; real patients and clinicians have many. These transforms
move the audio to voices the engines never produce, at training time and lazily (lhotse
``AudioTransform`` subclasses, serialised by class name like :mod:`synthasr.augment.bandlimit`):

* :class:`Vtlp` warps the frequency axis of the STFT with the piecewise-linear VTLP map of Jaitly &
  Hinton (2013): ``f -> alpha * f`` up to a boundary, then a straight line to Nyquist, so nothing is
  pushed past Nyquist. Harmonics and formants move together, as in VTLP on filterbanks. Phases are
  re-synthesised phase-vocoder style (warped instantaneous frequency, accumulated per frame) with
  identity phase locking around spectral peaks, so a tone at ``f`` comes out as a clean tone at
  ``alpha * f`` and a harmonic signal keeps coherent partials (less "phasy" than a plain vocoder).
* :class:`PitchShift` resamples by ``2^(s/12)`` and time-stretches back to the original length with
  WSOLA: pitch (and, as with any resampling shift, the formants) moves by ``s`` semitones, the
  duration and therefore the supervision times do not change.
* :class:`WsolaTempo` is the tempo-only change (duration changes, pitch does not): lhotse's own
  ``Tempo`` needs torchaudio's sox, which is not installable here, so this subclass keeps lhotse's
  bookkeeping (``cut.perturb_tempo`` rescales supervisions and ``reverse_timestamps``) and replaces
  only the signal processing.

Cost (numpy, one core): see ``docs/configuration.md#augmentconfig``; all are a few ms to tens of ms
per second of audio, i.e. small next to feature extraction and the model step.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Tuple

import numpy as np
from lhotse.augmentation.torchaudio import Tempo
from lhotse.augmentation.transform import AudioTransform
from lhotse.utils import Seconds, perturb_num_samples

from synthasr.augment.bandlimit import add_recording_transform
from synthasr.utils.audio import resample

N_FFT = 512
HOP = 128  # 75 % overlap: the Hann analysis/synthesis pair overlap-adds to a constant
VTLP_BOUNDARY = 0.3  # upper warp boundary as a fraction of the sampling rate (4.8 kHz at 16 kHz)


# --------------------------------------------------------------------------------------------- #
# Vocal-tract-length perturbation
# --------------------------------------------------------------------------------------------- #
def vtlp_warp(freqs: np.ndarray, alpha: float, sampling_rate: int) -> np.ndarray:
    """The piecewise-linear VTLP map (Hz -> Hz): ``alpha * f`` below the boundary, linear to Nyquist.

    The boundary ``f_hi * min(alpha, 1) / alpha`` keeps the map monotone and Nyquist fixed, so a
    warp never folds energy back (the reason for the kink instead of a plain scaling).
    """
    nyq = sampling_rate / 2.0
    f_hi = VTLP_BOUNDARY * sampling_rate
    knee_in = f_hi * min(alpha, 1.0) / alpha
    knee_out = f_hi * min(alpha, 1.0)
    freqs = np.asarray(freqs, dtype=np.float64)
    upper = nyq - (nyq - knee_out) / (nyq - knee_in) * (nyq - freqs)
    return np.where(freqs <= knee_in, alpha * freqs, upper)


def vtlp_unwarp(freqs: np.ndarray, alpha: float, sampling_rate: int) -> np.ndarray:
    """Inverse of :func:`vtlp_warp`: for each output frequency, the input frequency that lands there."""
    nyq = sampling_rate / 2.0
    f_hi = VTLP_BOUNDARY * sampling_rate
    knee_in = f_hi * min(alpha, 1.0) / alpha
    knee_out = f_hi * min(alpha, 1.0)
    freqs = np.asarray(freqs, dtype=np.float64)
    upper = nyq - (nyq - freqs) * (nyq - knee_in) / (nyq - knee_out)
    return np.where(freqs <= knee_out, freqs / alpha, upper)


def _stft(x: np.ndarray) -> np.ndarray:
    """Frames x bins complex STFT (periodic Hann, centred frames, zero-padded ends)."""
    window = np.hanning(N_FFT + 1)[:-1]
    padded = np.pad(x, (N_FFT // 2, N_FFT // 2 + HOP))
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    return np.fft.rfft(padded[idx] * window, axis=1)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    """Least-squares overlap-add inverse of :func:`_stft`, trimmed to ``length`` samples."""
    window = np.hanning(N_FFT + 1)[:-1]
    frames = np.fft.irfft(spec, n=N_FFT, axis=1) * window
    total = N_FFT + HOP * (len(frames) - 1)
    out = np.zeros(total)
    norm = np.zeros(total)
    for i, frame in enumerate(frames):  # a few hundred frames per second: cheap
        out[i * HOP : i * HOP + N_FFT] += frame
        norm[i * HOP : i * HOP + N_FFT] += window**2
    out = out / np.maximum(norm, 1e-8)
    return out[N_FFT // 2 : N_FFT // 2 + length]


def vtlp(x: np.ndarray, alpha: float, sampling_rate: int) -> np.ndarray:
    """Warp the spectrum of 1-D ``x`` by ``alpha`` (same length, same RMS)."""
    x = np.asarray(x, dtype=np.float64)
    if alpha == 1.0 or x.size == 0:
        return x.copy()
    spec = _stft(x)
    mag, phase = np.abs(spec), np.angle(spec)
    bin_hz = sampling_rate / N_FFT
    bins = np.arange(spec.shape[1])
    # Instantaneous frequency of every bin (Hz) from the frame-to-frame phase advance.
    expected = 2 * np.pi * HOP * bins / N_FFT
    advance = np.diff(phase, axis=0, prepend=phase[:1] - expected) - expected
    advance = (advance + np.pi) % (2 * np.pi) - np.pi
    inst_hz = (bins + advance * N_FFT / (2 * np.pi * HOP)) * bin_hz
    # Each output bin reads the input spectrum at its unwarped frequency.
    source = vtlp_unwarp(bins * bin_hz, alpha, sampling_rate) / bin_hz
    lo = np.clip(np.floor(source).astype(int), 0, len(bins) - 1)
    hi = np.clip(lo + 1, 0, len(bins) - 1)
    frac = source - lo
    out_mag = (1 - frac) * mag[:, lo] + frac * mag[:, hi]
    louder = np.where(mag[:, hi] > mag[:, lo], hi[None, :], lo[None, :])
    out_hz = vtlp_warp(np.take_along_axis(inst_hz, louder, axis=1), alpha, sampling_rate)
    free = phase[:1, lo] + np.cumsum(2 * np.pi * HOP * out_hz / sampling_rate, axis=0)
    # Identity phase locking (Laroche & Dolson): only spectral peaks run on their own accumulated
    # phase; the bins around a peak keep their input phase offsets to it, so each harmonic stays one
    # coherent partial instead of a smear of independently drifting bins (the "phasy" sound).
    peak = _nearest_peak(out_mag)
    near = np.clip(np.rint(source).astype(int), 0, len(bins) - 1)
    offset = phase[:, near] - np.take_along_axis(phase[:, near], peak, axis=1)
    out_phase = np.take_along_axis(free, peak, axis=1) + offset
    y = _istft(out_mag * np.exp(1j * out_phase), len(x))
    return _match_rms(y, x)


def _nearest_peak(mag: np.ndarray) -> np.ndarray:
    """(frames, bins) index of the closest local maximum of each frame's magnitude (ties: lower one)."""
    n = mag.shape[1]
    idx = np.broadcast_to(np.arange(n), mag.shape)
    left = np.concatenate([np.full((len(mag), 1), -np.inf), mag[:, :-1]], axis=1)
    right = np.concatenate([mag[:, 1:], np.full((len(mag), 1), -np.inf)], axis=1)
    is_peak = (mag > left) & (mag >= right)
    below = np.maximum.accumulate(np.where(is_peak, idx, -1), axis=1)
    above = np.minimum.accumulate(np.where(is_peak, idx, 2 * n)[:, ::-1], axis=1)[:, ::-1]
    use_above = (below < 0) | ((above < n) & (above - idx < idx - below))
    peak = np.where(use_above, above, below)
    return np.where((peak < 0) | (peak >= n), idx, peak)  # a frame without peaks (silence): itself


def _match_rms(y: np.ndarray, reference: np.ndarray) -> np.ndarray:
    ref = np.sqrt(np.mean(reference**2))
    cur = np.sqrt(np.mean(y**2))
    return y * (ref / cur) if cur > 1e-12 else y


# --------------------------------------------------------------------------------------------- #
# WSOLA time stretch, pitch shift, tempo
# --------------------------------------------------------------------------------------------- #
def wsola_stretch(x: np.ndarray, out_len: int, sampling_rate: int) -> np.ndarray:
    """Time-stretch 1-D ``x`` to ``out_len`` samples without changing its pitch (WSOLA).

    25 ms Hann frames at 50 % overlap; each frame is taken from within +-7.5 ms of its nominal input
    position where it best continues the previous frame (cross-correlation), which keeps periodic
    speech coherent without a phase vocoder's phasiness.
    """
    x = np.asarray(x, dtype=np.float64)
    if out_len <= 0:
        return np.zeros(0)
    if x.size == 0:
        return np.zeros(out_len)
    frame = 2 * max(8, int(round(0.0125 * sampling_rate)))
    hop = frame // 2
    tol = max(1, int(round(0.0075 * sampling_rate)))
    rate = len(x) / out_len
    window = np.hanning(frame + 1)[:-1]
    n_frames = out_len // hop + 2
    left = frame + tol
    right = left + frame + int(np.ceil((n_frames + 2) * hop * rate)) - len(x) + frame
    xp = np.pad(x, (left, max(right, left)))
    out = np.zeros(n_frames * hop + frame)
    norm = np.zeros_like(out)
    prev = None
    for m in range(n_frames):
        nominal = left + int(round(m * hop * rate)) - frame // 2
        if prev is None:
            start = nominal
        else:
            template = xp[prev + hop : prev + hop + frame]
            region = xp[nominal - tol : nominal + tol + frame]
            start = nominal - tol + int(np.argmax(np.correlate(region, template, mode="valid")))
        out[m * hop : m * hop + frame] += window * xp[start : start + frame]
        norm[m * hop : m * hop + frame] += window
        prev = start
    out = out / np.maximum(norm, 1e-3)
    return out[frame // 2 : frame // 2 + out_len]


def pitch_shift(x: np.ndarray, semitones: float, sampling_rate: int) -> np.ndarray:
    """Shift 1-D ``x`` by ``semitones`` keeping its length: resample by 2^(s/12), WSOLA back."""
    x = np.asarray(x, dtype=np.float64)
    if semitones == 0.0 or x.size == 0:
        return x.copy()
    ratio = Fraction(2.0 ** (semitones / 12.0)).limit_denominator(64)  # < 1e-4 relative pitch error
    shorter = resample(x.astype(np.float32), ratio.numerator, ratio.denominator).astype(np.float64)
    return wsola_stretch(shorter, len(x), sampling_rate)


def _per_channel(fn, samples: np.ndarray, *args) -> np.ndarray:
    """Apply a 1-D signal function to every channel of a (channels, samples) array."""
    samples = np.asarray(samples)
    if samples.ndim == 1:
        return fn(samples, *args).astype(np.float32)
    return np.stack([fn(channel, *args) for channel in samples]).astype(np.float32)


@dataclass
class Vtlp(AudioTransform):
    """Vocal-tract-length perturbation by warp factor ``alpha`` (length-preserving)."""

    alpha: float = 1.0

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        return _per_channel(vtlp, samples, self.alpha, int(sampling_rate))

    def reverse_timestamps(
        self, offset: Seconds, duration: Optional[Seconds], sampling_rate: int
    ) -> Tuple[Seconds, Optional[Seconds]]:
        return offset, duration


@dataclass
class PitchShift(AudioTransform):
    """Pitch shift by ``semitones`` without a tempo change (length-preserving)."""

    semitones: float = 0.0

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        return _per_channel(pitch_shift, samples, self.semitones, int(sampling_rate))

    def reverse_timestamps(
        self, offset: Seconds, duration: Optional[Seconds], sampling_rate: int
    ) -> Tuple[Seconds, Optional[Seconds]]:
        return offset, duration


@dataclass
class WsolaTempo(Tempo):
    """lhotse's ``Tempo`` (same timestamps, same output length) computed with WSOLA, no torchaudio."""

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        samples = np.asarray(samples)
        out_len = perturb_num_samples(samples.shape[-1], self.factor)
        return _per_channel(wsola_stretch, samples, out_len, int(sampling_rate))


def vtlp_cut(cut, alpha: float):
    """Lazily VTLP-warp a MonoCut's audio (id suffix ``_vt<alpha>``)."""
    return add_recording_transform(cut, Vtlp(alpha=alpha), f"vt{alpha}")


def pitch_cut(cut, semitones: float):
    """Lazily pitch-shift a MonoCut's audio (id suffix ``_ps<semitones>``)."""
    return add_recording_transform(cut, PitchShift(semitones=semitones), f"ps{semitones}")


def tempo_cut(cut, factor: float):
    """Lazily change a MonoCut's tempo (lhotse's bookkeeping, WSOLA signal path; id suffix ``_tp<f>``)."""
    if factor == 1.0:
        return cut
    out = cut.perturb_tempo(factor=factor, affix_id=True)
    transforms = list(out.recording.transforms)
    transforms[-1] = WsolaTempo(factor=factor)  # lhotse appended its torchaudio-backed Tempo
    out.recording.transforms = transforms
    return out
