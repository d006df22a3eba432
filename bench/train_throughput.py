"""Training throughput of the transducer: input frames/s and achieved FLOP/s vs. measured matmul peak.

Random features and random token sequences (no data loading), AdamW steps exactly as the trainer does
them (forward with the pruned loss, backward, clipping, optimizer step). FLOPs of one forward+backward
are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls/convolutions/attention only),
and the machine's peak is measured in the same run by timing a large fp32 (or the AMP dtype's) matmul.

    python bench/train_throughput.py --preset small --device cpu        # JSON -> bench/results/
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthasr.loss import LossConfig  # noqa: E402
from synthasr.model import build_model  # noqa: E402
from synthasr.train.config import OptimConfig  # noqa: E402
from synthasr.train.optim import build_optimizer, trainable_parameters  # noqa: E402
from synthasr.utils.io import atomic_write  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best-of-``reps`` FLOP/s of an ``n x n @ n x n`` matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def make_batch(batch: int, frames: int, tokens: int, vocab: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, 80, generator=g).to(device)
    # Mild length variation, as a bucketed batch would have.
    x_lens = torch.tensor([frames - (i * frames) // (8 * batch) for i in range(batch)], dtype=torch.int64).to(device)
    y = torch.randint(1, vocab, (batch, tokens), generator=g).tolist()
    return x, x_lens, y


def count_step_flops(model, x, x_lens, y, loss_cfg) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x, x_lens, y, loss_cfg, 10_000)
        (out["loss"] / out["num_frames"]).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run(args: argparse.Namespace) -> Dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    torch.manual_seed(0)
    model = build_model({"preset": args.preset, "vocab_size": args.vocab_size}).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(trainable_parameters(model), OptimConfig(lr=1e-4))
    loss_cfg = LossConfig()
    x, x_lens, y = make_batch(args.batch_size, args.frames, args.tokens, args.vocab_size, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def step() -> float:
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else torch.autocast(
            device.type, enabled=False)
        with ctx:
            out = model(x, x_lens, y, loss_cfg, 10_000)
        loss = out["loss"].float() / out["num_frames"].float()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    times: List[float] = []
    for _ in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_time = statistics.median(times)
    frames_per_step = int(x_lens.sum())
    flops = count_step_flops(model, x, x_lens, y, loss_cfg)
    peak = matmul_peak_flops(device, amp_dtype or torch.float32, args.matmul_size, args.matmul_reps)
    achieved = flops / step_time
    return {
        "benchmark": "train_throughput",
        "preset": args.preset,
        "params": n_params,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "batch_size": args.batch_size,
        "frames_per_utt": args.frames,
        "tokens_per_utt": args.tokens,
        "input_frames_per_step": frames_per_step,
        "audio_seconds_per_step": frames_per_step / 100.0,
        "step_time_s_median": step_time,
        "step_times_s": times,
        "train_frames_per_s": frames_per_step / step_time,
        "audio_seconds_per_s": frames_per_step / 100.0 / step_time,
        "flops_per_step_fwd_bwd": flops,
        "achieved_flops_per_s": achieved,
        "matmul_size": args.matmul_size,
        "matmul_peak_flops_per_s": peak,
        "fraction_of_matmul_peak": achieved / peak,
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=["tiny", "small", "medium"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--frames", type=int, default=500, help="feature frames per utterance (10 ms each)")
    p.add_argument("--tokens", type=int, default=25)
    p.add_argument("--vocab-size", type=int, default=500)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-reps", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = p.parse_args()
    result = run(args)
    with atomic_write(args.out) as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "step_times_s"}, indent=2))


if __name__ == "__main__":
    main()
