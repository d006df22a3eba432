"""Audio input in one place: reading files, turning arrays into float samples, resampling.

There is ONE resampler in SynthASR: :func:`resample` applies lhotse's ``Resample`` transform, the
very transform that ``Recording.resample`` / ``CutSet.resample`` append at training time. Decoding,
TTS output, noise loading and piper's pitch shift therefore go through the same code as the training
features, whichever backend lhotse picks (scipy's ``resample_poly`` when torchaudio is absent,
lhotse's windowed-sinc kernel when it is present, sox with ``LHOTSE_RESAMPLING_BACKEND=sox``).

Errors are :class:`AudioError`: one line, naming the file (or ``<array>``).
"""
from __future__ import annotations

import math
import numbers
import struct
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import scipy.signal  # noqa: F401 - lhotse's Resample imports it on first use; here forked workers inherit it
from lhotse.augmentation import Resample

ARRAY_NAME = "<array>"
# RIFF data sizes that mean "length unknown" (a WAV streamed to a pipe): 0, and values near 2**31/2**32
# that espeak-ng, sox and ffmpeg write as placeholders.
_STREAMED_WAV_SIZE = 0x7FFF0000


class AudioError(ValueError):
    """An audio input cannot be read, is truncated or empty, or has an invalid rate; names it."""


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Mono ``samples`` at ``rate`` -> float32 at ``target_rate`` through lhotse's ``Resample``.

    Only the ratio matters, so ``resample(x, 160, 151)`` stretches by 151/160 whatever the real rate.
    """
    rate, target_rate = check_sample_rate(rate, "rate"), check_sample_rate(target_rate, "target_rate")
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise AudioError(f"resample expects 1-D samples, got shape {list(samples.shape)}")
    if rate == target_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    transform = Resample(source_sampling_rate=rate, target_sampling_rate=target_rate)
    out = transform(np.ascontiguousarray(samples, dtype=np.float32)[None, :])
    return np.asarray(out, dtype=np.float32).reshape(-1)


def check_sample_rate(value: object, name: str = "sample_rate") -> int:
    """A positive whole number of Hz as ``int`` (``16000.0`` is fine, ``16000.5`` is an error)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AudioError(f"{name} must be a positive whole number of Hz, got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float != math.floor(as_float) or as_float <= 0:
        raise AudioError(f"{name} must be a positive whole number of Hz, got {value!r}")
    return int(as_float)


def to_float32(array: np.ndarray, name: str = ARRAY_NAME) -> np.ndarray:
    """Samples as float32 in [-1, 1): integers are scaled by their dtype's range, as soundfile does
    for PCM files (int16 / 32768, uint8 centred on 128); floats are taken as they are."""
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind == "f":
        return array.astype(np.float32, copy=False)
    if kind in "iu":
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        offset = half if kind == "u" else 0.0
        return ((array.astype(np.float64) - offset) / half).astype(np.float32)
    raise AudioError(f"{name}: unsupported sample type {array.dtype} (give float or integer PCM samples)")


def to_mono(array: np.ndarray, name: str = ARRAY_NAME) -> np.ndarray:
    """(samples,), (channels, samples) or (samples, channels) -> (samples,); the smaller axis is channels."""
    if array.ndim == 1:
        return array
    if array.ndim != 2:
        raise AudioError(f"{name}: expected 1-D or 2-D audio, got shape {list(array.shape)}")
    channel_axis = 0 if array.shape[0] <= array.shape[1] else 1
    return array.mean(axis=channel_axis).astype(np.float32)


def read_audio(path: Path) -> Tuple[np.ndarray, int]:
    """Mono float32 samples and rate of any file soundfile reads; truncated files are errors."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: audio file is empty (0 bytes)")
    try:
        missing = _missing_wav_bytes(path)
    except OSError as e:  # unreadable (permissions, I/O error): the same one line as for soundfile
        raise AudioError(f"{path}: cannot read audio: {e.strerror or e}") from None
    if missing:
        raise AudioError(f"{path}: truncated audio file: the WAV header declares {missing[0]} bytes of "
                         f"samples but only {missing[1]} are present")
    try:
        with sf.SoundFile(str(path)) as f:
            declared = f.frames
            data = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError by format
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AudioError(f"{path}: cannot read audio: {first}") from None
    if len(data) < declared:
        raise AudioError(f"{path}: truncated audio file: header declares {declared} frames, "
                         f"only {len(data)} could be read")
    return data.mean(axis=1).astype(np.float32), int(rate)


def _missing_wav_bytes(path: Path) -> Optional[Tuple[int, int]]:
    """(declared, present) sample bytes of a RIFF/WAVE file whose data chunk is cut short, else None.

    libsndfile silently shortens such a file to what is present, so we read the chunk table ourselves.
    Streamed WAVs with a placeholder size are not truncated: their length is unknown by design.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                present = size - (pos + 8)
                if chunk_size == 0 or chunk_size >= _STREAMED_WAV_SIZE or chunk_size <= present:
                    return None
                return chunk_size, present
            pos += 8 + chunk_size + (chunk_size & 1)
    return None
