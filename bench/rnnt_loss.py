#!/usr/bin/env python3
"""Benchmark: builtin full vs builtin pruned RNN-T loss (vs fast_rnnt when importable) on CPU.

Each variant runs forward+backward at B=16, T=250, U=50, V=500 (defaults) in its own subprocess, so
memory numbers of one variant cannot leak into another.

What is timed (median of ``--repeats`` runs after one untimed run):

* full: ``rnnt_loss`` on given joiner logits (B, T, U+1, V), then backward to the logits.
* pruned: ``rnnt_loss_simple`` (with return_grad) on given am (B, T, V) / lm (B, U+1, V),
  ``get_rnnt_prune_ranges``, ``do_rnnt_pruning`` of am/lm, ``rnnt_loss_pruned`` on given pruned logits
  (B, T, s_range, V) -- no joiner network -- and one backward through simple + pruned loss.

How memory is measured: torch's CPU allocator takes large blocks straight from the OS (mmap) and gives
them back on free, so the process's resident set tracks live tensor memory.  In the fresh subprocess we
build the inputs, record the current RSS, run the first forward+backward, and read the peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``): ``peak_extra_mb`` is peak minus that baseline (everything the loss
allocates, including the input gradients), ``inputs_mb`` is the size of the input tensors.  The memory
target compares ``inputs_mb + peak_extra_mb`` (the logits tensor a full loss needs is part of its cost).

Usage: python bench/rnnt_loss.py [--out bench/results/rnnt_loss.json] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from synthasr.loss import (  # noqa: E402
    available_backends,
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
)

VARIANTS = ("builtin_full", "builtin_pruned", "fast_rnnt_full", "fast_rnnt_pruned")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _full_step(args, backend: str) -> tuple[Callable[[], None], List[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, args.frames, args.symbols + 1, args.vocab, generator=gen).requires_grad_(True)
    symbols = torch.randint(1, args.vocab, (args.batch, args.symbols), generator=gen)
    boundary = _boundary(args)

    def step() -> None:
        logits.grad = None
        rnnt_loss(logits, symbols, 0, boundary, reduction="sum", backend=backend).backward()

    return step, [logits, symbols]


def _pruned_step(args, backend: str) -> tuple[Callable[[], None], List[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    am = torch.randn(args.batch, args.frames, args.vocab, generator=gen).requires_grad_(True)
    lm = torch.randn(args.batch, args.symbols + 1, args.vocab, generator=gen).requires_grad_(True)
    width = min(args.prune_range, args.symbols + 1)  # get_rnnt_prune_ranges caps s_range at U + 1
    pruned_logits = torch.randn(args.batch, args.frames, width, args.vocab, generator=gen)
    pruned_logits.requires_grad_(True)
    symbols = torch.randint(1, args.vocab, (args.batch, args.symbols), generator=gen)
    boundary = _boundary(args)

    def step() -> None:
        for x in (am, lm, pruned_logits):
            x.grad = None
        simple, (px_grad, py_grad) = rnnt_loss_simple(
            lm, am, symbols, 0, boundary, reduction="sum", return_grad=True, backend=backend)
        ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, args.prune_range)
        do_rnnt_pruning(am, lm, ranges)  # timed for completeness; the given pruned logits stand in for the joiner
        pruned = rnnt_loss_pruned(pruned_logits, symbols, ranges, 0, boundary, reduction="sum", backend=backend)
        (0.5 * simple + pruned).backward()

    return step, [am, lm, pruned_logits, symbols]


def _boundary(args) -> torch.Tensor:
    """Realistic padding: lengths spread between 60% and 100% of the maxima."""
    frac = torch.linspace(0.6, 1.0, args.batch)
    frames = (frac * args.frames).long().clamp(min=args.symbols)
    symbols = (frac.flip(0) * args.symbols).long()
    return torch.stack([torch.zeros_like(frames), torch.zeros_like(frames), symbols, frames], dim=1)


def run_worker(args) -> Dict[str, float]:
    """Measure one variant in this (fresh) process."""
    torch.set_num_threads(args.threads)
    backend, kind = args.variant.rsplit("_", 1)
    warm_args = argparse.Namespace(**{**vars(args), "batch": 2, "frames": 8, "symbols": 3, "vocab": 16})
    builder = _full_step if kind == "full" else _pruned_step
    builder(warm_args, backend)[0]()  # initialise kernels/thread pools outside the measurement
    step, inputs = builder(args, backend)
    inputs_mb = sum(x.numel() * x.element_size() for x in inputs) / 2**20
    baseline = _rss_mb()
    start = time.perf_counter()
    step()
    first_s = time.perf_counter() - start
    peak_extra = _peak_rss_mb() - baseline
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times), "first_run_s": first_s, "times_s": times,
            "inputs_mb": inputs_mb, "peak_extra_mb": peak_extra, "total_mb": inputs_mb + peak_extra}


def _run_variant(args, variant: str) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant]
    for key in ("batch", "frames", "symbols", "vocab", "prune_range", "repeats", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(results: Dict[str, Dict[str, float]]) -> Dict[str, object]:
    full, pruned = results["builtin_full"], results["builtin_pruned"]
    targets: Dict[str, object] = {
        "pruned_speedup_vs_full": {"value": full["time_s"] / pruned["time_s"], "target": ">= 4"},
        "pruned_memory_saving_vs_full": {"value": full["total_mb"] / pruned["total_mb"], "target": ">= 4"},
    }
    targets["pruned_speedup_vs_full"]["met"] = targets["pruned_speedup_vs_full"]["value"] >= 4
    targets["pruned_memory_saving_vs_full"]["met"] = targets["pruned_memory_saving_vs_full"]["value"] >= 4
    if "fast_rnnt_pruned" in results:
        ratio = pruned["time_s"] / results["fast_rnnt_pruned"]["time_s"]
        targets["pruned_time_vs_fast_rnnt_pruned"] = {"value": ratio, "target": "<= 2", "met": ratio <= 2}
    return targets


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rnnt_loss.json")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=500)
    parser.add_argument("--prune-range", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return

    from tqdm import tqdm

    from synthasr.utils.io import atomic_write

    have_fast = "fast_rnnt" in available_backends()
    variants = [v for v in VARIANTS if have_fast or not v.startswith("fast_rnnt")]
    results = {}
    for variant in tqdm(variants, desc="rnnt_loss bench", unit="variant"):
        results[variant] = _run_variant(args, variant)
    report = {
        "shape": {"B": args.batch, "T": args.frames, "U": args.symbols, "V": args.vocab,
                  "prune_range": args.prune_range},
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "included": {
            "full": "rnnt_loss forward on given logits (B,T,U+1,V) + backward to logits",
            "pruned": "rnnt_loss_simple(return_grad) + get_rnnt_prune_ranges + do_rnnt_pruning + "
                      "rnnt_loss_pruned on given pruned logits (B,T,s_range,V) + backward (no joiner)",
        },
        "memory_method": "fresh subprocess per variant; peak RSS (getrusage) minus RSS after building inputs",
        "results": results,
        "targets": summarize(results),
    }
    with atomic_write(args.out) as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report["targets"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
