"""A two-stage schedule with EWC under torchrun (2 ranks, gloo, CPU) against the same schedule in one
process: rank 0 alone estimates the Fisher, decodes and writes the report; both ranks train the same
weights; the results match the single-process run (each rank takes half of the global batch)."""
from __future__ import annotations

import json
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
from synthasr.train.regularization import load_fisher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Runs the schedule with INFO logs of every rank in its own file, and records, per stage, a digest of
# the weights each rank holds when its training ends (the model object the schedule passes to fit).
LAUNCHER = """
import hashlib, json, logging, os, sys
from pathlib import Path
import torch
schedule, exp_dir, out = sys.argv[1:4]
rank = os.environ.get("RANK", "0")
logging.basicConfig(filename=f"{out}/rank{rank}.log", level=logging.INFO,
                    format="%(levelname)s [%(name)s] %(message)s")
torch.set_num_threads(1)
import synthasr.train.trainer as trainer
from synthasr.train.schedule import run_schedule
digests = {}
real_fit = trainer.fit
def fit(cfg, stage_dir, *args, **kwargs):
    final = real_fit(cfg, stage_dir, *args, **kwargs)
    state = kwargs["model"].state_dict()
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    digests[Path(stage_dir).name] = h.hexdigest()
    return final
trainer.fit = fit
result = run_schedule(schedule, exp_dir=exp_dir)
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"digests": digests, "results": {s.name: s.results for s in result.stages},
               "report_stages": (result.report or {}).get("stages")}, f)
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _schedule(root: Path, max_duration: float):
    return {
        "baseline": "general",
        "base": {
            "bpe_model": str(root / "bpe" / "bpe.model"),
            "train": {
                "seed": 5, "model": {"preset": "tiny", "dropout": 0.0}, "device": "cpu", "progress_bar": False,
                "loss": {"warmup_steps": 10}, "optim": {"lr": 0.003, "warmup_steps": 0},
                "checkpoint_every_n_steps": 0, "log_every_n_steps": 1, "valid_wer": False,
                # Unshuffled, unbucketed, 1-s cuts: the single process's batch of 4 cuts is exactly
                # rank 0's 2 + rank 1's 2 (lhotse hands out consecutive batches to the ranks).
                "data": {"max_duration": max_duration, "bucketing": False, "shuffle": False,
                         "spec_augment": {"enabled": False}},
            },
            "sources": {"general": {"cuts": [str(root / "general.jsonl.gz")], "domain": "general"},
                        "medication_synth": {"cuts": [str(root / "med.jsonl.gz")], "domain": "medication"}},
            "eval_sets": {"general_test": {"cuts": str(root / "general_test.jsonl.gz"), "domain": "general"}},
            "assets": {"num_noises": 2, "noise_duration": 2.0, "real_noise": False, "num_rirs": 2},
        },
        "stages": [
            {"name": "general", "init": "scratch", "data": {"general": 1.0}, "max_steps": 2},
            {
                "name": "adapt", "init": "previous", "data": {"general": 0.5, "medication_synth": 0.5},
                "num_cuts": 16, "max_steps": 2,
                # Duration-preserving augmentation (keeps the batches aligned); noise needs assets.
                "augment": {"medication_synth": {"volume_prob": 0.5, "noise_prob": 0.5}},
                # kind: full leaves the simple-loss projections without gradients under DDP.
                "train": {"loss": {"kind": "full"}},
                "regularization": {"type": "ewc", "lambda": {"encoder": 100.0}, "fisher_source": "general",
                                   "fisher_batches": 2, "fisher_max_duration": 2.0},
            },
        ],
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule_ddp")
    general = make_tone_cuts(root / "audio_general", n=8, seed=1, min_dur=1.0, max_dur=1.0)
    med = make_tone_cuts(root / "audio_med", n=8, seed=2, min_dur=1.0, max_dur=1.0)
    test = make_tone_cuts(root / "audio_test", n=4, seed=3, min_dur=1.0, max_dur=1.0)
    for name, cuts in (("general", general), ("med", med), ("general_test", test)):
        cuts.to_file(root / f"{name}.jsonl.gz")
    train_tokenizer([c.supervisions[0].text for c in general], root / "bpe", vocab_size=20)
    (root / "launch.py").write_text(LAUNCHER)
    out = {}
    for name, max_duration, prefix in (
        ("single", 4.0, [sys.executable]),
        ("ddp", 2.0, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]),
    ):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(_schedule(root, max_duration)))
        logs = root / f"{name}_out"
        logs.mkdir()
        proc = subprocess.run([*prefix, str(root / "launch.py"), str(root / f"{name}.yaml"), str(root / name),
                               str(logs)], env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = (root / name, logs)
    return out


def _log(logs: Path, rank: int) -> str:
    return (logs / f"rank{rank}.log").read_text()


def test_only_rank_0_estimates_the_fisher_decodes_and_writes(runs):
    exp, logs = runs["ddp"]
    main, other = _log(logs, 0), _log(logs, 1)
    for line in ("fisher: estimated from 4 utterances", "stage general: decoding", "stage adapt: decoding",
                 "report written"):
        assert line in main
        assert line not in other
    assert "find_unused_parameters on" in main  # the kind: full stage trained under DDP
    assert [p.relative_to(exp).as_posix() for p in exp.rglob("*fisher*.pt")] == ["general/fisher.pt"]
    assert (exp / "report.json").is_file() and len(list(exp.rglob("report.json"))) == 1
    r0, r1 = (json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["results"] == r1["results"]  # every rank returns rank 0's evaluation
    assert r0["report_stages"] == r1["report_stages"] == ["general", "adapt"]


def test_both_ranks_hold_identical_weights(runs):
    exp, logs = runs["ddp"]
    r0, r1 = (json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1))
    assert set(r0["digests"]) == {"general", "adapt"}
    assert r0["digests"] == r1["digests"]  # bit-identical: all-reduce gives every rank the same gradient


def _step_stats(logs: Path) -> List[Dict[str, float]]:
    stats = []
    for line in _log(logs, 0).splitlines():
        m = re.search(r"epoch \d+ step (\d+): (.*) sources\[", line)
        if m:
            values = dict(kv.split("=") for kv in m.group(2).split() if "=" in kv)
            stats.append({k: float(values[k]) for k in ("loss", "reg", "grad_norm")})
    return stats


def test_ddp_matches_the_single_process_run(runs):
    (single, single_logs), (ddp, ddp_logs) = runs["single"], runs["ddp"]
    # Per step, both stages: the global batch's loss, the EWC term and the (scale-sensitive) gradient
    # norm. Only float32 summation order differs (two half-batch sums + all-reduce vs one sum).
    a, b = _step_stats(single_logs), _step_stats(ddp_logs)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        for key in ("loss", "reg", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-9), key
    # The Fisher: rank 0 alone, same utterances; the stage-1 weights it is taken at differ only as above.
    fs, _ = load_fisher(single / "general" / "fisher.pt")
    fd, _ = load_fisher(ddp / "general" / "fisher.pt")
    for name in fs:
        torch.testing.assert_close(fd[name], fs[name], rtol=1e-3, atol=1e-9)
    # The adaptation stage's weight update (EWC, kind: full, mixing, augmentation). Adam normalises
    # every coordinate, so a coordinate whose gradient is at float rounding level moves by ~lr in a
    # direction set by rounding, in both runs; those few coordinates dominate the difference
    # (measured: 1.7e-4 of the update's norm). A real fault (another batch, a lost EWC term, another
    # Fisher on one rank) changes the update by O(1).
    start = load_checkpoint(single / "general" / "final.pt")["model"]
    end_s = load_checkpoint(single / "adapt" / "final.pt")["model"]
    end_d = load_checkpoint(ddp / "adapt" / "final.pt")["model"]
    update_s = torch.cat([(end_s[k] - start[k]).flatten() for k in start])
    update_d = torch.cat([(end_d[k] - start[k]).flatten() for k in start])
    assert float((update_d - update_s).norm()) <= 2e-3 * float(update_s.norm())
    # Greedy decoding of the two runs' weights gives the same errors on the eval set.
    s = json.loads((single_logs / "rank0.json").read_text())["results"]
    d = json.loads((ddp_logs / "rank0.json").read_text())["results"]
    for stage in ("general", "adapt"):
        for key in ("errors", "ref_words", "num_utts"):
            assert s[stage]["general_test"][key] == d[stage]["general_test"][key], (stage, key)
