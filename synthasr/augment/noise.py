"""Noise for additive-noise augmentation, built offline (no MUSAN-like corpus is available).

Three kinds, all written as 16 kHz FLAC recordings with a cut manifest (``noise_cuts.jsonl.gz``;
``custom["noise_type"]`` says which kind):

* coloured noise (white / pink / brown): Gaussian noise shaped in the frequency domain by
  ``1 / f^(alpha/2)`` (alpha 0, 1, 2), i.e. a power spectrum falling 0 / 3 / 6 dB per octave;
* babble: 3-6 "talkers", each a back-to-back chain of other utterances (typically TTS speech from
  ``babble_from``), summed at equal level with random start offsets;
* real ambient noise: the crowd recordings packaged in Debian ``etw-data``
  (``/usr/share/games/etw/crowd/*.wav``, 8-bit 22.05 kHz), resampled to 16 kHz.

Noise is mixed with lhotse's ``cut.mix(noise, snr=...)``; lhotse scales the noise so that
``10 log10(P_speech / P_noise)`` equals the requested SNR, with powers averaged over each track.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from lhotse import CutSet, Recording
from lhotse.utils import fastcopy

from synthasr.utils.io import atomic_path, atomic_write

SAMPLE_RATE = 16000
ETW_NOISE_GLOB = "/usr/share/games/etw/crowd/*.wav"
COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


class NoiseError(RuntimeError):
    """Noise generation failed (e.g. babble requested without enough source utterances)."""


def coloured_noise(num_samples: int, alpha: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as ``1/f^alpha`` (below 20 Hz held flat); unit RMS."""
    white = rng.standard_normal(num_samples)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(num_samples, d=1.0 / sample_rate)
    shaping = 1.0 / np.maximum(freqs, 20.0) ** (alpha / 2.0)
    shaped = np.fft.irfft(spectrum * shaping, n=num_samples)
    shaped -= shaped.mean()
    return shaped / (np.sqrt(np.mean(shaped**2)) + 1e-12)


def babble(utterances: Sequence[np.ndarray], num_samples: int, rng: random.Random, talkers: Tuple[int, int] = (3, 6)) -> np.ndarray:
    """Sum of ``talkers`` equal-level chains of random utterances at random offsets; unit RMS."""
    if len(utterances) < talkers[0]:
        raise NoiseError(f"babble needs at least {talkers[0]} utterances, got {len(utterances)}")
    out = np.zeros(num_samples)
    for _ in range(rng.randint(*talkers)):
        chain = np.zeros(num_samples + SAMPLE_RATE)
        pos = -rng.randrange(0, SAMPLE_RATE)  # random start offset (may begin mid-utterance)
        while pos < num_samples:
            utt = utterances[rng.randrange(len(utterances))]
            utt = utt / (np.sqrt(np.mean(utt**2)) + 1e-12)
            start = max(pos, 0)
            piece = utt[start - pos :][: len(chain) - start]
            chain[start : start + len(piece)] += piece
            pos += len(utt) + rng.randrange(0, SAMPLE_RATE // 5)
        out += chain[:num_samples]
    out -= out.mean()
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def load_real_noise(path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a (possibly 8-bit, 22.05 kHz) wav as mono float at ``sample_rate``, DC removed, unit RMS."""
    import soundfile as sf

    from synthasr.utils.audio import resample

    audio, sr = sf.read(str(path), dtype="float64", always_2d=True)
    audio = resample(audio.mean(axis=1), sr, sample_rate).astype(np.float64)
    audio = audio - audio.mean()
    return audio / (np.sqrt(np.mean(audio**2)) + 1e-12)


def make_noise(
    out_dir,
    n: int,
    seed: int = 0,
    babble_from: Optional[CutSet] = None,
    duration: float = 20.0,
    real_noise_glob: Optional[str] = ETW_NOISE_GLOB,
    max_babble_utterances: int = 200,
) -> CutSet:
    """Write ``n`` synthetic noises (coloured + babble, round-robin) plus all real noises; return cuts.

    Babble is only made when ``babble_from`` is given. The result is cached in ``out_dir`` keyed by
    the parameters (re-running returns the stored manifest).
    """
    from glob import glob

    out_dir = Path(out_dir)
    manifest = out_dir / "noise_cuts.jsonl.gz"
    stamp = out_dir / "noise_params.json"
    real_paths = sorted(glob(real_noise_glob)) if real_noise_glob else []
    babble_ids = sorted(c.id for c in babble_from.subset(first=max_babble_utterances)) if babble_from is not None else []
    params = {"n": n, "seed": seed, "duration": duration, "real": real_paths, "babble": babble_ids, "version": 1}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return CutSet.from_file(manifest)
    if n < 0:
        raise NoiseError(f"make_noise: n must be >= 0, got {n}")
    kinds = list(COLOURS) + (["babble"] if babble_from is not None else [])
    utterances = _babble_sources(babble_from, max_babble_utterances) if babble_from is not None else []
    out_dir.mkdir(parents=True, exist_ok=True)
    num_samples = int(round(duration * SAMPLE_RATE))
    items: List[Tuple[str, str, np.ndarray]] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        np_rng = np.random.default_rng([seed, i])
        if kind == "babble":
            audio = babble(utterances, num_samples, random.Random(f"babble:{seed}:{i}"))
        else:
            audio = coloured_noise(num_samples, COLOURS[kind], np_rng)
        items.append((f"noise-{kind}-{seed}-{i:04d}", kind, audio))
    for path in real_paths:
        items.append((f"noise-real-{Path(path).stem}", "real", load_real_noise(path)))
    if not items:
        raise NoiseError("make_noise: nothing to make (n=0 and no real noise files found)")
    cuts = [_write_noise(out_dir, noise_id, kind, audio) for noise_id, kind, audio in items]
    cutset = CutSet.from_cuts(cuts)
    with atomic_path(manifest) as tmp:
        cutset.to_file(tmp)
    with atomic_write(stamp) as f:  # written last: its presence marks a complete set
        json.dump(params, f)
    return cutset


def add_noise(cut, noise: "Cut", snr: float, rng: random.Random):
    """Mix a random window of ``noise`` (looped if shorter) into ``cut`` at ``snr`` dB."""
    window = fit_noise(noise, cut.duration, rng)
    mixed = cut.mix(window, snr=snr, preserve_id="left")
    return fastcopy(mixed, id=f"{cut.id}_ns")


def fit_noise(noise, duration: float, rng: random.Random):
    """A ``duration``-second piece of ``noise``: random offset if long enough, else looped."""
    looped = noise
    while looped.duration < duration:
        looped = looped.append(noise)
    spare = max(0.0, looped.duration - duration)
    offset = rng.uniform(0.0, spare) if spare > 0 else 0.0
    return looped.truncate(offset=offset, duration=duration, preserve_id=True)


def _babble_sources(cuts: CutSet, limit: int) -> List[np.ndarray]:
    audio = []
    for cut in cuts.subset(first=limit):
        samples = cut.load_audio()
        audio.append(np.asarray(samples, dtype=np.float64).mean(axis=0))
    return audio


def _write_noise(out_dir: Path, noise_id: str, kind: str, audio: np.ndarray):
    import soundfile as sf

    path = out_dir / f"{noise_id}.flac"
    peak = np.max(np.abs(audio)) + 1e-12
    with atomic_path(path) as tmp:
        sf.write(str(tmp), (0.5 * audio / peak).astype(np.float32), SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    cut = Recording.from_file(path, recording_id=noise_id).to_cut()
    return fastcopy(cut, custom={"noise_type": kind})


def noise_types(cuts: Iterable) -> List[str]:
    """The distinct ``noise_type`` tags in a noise CutSet (for logs and reports)."""
    return sorted({(c.custom or {}).get("noise_type", "unknown") for c in cuts})
