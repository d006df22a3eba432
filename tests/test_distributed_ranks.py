"""Rank coordination of a schedule (synthasr.train.distributed) with two real gloo processes: rank 0's
result reaches every rank, rank 0 writes before the others read, and a failure on rank 0 becomes a
one-line error on the others instead of a hang."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, sys
from pathlib import Path
from synthasr.train.distributed import RankError, schedule_ranks

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
report = {}
with schedule_ranks("cpu") as ranks:
    report["world"] = [ranks.world_size, ranks.rank, ranks.is_main]
    report["value"] = ranks.run_on_main(lambda: {"from": ranks.rank, "data": [1.5, "x"]}, "computing a value")
    flag = out / "written-by-rank-0.txt"
    def write_or_read():
        if ranks.is_main:
            flag.write_text("ready")
            return "wrote"
        return flag.read_text()  # rank 0 has finished by now
    report["main_first"] = ranks.main_first(write_or_read, "writing the flag")
    def fail():
        raise ValueError("disk full")
    try:
        ranks.run_on_main(fail, "writing the report")
    except RankError as e:
        report["error"] = ["RankError", str(e)]
    except ValueError as e:
        report["error"] = ["ValueError", str(e)]
    ranks.barrier()
(out / f"rank{rank}.json").write_text(json.dumps(report))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_0_results_and_errors_reach_every_rank(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WORLD_SIZE="2", RANK=str(rank),
                   LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == [2, 0, True] and r1["world"] == [2, 1, False]
    assert r0["value"] == r1["value"] == {"from": 0, "data": [1.5, "x"]}
    assert r0["main_first"] == "wrote" and r1["main_first"] == "ready"
    assert r0["error"] == ["ValueError", "disk full"]
    assert r1["error"] == ["RankError", "rank 0 failed while writing the report: ValueError: disk full"]
