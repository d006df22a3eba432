"""Distributed generation on a Dask LocalCluster (2 workers): same outputs as the local pool, a worker
killed mid-task loses nothing, an interrupted run resumes, an unreachable scheduler is one line."""
from __future__ import annotations

import gzip
import os
import signal
import sys
from pathlib import Path
from typing import Dict

import pytest

distributed = pytest.importorskip("distributed")

from tts_gen.executors import ExecutorError, make_executor  # noqa: E402
from tts_gen.generate import _read_ledger, generate  # noqa: E402
from tts_gen.voices import Voice  # noqa: E402

VOICES = [Voice.espeak("en-us", "f3", 175, 50), Voice.espeak("en-gb-scotland", "m2", 160, 40),
          Voice.espeak("en-029", "", 190, 60)]
LINES = [f"take {i} tablets of drug number {i} with water" for i in range(1, 17)]
MANIFESTS = ("p_recordings.jsonl.gz", "p_supervisions.jsonl.gz", "p_cuts.jsonl.gz", "p_failures.jsonl")


@pytest.fixture(scope="module")
def cluster():
    """One 2-worker LocalCluster for the module (starting one takes seconds on a busy 2-core machine)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault-injecting wrappers below
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def _outputs(root: Path) -> Dict[str, bytes]:
    """Manifest contents (decompressed: gzip stamps the write time) and every FLAC, byte for byte."""
    out = {}
    for name in MANIFESTS:
        data = (root / name).read_bytes()
        out[name] = gzip.decompress(data) if name.endswith(".gz") else data
    for flac in sorted((root / "audio").rglob("*.flac")):
        out[str(flac.relative_to(root))] = flac.read_bytes()
    return out


def _run(workdir: Path, text: Path, **kwargs):
    """Generate into the relative path ``out`` from ``workdir``, so audio paths in manifests compare equal."""
    cwd = os.getcwd()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    try:
        return generate(text, "out", VOICES, "med", "p", seed=7, progress=False, **kwargs)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def local_outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    summary = _run(root, _text(root), num_jobs=2)
    assert summary.utterances == len(LINES)
    return _outputs(root / "out")


class _Wrapped:
    """An executor that routes every task through ``wrapper(fn, *args)`` (fault injection)."""

    def __init__(self, inner, wrapper, *extra) -> None:
        self.inner, self.wrapper, self.extra = inner, wrapper, extra
        self.synthasr_workers = inner.synthasr_workers

    def submit(self, fn, *args):
        return self.inner.submit(self.wrapper, *self.extra, fn, *args)


def _die_once(flag: str, fn, *args):
    """The first task to claim ``flag`` kills its own worker process (SIGKILL, mid-task); retries run."""
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return fn(*args)
    os.kill(os.getpid(), signal.SIGKILL)


def _fail_on(utt_id: str, fn, opts, tasks):
    if any(t["id"] == utt_id for t in tasks):
        raise RuntimeError(f"injected failure on {utt_id}")
    return fn(opts, tasks)


def test_dask_matches_local_pool(cluster, tmp_path, local_outputs):
    with make_executor("dask", scheduler=cluster.scheduler_address) as ex:
        summary = _run(tmp_path, _text(tmp_path), executor=ex)
    assert (summary.utterances, summary.synthesized, summary.failures) == (len(LINES), len(LINES), 0)
    assert _outputs(tmp_path / "out") == local_outputs


def test_dask_worker_killed_mid_task_loses_nothing(cluster, tmp_path, local_outputs):
    flag = tmp_path / "killed"
    with make_executor("dask", scheduler=cluster.scheduler_address) as ex:
        summary = _run(tmp_path, _text(tmp_path), executor=_Wrapped(ex, _die_once, str(flag)))
    assert flag.exists()  # a worker did die mid-task
    assert (summary.utterances, summary.failures) == (len(LINES), 0)
    assert _outputs(tmp_path / "out") == local_outputs


def test_interrupted_dask_run_resumes_without_redoing(cluster, tmp_path, local_outputs):
    text = _text(tmp_path)
    with make_executor("dask", scheduler=cluster.scheduler_address) as ex:
        with pytest.raises(RuntimeError, match="injected failure on p-000016"):
            _run(tmp_path, text, executor=_Wrapped(ex, _fail_on, "p-000016"))
    ledger = _read_ledger(tmp_path / "out" / ".tts_gen" / "p.ledger.jsonl")
    assert 0 < len(ledger) < len(LINES) and not (tmp_path / "out" / "p_cuts.jsonl.gz").exists()
    stamps = {u: (tmp_path / "out" / "audio" / "p" / f"{u}.flac").stat().st_mtime_ns for u in ledger}
    with make_executor("dask", scheduler=cluster.scheduler_address) as ex:
        summary = _run(tmp_path, text, executor=ex)
    assert (summary.resumed, summary.synthesized) == (len(ledger), len(LINES) - len(ledger))
    assert all((tmp_path / "out" / "audio" / "p" / f"{u}.flac").stat().st_mtime_ns == t for u, t in stamps.items())
    assert _outputs(tmp_path / "out") == local_outputs


def test_shar_shards_and_features_written_on_dask(cluster, tmp_path, local_outputs):
    import numpy as np
    from lhotse import CutSet

    from synthasr.data.features import compute_fbank_shar
    from synthasr.data.shar import load_shar, write_shar

    _run(tmp_path, _text(tmp_path), num_jobs=1)
    cuts = CutSet.from_cuts(c.with_recording_path_prefix(str(tmp_path))  # absolute audio paths for the workers
                            for c in CutSet.from_file(tmp_path / "out" / "p_cuts.jsonl.gz"))
    with make_executor("dask", scheduler=cluster.scheduler_address) as ex:
        written = write_shar(cuts, tmp_path / "shar", shard_size=6, executor=ex)
        feats = compute_fbank_shar(tmp_path / "shar", tmp_path / "fbank", executor=ex)
    assert (written["shards"], written["written"], feats["shards"]) == (3, 3, 3)
    shar = list(load_shar(tmp_path / "shar", shuffle_shards=False))
    assert [c.id for c in shar] == [c.id for c in cuts]
    assert all(np.array_equal(a.load_audio(), b.load_audio()) for a, b in zip(shar, cuts))
    assert [c.id for c in load_shar(tmp_path / "fbank", shuffle_shards=False) if c.has_features] == [c.id for c in cuts]


def test_cli_on_a_dask_scheduler(cluster, tmp_path):
    from click.testing import CliRunner

    from synthasr.cli import cli

    voices = tmp_path / "voices.txt"
    voices.write_text("\n".join(v.id for v in VOICES) + "\n", encoding="utf-8")
    addr = cluster.scheduler_address
    res = CliRunner().invoke(cli, ["tts-gen", str(_text(tmp_path)), str(tmp_path / "out"), "--domain", "med",
                                   "--prefix", "p", "--voices-file", str(voices), "--seed", "7", "--no-progress",
                                   "--executor", "dask", "--scheduler", addr, "--shar-dir", str(tmp_path / "shar"),
                                   "--shar-shard-size", "8"])
    assert res.exit_code == 0, res.output
    assert f"p: {len(LINES)} utterances" in res.output and f"{len(LINES)} cuts in shards of 8" in res.output
    res = CliRunner().invoke(cli, ["compute-fbank", "--cuts", str(tmp_path / "shar"), "--shar-dir",
                                   str(tmp_path / "fbank"), "--executor", "dask", "--scheduler", addr])
    assert res.exit_code == 0 and f"{len(LINES)} cuts with 80-bin fbank in 2 shards (2 written" in res.output, res.output


def test_unreachable_scheduler_is_one_line():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ExecutorError) as err:
        with make_executor("dask", scheduler=f"tcp://127.0.0.1:{port}", connect_timeout=1):
            pass
    assert f"tcp://127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ExecutorError, match="needs --executor dask or ray"):
        with make_executor("local", scheduler="tcp://127.0.0.1:1"):
            pass
