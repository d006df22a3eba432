"""Ray as the tts-gen executor: starts, runs a task, and a small generation matches the local pool
(skipped where ray is absent)."""
from __future__ import annotations

import gzip

import pytest

ray = pytest.importorskip("ray")

from tts_gen.executors import make_executor  # noqa: E402
from tts_gen.generate import generate  # noqa: E402
from tts_gen.voices import Voice  # noqa: E402

VOICES = [Voice.espeak("en-us", "f3", 175, 50), Voice.espeak("en-gb-scotland", "m2", 160, 40)]


def test_ray_executor_runs_a_task_and_a_generation(tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("take one tablet\ntwo tablets at night\nthree drops twice daily\n", encoding="utf-8")
    with make_executor("ray", num_jobs=1) as ex:
        assert ex.submit(pow, 2, 10).result() == 1024
        summary = generate(text, tmp_path / "ray", VOICES, "med", "p", seed=3, progress=False, executor=ex)
    local = generate(text, tmp_path / "local", VOICES, "med", "p", seed=3, progress=False)
    assert summary.utterances == local.utterances == 3
    for name in ("p_supervisions.jsonl.gz", "p_recordings.jsonl.gz"):
        ours = gzip.decompress((tmp_path / "ray" / name).read_bytes()).replace(b"/ray/", b"/X/")
        assert ours == gzip.decompress((tmp_path / "local" / name).read_bytes()).replace(b"/local/", b"/X/")
    for flac in (tmp_path / "local" / "audio" / "p").glob("*.flac"):
        assert (tmp_path / "ray" / "audio" / "p" / flac.name).read_bytes() == flac.read_bytes()
