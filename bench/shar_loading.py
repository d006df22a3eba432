"""Training data-loading throughput: lhotse Shar shards vs the directory layout, same cuts.

One training epoch's batches (the trainer's sampler, dataset and loader: ``make_sampler`` +
``AsrDataset`` + ``make_loader``, no model) over the same synthetic cuts stored two ways:

* ``features``: precomputed fbank, directory layout (``compute_fbank``: one lilcom archive + a
  jsonl.gz manifest, random-access reads) vs Shar (``compute_fbank_shar``: ``features.<k>.tar``
  streamed shard by shard);
* ``audio``: 16 kHz FLAC files + manifest vs Shar ``recording.<k>.tar`` (features on the fly).

Reported: cuts and feature frames per second, best of ``--repeats`` epochs, and the Shar / directory
ratio per kind. All files sit on this machine's local disk and in its page cache after the first
pass, so this measures the reader's CPU cost, not the network file system random reads that Shar is
for (docs/scale.md). Writes JSON to ``bench/results/shar_loading.json`` (``--out``).

    .venv/bin/python bench/shar_loading.py --num-cuts 400
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import soundfile as sf

from synthasr.utils.io import atomic_write


def make_cuts(root: Path, n: int, seed: int):
    """``n`` FLAC utterances of 2-6 s (tones + noise) with a transcript; content does not matter here."""
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.utils import fastcopy

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    cuts = []
    for i in range(n):
        samples = int(rng.uniform(2.0, 6.0) * 16000)
        t = np.arange(samples) / 16000
        x = 0.2 * np.sin(2 * np.pi * (150 + 40 * (i % 9)) * t) + 0.02 * rng.standard_normal(samples)
        path = root / "audio" / f"u{i:05d}.flac"
        sf.write(str(path), x.astype(np.float32), 16000, subtype="PCM_16")
        rec = Recording.from_file(path, recording_id=f"u{i:05d}")
        sup = SupervisionSegment(rec.id, rec.id, 0.0, rec.duration, text="take one tablet twice daily",
                                 custom={"domain": "bench"})
        cuts.append(fastcopy(rec.to_cut(), id=rec.id, supervisions=[sup]))
    cuts = CutSet.from_cuts(cuts)
    cuts.to_file(root / "cuts.jsonl.gz")
    return cuts


def epoch_rate(cuts, max_duration: float, epoch: int) -> Dict[str, float]:
    """Cuts and frames per second of one epoch through the trainer's data path (num_workers=0)."""
    from synthasr.data.dataset import AsrDataset, EpochBatches, make_loader, make_sampler

    sampler = make_sampler(cuts, max_duration=max_duration, shuffle=True, seed=0, bucketing=True, num_buckets=4)
    loader = make_loader(AsrDataset(), EpochBatches(sampler, epoch), num_workers=0)
    start = time.perf_counter()
    n_cuts = frames = 0
    for batch in loader:
        n_cuts += len(batch["cut_ids"])
        frames += int(batch["feature_lens"].sum())
    wall = time.perf_counter() - start
    return {"cuts": n_cuts, "frames": frames, "wall_seconds": round(wall, 3),
            "cuts_per_second": round(n_cuts / wall, 1), "frames_per_second": round(frames / wall, 1)}


def best_epoch(make, repeats: int, max_duration: float) -> Dict[str, Any]:
    runs = [epoch_rate(make(), max_duration, epoch) for epoch in range(1, repeats + 1)]
    best = max(runs, key=lambda r: r["cuts_per_second"])
    return {**best, "all_cuts_per_second": [r["cuts_per_second"] for r in runs]}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-cuts", type=int, default=400)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--max-duration", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shar_loading.json")
    args = parser.parse_args(argv)

    import torch
    from lhotse import load_manifest_lazy

    from synthasr.data.features import compute_fbank, compute_fbank_shar, fbank_manifest_path
    from synthasr.data.shar import load_shar, write_shar

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="shar_bench_") as tmp:
        root = Path(tmp)
        cuts = make_cuts(root, args.num_cuts, args.seed)
        compute_fbank(cuts, root / "fbank", "bench")
        compute_fbank_shar(cuts, root / "fbank_shar", shard_size=args.shard_size)
        write_shar(cuts, root / "audio_shar", shard_size=args.shard_size)
        layouts = {
            "features_directory": lambda: load_manifest_lazy(fbank_manifest_path(root / "fbank", "bench")),
            "features_shar": lambda: load_shar(root / "fbank_shar"),
            "audio_directory": lambda: load_manifest_lazy(root / "cuts.jsonl.gz"),
            "audio_shar": lambda: load_shar(root / "audio_shar"),
        }
        for name, make in layouts.items():
            results[name] = best_epoch(make, args.repeats, args.max_duration)
            print(f"{name}: {results[name]}", file=sys.stderr)
        stored = {name: [p for p in (root / d).rglob("*") if p.is_file()]
                  for name, d in (("features_directory", "fbank"), ("features_shar", "fbank_shar"),
                                  ("audio_directory", "audio"), ("audio_shar", "audio_shar"))}
        sizes = {name: sum(p.stat().st_size for p in files) for name, files in stored.items()}
        counts = {name: len(files) for name, files in stored.items()}  # + the directory manifests

    ratio = {kind: round(results[f"{kind}_shar"]["cuts_per_second"] / results[f"{kind}_directory"]["cuts_per_second"], 3)
             for kind in ("features", "audio")}
    report = {
        "benchmark": "shar_loading",
        "num_cuts": args.num_cuts,
        "shard_size": args.shard_size,
        "max_duration": args.max_duration,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
                    "storage": "local disk, page cache warm after the first epoch"},
        "results": results,
        "bytes_on_disk": sizes,
        "files_on_disk": counts,
        "ratio_shar_vs_directory": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
