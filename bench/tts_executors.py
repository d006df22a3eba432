"""Generation throughput on a Dask cluster vs the local process pool, on this one machine.

Same texts, voices and seed; audio seconds per wall second of :func:`tts_gen.generate.generate` with

* ``local``: the default process pool of ``--jobs`` workers;
* ``dask``: a :class:`distributed.LocalCluster` of ``--jobs`` single-threaded worker processes
  (started once, before timing: a real cluster is started once per campaign, not per run).

The ratio ``dask / local`` is the per-machine cost of going through a scheduler (serialization,
scheduler round trips); with W machines the Dask rate is about W times the single-machine one while
the FLAC writes to the shared file system keep up (docs/scale.md). Best of ``--repeats`` runs each,
since the machine is shared; runs alternate local / Dask and the median per-round ratio is reported
too. Writes JSON to ``bench/results/tts_executors.json`` (``--out``).

    .venv/bin/python bench/tts_executors.py --num-texts 120 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).parent))
from tts_throughput import make_texts  # noqa: E402  (the same deterministic medication sentences)

from synthasr.utils.io import atomic_write  # noqa: E402
from tts_gen.engines.base import get_engine  # noqa: E402
from tts_gen.generate import generate  # noqa: E402
from tts_gen.voices import Voice, sample_voices  # noqa: E402


def run_once(text_file: Path, voices: List[Voice], jobs: int, seed: int, executor=None) -> Dict[str, float]:
    """(audio seconds, wall seconds) of a fresh (non-resumed) generation."""
    with tempfile.TemporaryDirectory(prefix="tts_exec_bench_") as out:
        start = time.perf_counter()
        summary = generate(text_file, out, voices, domain="bench", prefix="bench", num_jobs=jobs, seed=seed,
                           progress=False, executor=executor)
        wall = time.perf_counter() - start
    return {"audio_seconds": summary.hours * 3600, "wall_seconds": wall}


def summarize(runs: List[Dict[str, float]]) -> Dict[str, object]:
    best = min(runs, key=lambda r: r["wall_seconds"])
    return {"audio_seconds": round(best["audio_seconds"], 3), "wall_seconds": round(best["wall_seconds"], 3),
            "audio_seconds_per_wall_second": round(best["audio_seconds"] / best["wall_seconds"], 3),
            "all_wall_seconds": [round(r["wall_seconds"], 3) for r in runs]}


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-texts", type=int, default=120)
    parser.add_argument("--num-voices", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tts_executors.json")
    args = parser.parse_args(argv)

    from distributed import Client, LocalCluster

    voices = sample_voices([get_engine("espeak")], args.num_voices, seed=args.seed)
    load_before = os.getloadavg()
    runs: Dict[str, List[Dict[str, float]]] = {"local_pool": [], "dask_local_cluster": []}
    with tempfile.TemporaryDirectory(prefix="tts_exec_in_") as tmp:
        text_file = Path(tmp) / "bench.txt"
        text_file.write_text("\n".join(make_texts(args.num_texts)) + "\n", encoding="utf-8")
        start = time.perf_counter()
        with LocalCluster(n_workers=args.jobs, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            startup = time.perf_counter() - start
            executor = client.get_executor(pure=False)
            executor.synthasr_workers = args.jobs
            # Interleaved rounds (local, then Dask): on a shared machine the load drifts between runs, so
            # the ratio of each round is steadier than a ratio of separately taken bests.
            for _ in range(args.repeats):
                runs["local_pool"].append(run_once(text_file, voices, args.jobs, args.seed))
                runs["dask_local_cluster"].append(run_once(text_file, voices, args.jobs, args.seed, executor=executor))
                print({k: round(v[-1]["wall_seconds"], 2) for k, v in runs.items()}, file=sys.stderr)
    results = {name: summarize(r) for name, r in runs.items()}
    ratios = sorted(loc["wall_seconds"] / dask["wall_seconds"]
                    for loc, dask in zip(runs["local_pool"], runs["dask_local_cluster"]))

    rate = {k: v["audio_seconds_per_wall_second"] for k, v in results.items()}
    report = {
        "benchmark": "tts_executors",
        "engine": "espeak-ng",
        "num_texts": args.num_texts,
        "num_voices": args.num_voices,
        "workers": args.jobs,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
        "results": results,
        "dask_cluster_start_seconds": round(startup, 2),
        "ratio_dask_vs_local_pool_best": round(rate["dask_local_cluster"] / rate["local_pool"], 3),
        "ratio_dask_vs_local_pool_per_round": [round(r, 3) for r in ratios],
        "ratio_dask_vs_local_pool_median": round(statistics.median(ratios), 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
