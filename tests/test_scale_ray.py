"""Ray as the tts-gen executor: starts, runs a task and a generation chunk (skipped where ray is absent)."""
from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from tts_gen.executors import make_executor, run_chunk  # noqa: E402


def test_ray_executor_runs_a_task_and_a_synthesis_chunk(tmp_path):
    task = {"id": "u1", "text": "take one tablet", "voice": "espeak:en-us+f3:r175:p50", "seed": 1,
            "path": str(tmp_path / "u1.flac")}
    with make_executor("ray", num_jobs=1) as ex:
        assert ex.submit(pow, 2, 10).result() == 1024
        (result,) = ex.submit(run_chunk, {}, [task]).result()
    assert result["ok"] and result["num_samples"] > 0 and (tmp_path / "u1.flac").is_file()
