"""Reverberation with simulated room impulse responses (RIRs).

lhotse's built-in random-RIR path needs torchaudio (unavailable here), so RIRs are simulated once
with pyroomacoustics' image-source method in random shoebox rooms (random size, target RT60,
source/microphone positions), saved as 16 kHz FLAC files plus a ``RecordingSet`` manifest, and
applied with lhotse's own ``ReverbWithImpulseResponse`` transform (``cut.reverb_rir(rir)``), which
only needs numpy/torch. Generation is cached: an existing manifest with the same parameters is
reused, so every run (and every resumed run) convolves with the same RIRs.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from lhotse import Recording, RecordingSet
from lhotse.utils import fastcopy

from synthasr.utils.io import atomic_path, atomic_write

SAMPLE_RATE = 16000


class RirError(RuntimeError):
    """RIR simulation failed or the RIR directory is inconsistent."""


def simulate_rir(
    rng: random.Random,
    sample_rate: int = SAMPLE_RATE,
    rt60_range: Tuple[float, float] = (0.2, 0.8),
    room_dims_range: Tuple[Tuple[float, float], ...] = ((3.0, 10.0), (3.0, 8.0), (2.4, 4.0)),
    max_seconds: float = 1.0,
) -> Tuple[np.ndarray, Dict[str, float]]:
    """One mono RIR from a random shoebox room; returns (rir peak-normalised to 0.9, room params)."""
    import pyroomacoustics as pra

    dims = [rng.uniform(lo, hi) for lo, hi in room_dims_range]
    rt60 = rng.uniform(*rt60_range)
    try:
        absorption, max_order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # the room is too small/large for this RT60: use a moderately damped room
        absorption, max_order = 0.35, 12
    max_order = int(min(max_order, 20))  # bounds simulation time; late tail still decays
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(float(absorption)), max_order=max_order)
    src = _random_point(rng, dims)
    mic = _random_point(rng, dims)
    while np.linalg.norm(np.subtract(src, mic)) < 0.5:
        mic = _random_point(rng, dims)
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    # pyroomacoustics delays everything by its fractional-delay filter; keep the causal part from
    # shortly before the direct path so lhotse's "shift output by the peak" keeps alignment.
    peak = int(np.argmax(np.abs(rir)))
    rir = rir[max(0, peak - 40) : max(0, peak - 40) + int(max_seconds * sample_rate)]
    if rir[np.argmax(np.abs(rir))] < 0:
        rir = -rir
    rir = 0.9 * rir / np.max(np.abs(rir))
    distance = float(np.linalg.norm(np.subtract(src, mic)))
    params = {"rt60": rt60, "absorption": float(absorption), "max_order": max_order, "distance": distance}
    params.update({f"room_{k}": float(v) for k, v in zip("xyz", dims)})
    return rir, params


def make_rirs(out_dir, n: int, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> RecordingSet:
    """Simulate ``n`` RIRs into ``out_dir`` (FLAC + ``rirs_recordings.jsonl.gz``), or reuse a cached set.

    Room parameters (RT60, size, distance) of each RIR go to ``rirs_rooms.json`` for inspection.
    """
    import soundfile as sf
    from tqdm import tqdm

    out_dir = Path(out_dir)
    manifest = out_dir / "rirs_recordings.jsonl.gz"
    stamp = out_dir / "rirs_params.json"
    params = {"n": n, "seed": seed, "sample_rate": sample_rate, "version": 1}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return RecordingSet.from_file(manifest)
    if n <= 0:
        raise RirError(f"make_rirs: n must be positive, got {n}")
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings, rooms = [], []
    for i in tqdm(range(n), desc="simulate RIRs", disable=n < 20):
        rng = random.Random(f"rir:{seed}:{i}")
        rir, room = simulate_rir(rng, sample_rate)
        path = out_dir / f"rir-{seed}-{i:05d}.flac"
        with atomic_path(path) as tmp:
            sf.write(str(tmp), rir.astype(np.float32), sample_rate, subtype="PCM_24", format="FLAC")
        recordings.append(Recording.from_file(path, recording_id=f"rir-{seed}-{i:05d}"))
        rooms.append({"id": recordings[-1].id, **room})
    rirs = RecordingSet.from_recordings(recordings)
    with atomic_path(manifest) as tmp:
        rirs.to_file(tmp)
    with atomic_write(out_dir / "rirs_rooms.json") as f:
        json.dump(rooms, f, indent=1)
    with atomic_write(stamp) as f:  # written last: its presence marks a complete set
        json.dump(params, f)
    return rirs


def reverb_cut(cut, rir: Recording):
    """Lazily convolve ``cut`` with ``rir`` (energy-normalised output; alignment kept by peak shift)."""
    if cut.has_features:
        cut = fastcopy(cut, features=None)  # lhotse would mutate the input cut to drop them
    return cut.reverb_rir(rir_recording=rir, normalize_output=True, affix_id=True)


def _random_point(rng: random.Random, dims, margin: float = 0.5):
    return [rng.uniform(margin, d - margin) for d in dims]
