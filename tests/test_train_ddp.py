"""DDP on CPU (gloo, launched with torchrun): two ranks each taking half of a global batch train
exactly like one process taking the whole global batch."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts, train_tokenizer  # noqa: E402

from synthasr.checkpoint import load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _step_stats(exp: Path) -> List[Dict[str, float]]:
    text = "\n".join(p.read_text() for p in sorted((exp / "log").glob("log-train-*.txt")))
    stats = []
    for line in text.splitlines():
        m = re.search(r"step (\d+): (.*) sources\[", line)
        if m:
            values = dict(kv.split("=") for kv in m.group(2).split() if "=" in kv)
            stats.append({"step": int(m.group(1)), "loss": float(values["loss"]),
                          "grad_norm": float(values["grad_norm"])})
    return stats


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    # Equal durations: the sequential sampler's global batch of 4 cuts == rank 0's 2 + rank 1's 2.
    cuts = make_tone_cuts(root / "audio", n=8, seed=2, min_dur=1.0, max_dur=1.0)
    cuts.to_file(root / "cuts.jsonl.gz")
    train_tokenizer([c.supervisions[0].text for c in cuts], root / "bpe", vocab_size=20)
    (root / "run_cli.py").write_text("from synthasr.cli import cli\ncli()\n")
    base = {
        "seed": 11, "model": {"preset": "tiny", "dropout": 0.0},
        "loss": {"warmup_steps": 10}, "optim": {"lr": 0.003, "warmup_steps": 0},
        "data": {"bucketing": False, "shuffle": False, "spec_augment": {"enabled": False}},
        "max_steps": 2, "checkpoint_every_n_steps": 0, "log_every_n_steps": 1, "valid_wer": False,
        "device": "cpu", "progress_bar": False,
        "train_cuts": str(root / "cuts.jsonl.gz"), "bpe_model": str(root / "bpe" / "bpe.model"),
    }
    for name, max_duration in (("single", 4.0), ("ddp", 2.0)):
        cfg = dict(base, data=dict(base["data"], max_duration=max_duration))
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_two_rank_gloo_matches_single_process_global_batch(setup):
    root = setup
    single = subprocess.run([sys.executable, str(root / "run_cli.py"), "train", "--config", str(root / "single.yaml"),
                             "--exp-dir", str(root / "single")], env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(root / "run_cli.py"), "train", "--config", str(root / "ddp.yaml"),
                          "--exp-dir", str(root / "ddp")], env=_env(), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    log_ddp = "\n".join(p.read_text() for p in (root / "ddp" / "log").glob("*.txt"))
    assert "world size 2" in log_ddp
    a, b = _step_stats(root / "single"), _step_stats(root / "ddp")
    assert [s["step"] for s in a] == [s["step"] for s in b] == [1, 2]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        # The gradient norm is scale-sensitive: it catches a wrong loss normalisation under DDP.
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3)
    wa = load_checkpoint(root / "single" / "final.pt")["model"]
    wb = load_checkpoint(root / "ddp" / "final.pt")["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=2e-5, rtol=1e-4), k
    # Rank 0 alone writes checkpoints and logs.
    assert len(list((root / "ddp" / "log").glob("log-train-*.txt"))) == 1
    meta = load_checkpoint(root / "ddp" / "final.pt")["meta"]
    assert sum(meta["source_counts"].values()) == 8  # both ranks' cuts are counted
