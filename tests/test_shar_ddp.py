"""A schedule whose source is a Shar directory, under torchrun (2 ranks, gloo, CPU): both ranks stream
the shards in the same per-epoch order, take their share of the batches and end with the same weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts, train_tokenizer  # noqa: E402

from synthasr.data.shar import write_shar  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

LAUNCHER = """
import hashlib, json, os, sys
import torch
torch.set_num_threads(1)
import synthasr.train.trainer as trainer
from synthasr.train.schedule import run_schedule
schedule, exp_dir, out = sys.argv[1:4]
seen = []
real_fit = trainer.fit
def fit(cfg, stage_dir, train_cuts, *args, **kwargs):
    final = real_fit(cfg, stage_dir, train_cuts, *args, **kwargs)
    state = kwargs["model"].state_dict()
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    seen.append(h.hexdigest())
    return final
trainer.fit = fit
run_schedule(schedule, exp_dir=exp_dir)
with open(os.path.join(out, "rank" + os.environ.get("RANK", "0") + ".json"), "w") as f:
    json.dump({"digest": seen[0]}, f)
"""


def test_schedule_on_a_shar_source_under_torchrun(tmp_path):
    cuts = make_tone_cuts(tmp_path / "audio", n=12, seed=4, min_dur=0.8, max_dur=1.2)
    write_shar(cuts, tmp_path / "shar", shard_size=3)
    cuts.subset(first=4).to_file(tmp_path / "test.jsonl.gz")
    train_tokenizer([c.supervisions[0].text for c in cuts], tmp_path / "bpe", vocab_size=20)
    schedule = {
        "base": {
            "bpe_model": str(tmp_path / "bpe" / "bpe.model"),
            "train": {"seed": 3, "model": {"preset": "tiny"}, "device": "cpu", "progress_bar": False,
                      "checkpoint_every_n_steps": 0, "valid_wer": False, "optim": {"warmup_steps": 0},
                      "data": {"max_duration": 3.0, "num_buckets": 2, "spec_augment": {"enabled": False}}},
            "sources": {"tones": {"cuts": [str(tmp_path / "shar")], "domain": "general"}},
            "eval_sets": {"test": str(tmp_path / "test.jsonl.gz")},
        },
        "stages": [{"name": "shar", "init": "scratch", "data": {"tones": 1.0}, "max_steps": 3, "eval": []}],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(schedule))
    (tmp_path / "launch.py").write_text(LAUNCHER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "launch.py"), str(tmp_path / "s.yaml"), str(tmp_path / "exp"),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [json.loads((tmp_path / f"rank{r}.json").read_text())["digest"] for r in (0, 1)]
    assert digests[0] == digests[1]
    meta = __import__("torch").load(tmp_path / "exp" / "shar" / "final.pt", map_location="cpu", weights_only=False)["meta"]
    assert meta["step"] == 3 and sum(meta["source_counts"].values()) > 0
