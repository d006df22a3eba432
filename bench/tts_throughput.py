"""TTS generation throughput: seconds of audio per wall second, tts_gen vs the bare engine.

Measures, on the same texts and voices:

* ``bare``: espeak-ng called directly (same argv tts_gen uses), in N worker processes, WAV discarded;
* ``tts_gen``: :func:`tts_gen.generate.generate` with ``num_jobs=N`` (normalize, synthesize,
  resample to 16 kHz, FLAC, ledger, manifests + validation);

for N = 1 and N = ``--jobs``. Targets: tts_gen overhead vs bare <= 25 % and N jobs >= 1.7x one job
(for N = 2). Each configuration is run ``--repeats`` times and the best wall time is kept, since
the machine is shared. Writes JSON to ``bench/results/tts_throughput.json`` (``--out``).

    .venv/bin/python bench/tts_throughput.py --num-texts 60 --jobs 2
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from synthasr.utils.io import atomic_write
from tts_gen.engines.base import get_engine
from tts_gen.engines.espeak import parse_wav_bytes
from tts_gen.generate import assign_voice, generate
from tts_gen.voices import Voice, sample_voices, voices_by_engine

DRUGS = ["ibuprofen", "metformin", "lisinopril", "atorvastatin", "amoxicillin", "omeprazole", "sertraline",
         "levothyroxine", "amlodipine", "gabapentin", "prednisone", "warfarin"]
DOSES = ["five", "ten", "twenty", "fifty", "one hundred", "two hundred fifty", "five hundred"]
TIMES = ["once daily", "twice a day", "every eight hours", "at bedtime", "with meals", "as needed for pain"]
TARGET_OVERHEAD = 0.25
TARGET_SPEEDUP = 1.7


def make_texts(n: int) -> List[str]:
    """Deterministic, already-normalized medication sentences (5-12 words)."""
    return [f"take {DOSES[i % len(DOSES)]} milligrams of {DRUGS[(i * 5) % len(DRUGS)]} {TIMES[(i * 7) % len(TIMES)]}"
            + (" and call your doctor if symptoms persist" if i % 3 == 0 else "") for i in range(n)]


def _bare_one(job: Tuple[List[str], str]) -> float:
    argv, text = job
    proc = subprocess.run(argv, input=text.encode(), capture_output=True, check=True)
    audio, rate = parse_wav_bytes(proc.stdout)
    return len(audio) / rate


def run_bare(texts: List[str], voices: List[Voice], jobs: int, seed: int) -> Tuple[float, float]:
    """(audio seconds, wall seconds) for espeak-ng alone, with tts_gen's voice for each text."""
    engine = get_engine("espeak")
    groups = voices_by_engine(voices)
    work = [(engine.command(assign_voice(f"bench-{i + 1:06d}", seed, groups)[0]), t) for i, t in enumerate(texts)]
    start = time.perf_counter()
    if jobs == 1:
        seconds = [_bare_one(w) for w in work]
    else:
        with cf.ProcessPoolExecutor(max_workers=jobs) as pool:
            seconds = list(pool.map(_bare_one, work, chunksize=4))
    return sum(seconds), time.perf_counter() - start


def run_tts_gen(text_file: Path, voices: List[Voice], jobs: int, seed: int) -> Tuple[float, float]:
    """(audio seconds, wall seconds) for a fresh (non-resumed) tts_gen run."""
    with tempfile.TemporaryDirectory(prefix="tts_bench_") as out:
        start = time.perf_counter()
        summary = generate(text_file, out, voices, domain="bench", prefix="bench", num_jobs=jobs, seed=seed,
                           progress=False)
        wall = time.perf_counter() - start
    return summary.hours * 3600, wall


def best_of(fn, repeats: int, *args) -> Dict[str, float]:
    runs = [fn(*args) for _ in range(repeats)]
    audio, wall = min(runs, key=lambda r: r[1])
    return {"audio_seconds": round(audio, 3), "wall_seconds": round(wall, 3),
            "audio_seconds_per_wall_second": round(audio / wall, 3)}


def main(argv: List[str] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-texts", type=int, default=60)
    parser.add_argument("--num-voices", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tts_throughput.json")
    args = parser.parse_args(argv)

    import lhotse  # noqa: F401  (import cost is not throughput)

    texts = make_texts(args.num_texts)
    voices = sample_voices([get_engine("espeak")], args.num_voices, seed=args.seed)
    results: Dict[str, Dict[str, float]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tts_bench_in_") as tmp:
        text_file = Path(tmp) / "bench.txt"
        text_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
        for jobs in sorted({1, args.jobs}):
            results[f"bare_{jobs}job"] = best_of(run_bare, args.repeats, texts, voices, jobs, args.seed)
            results[f"tts_gen_{jobs}job"] = best_of(run_tts_gen, args.repeats, text_file, voices, jobs, args.seed)
            print(f"jobs={jobs}: bare {results[f'bare_{jobs}job']}  tts_gen {results[f'tts_gen_{jobs}job']}",
                  file=sys.stderr)

    rate = {k: v["audio_seconds_per_wall_second"] for k, v in results.items()}
    overhead = {f"{j}job": round(1 - rate[f"tts_gen_{j}job"] / rate[f"bare_{j}job"], 3) for j in sorted({1, args.jobs})}
    speedup = round(rate[f"tts_gen_{args.jobs}job"] / rate["tts_gen_1job"], 3)
    report = {
        "benchmark": "tts_throughput",
        "engine": "espeak-ng",
        "num_texts": args.num_texts,
        "num_voices": args.num_voices,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "python": platform.python_version()},
        "results": results,
        "tts_gen_overhead_vs_bare": overhead,
        f"speedup_{args.jobs}jobs_vs_1": speedup,
        # how much parallel headroom the machine had: the bare engine's own speed-up on the same run
        f"bare_speedup_{args.jobs}jobs_vs_1": round(rate[f"bare_{args.jobs}job"] / rate["bare_1job"], 3),
        "targets": {
            "overhead_max": TARGET_OVERHEAD,
            "overhead_pass": all(v <= TARGET_OVERHEAD for v in overhead.values()),
            "speedup_min": TARGET_SPEEDUP,
            "speedup_pass": speedup >= TARGET_SPEEDUP,
        },
    }
    with atomic_write(args.out) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
