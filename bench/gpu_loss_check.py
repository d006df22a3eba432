#!/usr/bin/env python3
"""GPU check of the builtin RNN-T losses: correctness against torchaudio and a float64 CPU reference,
then forward+backward time and peak GPU memory of builtin full vs builtin pruned (vs torchaudio full).

Self-contained: imports only torch, torchaudio (optional) and this repository's ``synthasr.loss`` (the
repo root is put on ``sys.path``).  Runs in well under 3 minutes on an H100.

    python3 bench/gpu_loss_check.py                         # CUDA, writes bench/results/gpu_loss_check.json
    python3 bench/gpu_loss_check.py --device cpu --small    # quick local dry run of the same code paths

Timed pieces (median of ``--repeats`` after one warm-up, with ``torch.cuda.synchronize``):
  full:   rnnt_loss on given logits (B,T,U+1,V) + backward;
  pruned: rnnt_loss_simple(return_grad) + get_rnnt_prune_ranges + do_rnnt_pruning + rnnt_loss_pruned on
          given pruned logits (B,T,s_range,V) + backward (no joiner network).
Peak memory: ``torch.cuda.max_memory_allocated`` during one forward+backward, minus what was allocated
before it (the inputs); inputs are reported separately.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from synthasr.loss import (  # noqa: E402
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
)

try:
    import torchaudio.functional as taF

    if not hasattr(taF, "rnnt_loss"):
        taF = None
except Exception:  # torchaudio is optional: the CPU dry run usually lacks it
    taF = None

CHECK_SHAPES = [(2, 12, 4, 10), (4, 60, 20, 80), (8, 150, 40, 500), (3, 250, 50, 1000)]  # (B, T, U, V)
SMALL_CHECK_SHAPES = [(2, 12, 4, 10), (3, 20, 6, 16)]


def _batch(shape, device, seed: int):
    """Random logits and symbols with per-utterance lengths; utterance 0 has the maximum T and U."""
    batch, frames, num_symbols, vocab = shape
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, num_symbols + 1, vocab, generator=gen)
    symbols = torch.randint(1, vocab, (batch, num_symbols), generator=gen)
    t_len = torch.randint(max(1, frames // 2), frames + 1, (batch,), generator=gen)
    u_len = torch.randint(0, num_symbols + 1, (batch,), generator=gen)
    t_len[0], u_len[0] = frames, num_symbols
    boundary = torch.stack([torch.zeros_like(t_len), torch.zeros_like(t_len), u_len, t_len], dim=1)
    return logits.to(device), symbols.to(device), boundary.to(device)


def _loss_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x)
    loss.sum().backward()
    return loss.detach(), x.grad


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max())


def check_correctness(shapes, device: torch.device) -> List[Dict[str, object]]:
    """Builtin on ``device`` vs builtin float64 on CPU, vs torchaudio, and pruned(full band) vs full."""
    rows = []
    for i, shape in enumerate(shapes):
        logits, symbols, boundary = _batch(shape, device, seed=i)
        ours, g_ours = _loss_and_grad(
            lambda x: rnnt_loss(x, symbols, 0, boundary, reduction="none", backend="builtin"), logits)
        ref64, g_ref64 = _loss_and_grad(
            lambda x: rnnt_loss(x, symbols.cpu(), 0, boundary.cpu(), reduction="none", backend="builtin"),
            logits.cpu().double())
        row: Dict[str, object] = {
            "shape_BTUV": list(shape),
            "loss_max_abs_diff_vs_cpu_float64": _max_abs(ours, ref64),
            "grad_max_abs_diff_vs_cpu_float64": _max_abs(g_ours, g_ref64),
            "loss_max_rel_diff_vs_cpu_float64": float(((ours.double().cpu() - ref64) / ref64).abs().max()),
        }
        if taF is not None:
            ta, g_ta = _loss_and_grad(
                lambda x: rnnt_loss(x, symbols, 0, boundary, reduction="none", backend="torchaudio"), logits)
            row["loss_max_abs_diff_vs_torchaudio"] = _max_abs(ours, ta)
            row["grad_max_abs_diff_vs_torchaudio"] = _max_abs(g_ours, g_ta)
        width = shape[2] + 1
        full_band = torch.arange(width, device=device).expand(shape[0], shape[1], width).contiguous()
        pruned = rnnt_loss_pruned(logits, symbols, full_band, 0, boundary, reduction="none", backend="builtin")
        row["pruned_full_band_max_abs_diff_vs_full"] = _max_abs(pruned, ours)
        am = logits[:, :, 0, :].contiguous()
        lm = logits[:, 0, :, :].contiguous()
        simple = rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="none", backend="builtin")
        summed = rnnt_loss(am[:, :, None] + lm[:, None], symbols, 0, boundary, reduction="none", backend="builtin")
        row["simple_max_abs_diff_vs_full_on_am_plus_lm"] = _max_abs(simple, summed)
        row["loss_magnitude"] = float(ref64.abs().max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(step: Callable[[], None], device: torch.device, repeats: int,
             leaves: List[torch.Tensor]) -> Dict[str, object]:
    step()  # warm-up (kernel selection, caching allocator growth)
    for leaf in leaves:  # the input gradients count as the step's memory, not as the baseline
        leaf.grad = None
    _sync(device)
    result: Dict[str, object] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        result["peak_extra_mb"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    result["time_ms"] = 1000 * statistics.median(times)
    result["times_ms"] = [1000 * t for t in times]
    return result


def benchmark(shape, prune_range: int, device: torch.device, repeats: int) -> Dict[str, Dict[str, object]]:
    batch, frames, num_symbols, vocab = shape
    logits, symbols, boundary = _batch(shape, device, seed=100)
    del logits
    gen = torch.Generator().manual_seed(101)
    out: Dict[str, Dict[str, object]] = {}

    full_logits = torch.randn(batch, frames, num_symbols + 1, vocab, generator=gen).to(device).requires_grad_(True)

    def full_step(backend: str) -> Callable[[], None]:
        def step() -> None:
            full_logits.grad = None
            rnnt_loss(full_logits, symbols, 0, boundary, reduction="sum", backend=backend).backward()
        return step

    inputs_full = full_logits.numel() * 4 / 2**20
    out["builtin_full"] = {**_measure(full_step("builtin"), device, repeats, [full_logits]), "inputs_mb": inputs_full}
    if taF is not None:
        out["torchaudio_full"] = {**_measure(full_step("torchaudio"), device, repeats, [full_logits]), "inputs_mb": inputs_full}
    full_logits.grad = None
    del full_logits

    width = min(prune_range, num_symbols + 1)
    am = torch.randn(batch, frames, vocab, generator=gen).to(device).requires_grad_(True)
    lm = torch.randn(batch, num_symbols + 1, vocab, generator=gen).to(device).requires_grad_(True)
    pruned_logits = torch.randn(batch, frames, width, vocab, generator=gen).to(device).requires_grad_(True)

    def pruned_step() -> None:
        for x in (am, lm, pruned_logits):
            x.grad = None
        simple, (px_grad, py_grad) = rnnt_loss_simple(
            lm, am, symbols, 0, boundary, reduction="sum", return_grad=True, backend="builtin")
        ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, prune_range)
        do_rnnt_pruning(am, lm, ranges)
        pruned = rnnt_loss_pruned(pruned_logits, symbols, ranges, 0, boundary, reduction="sum", backend="builtin")
        (0.5 * simple + pruned).backward()

    inputs_pruned = (am.numel() + lm.numel() + pruned_logits.numel()) * 4 / 2**20
    out["builtin_pruned"] = {**_measure(pruned_step, device, repeats, [am, lm, pruned_logits]), "inputs_mb": inputs_pruned}
    for row in out.values():
        if "peak_extra_mb" in row:
            row["total_mb"] = row["inputs_mb"] + row["peak_extra_mb"]
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes for a CPU dry run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_loss_check.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_loss_check: CUDA is not available here; use --device cpu --small for a dry run")
    torch.backends.cuda.matmul.allow_tf32 = False  # the simple loss's normaliser is a matmul: keep fp32
    if device.type == "cpu":
        torch.set_num_threads(1)
    started = time.perf_counter()
    bench_shape = (2, 30, 8, 20) if args.small else (16, 250, 50, 500)
    report: Dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torchaudio": getattr(sys.modules.get("torchaudio"), "__version__", None),
        "correctness": check_correctness(SMALL_CHECK_SHAPES if args.small else CHECK_SHAPES, device),
    }
    bench = benchmark(bench_shape, 5, device, 2 if args.small else args.repeats)
    full, pruned = bench["builtin_full"], bench["builtin_pruned"]
    summary: Dict[str, object] = {
        "bench_shape_BTUV": list(bench_shape),
        "pruned_speedup_vs_full": full["time_ms"] / pruned["time_ms"],
    }
    if "total_mb" in full:
        summary["pruned_memory_saving_vs_full"] = full["total_mb"] / pruned["total_mb"]
    if "torchaudio_full" in bench:
        summary["builtin_full_time_vs_torchaudio"] = full["time_ms"] / bench["torchaudio_full"]["time_ms"]
        summary["builtin_pruned_time_vs_torchaudio_full"] = pruned["time_ms"] / bench["torchaudio_full"]["time_ms"]
    report["benchmark"] = bench
    report["summary"] = summary
    report["wall_s"] = time.perf_counter() - started
    from synthasr.utils.io import atomic_write

    with atomic_write(args.out) as f:
        json.dump(report, f, indent=2)
    print(json.dumps({"benchmark": bench, "summary": summary}, indent=2))
    print(f"wrote {args.out} in {report['wall_s']:.1f}s")


if __name__ == "__main__":
    main()
