"""Exact resume: a training run SIGKILLed mid-epoch and restarted ends bit-identical to an
uninterrupted run; a writer killed mid-save never corrupts the previous checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts, state_dicts_equal, tiny_train_config, train_tokenizer  # noqa: E402

from synthasr.checkpoint import load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = "from synthasr.cli import cli; cli()"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cuts = make_tone_cuts(root / "audio", n=12, seed=5, min_dur=0.8, max_dur=1.2)
    cuts.to_file(root / "cuts.jsonl.gz")
    train_tokenizer([c.supervisions[0].text for c in cuts], root / "bpe", vocab_size=20)
    config = {
        "seed": 3,
        "model": {"preset": "tiny", "dropout": 0.1},  # dropout + SpecAugment: RNG state must resume too
        "loss": {"warmup_steps": 5},
        "optim": {"lr": 0.003, "warmup_steps": 4},
        "data": {"max_duration": 2.5, "num_buckets": 2, "shuffle": True,
                 "spec_augment": {"enabled": True, "time_warp_factor": 5, "frames_mask_size": 10,
                                  "features_mask_size": 10, "num_frame_masks": 2, "p": 1.0}},
        "num_epochs": 3, "checkpoint_every_n_steps": 4, "keep_last_k": 0, "log_every_n_steps": 2,
        "device": "cpu", "progress_bar": False,
        "train_cuts": str(root / "cuts.jsonl.gz"), "bpe_model": str(root / "bpe" / "bpe.model"),
    }
    conf = root / "train.yaml"
    conf.write_text(yaml.safe_dump(config))
    return root, conf


def _train_cmd(conf: Path, exp: Path, *extra: str):
    return [sys.executable, "-c", CLI, "train", "--config", str(conf), "--exp-dir", str(exp), *extra]


def test_sigkill_mid_epoch_then_resume_is_bit_exact(setup):
    root, conf = setup
    ref = root / "ref"
    done = subprocess.run(_train_cmd(conf, ref), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    steps_per_epoch = int(load_checkpoint(ref / "epoch-1.pt")["train_state"]["step"])
    assert steps_per_epoch % 4 != 0, "checkpoint-4 must fall mid-epoch for this test to mean anything"

    exp = root / "killed"
    # The interrupted run builds batches in a DataLoader worker; the reference in-process.
    cmd = _train_cmd(conf, exp, "-o", "data.num_workers=1")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (exp / "checkpoint-4.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (exp / "final.pt").exists(), "run finished before it could be killed"

    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    log_text = "\n".join(p.read_text() for p in (exp / "log").glob("log-train-*.txt"))
    resumed = [line for line in log_text.splitlines() if "resumed from" in line]
    assert resumed and "checkpoint-" in resumed[0]
    batch_in_epoch = int(resumed[0].rsplit("batch ", 1)[1].rstrip(")"))
    assert batch_in_epoch > 0  # genuinely mid-epoch

    a = load_checkpoint(ref / "final.pt")
    b = load_checkpoint(exp / "final.pt")
    assert state_dicts_equal(a["model"], b["model"]) is None
    assert a["meta"]["source_counts"] == b["meta"]["source_counts"]
    assert a["meta"]["step"] == b["meta"]["step"] == 3 * steps_per_epoch


_WRITER = """
import sys, torch
from synthasr.checkpoint import save_checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    state = {"w": torch.full((4_000_000,), float(i))}  # 16 MB: the write takes a while
    save_checkpoint(path, state, {"i": i}, train_state={"step": i})
    print(i, flush=True)
"""


def _kill_during_write(script: Path, target: Path) -> bool:
    """Start the writer, SIGKILL it while a temp file is being written; True if one was left behind."""
    proc = subprocess.Popen([sys.executable, str(script), str(target)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # one complete checkpoint exists
        assert first.strip(), proc.stderr.read()[-2000:]
        deadline = time.time() + 30
        while time.time() < deadline:
            partial = [p for p in target.parent.glob(".checkpoint-1.tmp*.pt") if p.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.stdout.close()
        proc.stderr.close()
    leftovers = list(target.parent.glob(".checkpoint-1.tmp*.pt"))
    for p in leftovers:  # what the trainer's startup cleanup does
        p.unlink()
    return bool(leftovers)


def test_sigkill_during_checkpoint_write_keeps_previous_loadable(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    target = tmp_path / "checkpoint-1.pt"
    mid_write = 0
    for _ in range(3):
        mid_write += _kill_during_write(script, target)
        ckpt = load_checkpoint(target)
        i = ckpt["model_config"]["i"]
        assert ckpt["train_state"]["step"] == i
        assert torch.equal(ckpt["model"]["w"], torch.full((4_000_000,), float(i)))
        if mid_write:
            break
    assert mid_write >= 1  # a kill really interrupted a write (a partial temp file was left)


# ----------------------------------------------------------------------------- pruning and bad resume state


def _step_checkpoint(exp: Path, step: int) -> Path:
    from synthasr.checkpoint import save_checkpoint

    return save_checkpoint(exp / f"checkpoint-{step}.pt", {"w": torch.full((3,), float(step))},
                           {"preset": "tiny", "vocab_size": 9}, train_state={"step": step})


def _names(exp: Path):
    return sorted((p.name for p in exp.glob("checkpoint-*.pt")), key=lambda n: int(n.split("-")[1][:-3]))


def test_prune_never_keeps_an_unreadable_checkpoint_instead_of_good_ones(tmp_path):
    from synthasr.train.trainer import prune_checkpoints

    (tmp_path / "checkpoint-999.pt").write_bytes(b"\x00" * 100)  # unreadable, largest step
    for step in (2, 4, 6):
        _step_checkpoint(tmp_path, step)
        prune_checkpoints(tmp_path, keep_last_k=1, protect=tmp_path / f"checkpoint-{step}.pt")
    assert _names(tmp_path) == ["checkpoint-6.pt", "checkpoint-999.pt"]  # the bad file is left, never counted
    prune_checkpoints(tmp_path, keep_last_k=2)
    assert _names(tmp_path) == ["checkpoint-6.pt", "checkpoint-999.pt"]


def test_prune_keeps_the_k_newest_loadable_and_the_one_just_written(tmp_path):
    from synthasr.train.trainer import prune_checkpoints

    for step in (1, 2, 3, 4):
        _step_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-5.pt").write_bytes(b"PK\x03\x04 truncated")
    prune_checkpoints(tmp_path, keep_last_k=2)
    assert _names(tmp_path) == ["checkpoint-3.pt", "checkpoint-4.pt", "checkpoint-5.pt"]
    _step_checkpoint(tmp_path, 1000)  # a loadable leftover with a larger step than the run's own
    _step_checkpoint(tmp_path, 6)
    prune_checkpoints(tmp_path, keep_last_k=1, protect=tmp_path / "checkpoint-6.pt")
    assert _names(tmp_path) == ["checkpoint-5.pt", "checkpoint-6.pt", "checkpoint-1000.pt"]


def _tamper_rng(ts):
    del ts["rng"]


def _tamper_optimizer(ts):
    ts["optimizer"] = {"state": {}, "param_groups": []}


def _tamper_step_type(ts):
    ts["step"] = "2"


@pytest.mark.parametrize("tamper, message", [
    (_tamper_rng, "malformed train_state: missing key 'rng'"),
    (_tamper_step_type, "malformed train_state: step must be int, got str"),
    (_tamper_optimizer, "cannot resume from this checkpoint: .*parameter groups"),
])
def test_malformed_train_state_on_resume_is_one_line_naming_the_file(setup, tmp_path, tamper, message):
    from lhotse import load_manifest

    from synthasr.tokenizer import Tokenizer
    from synthasr.train.trainer import TrainingError, fit

    root, _ = setup
    cuts = load_manifest(root / "cuts.jsonl.gz")
    tok = Tokenizer.load(root / "bpe" / "bpe.model")
    cfg = tiny_train_config(max_steps=2, checkpoint_every_n_steps=2, keep_last_k=0)
    final = fit(cfg, tmp_path, cuts, None, tok)
    final.unlink()
    path = tmp_path / "checkpoint-2.pt"
    ckpt = load_checkpoint(path)
    tamper(ckpt["train_state"])
    torch.save(ckpt, path)
    with pytest.raises(TrainingError, match=message) as e:
        fit(cfg, tmp_path, cuts, None, tok)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
