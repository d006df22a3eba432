"""End-to-end generation on tiny inputs: manifests, bad input, determinism, shards, resume, CLI."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner
from lhotse import CutSet, RecordingSet, SupervisionSet

from synthasr.cli import cli
from tts_gen.engines.base import EngineUnavailableError
from tts_gen.generate import (CombineError, FailureThresholdExceeded, InputError, OutputNotWritableError,
                              ShardSpecError, assign_voice, combine_shards, generate, parse_shard, read_texts)
from tts_gen.voices import UnknownVoiceError, Voice, voices_by_engine

ESPEAK = shutil.which("espeak-ng")
VOICES = [Voice.espeak("en-us", "f3", 175, 50), Voice.espeak("en-gb-scotland", "m2", 160, 40),
          Voice.espeak("en-029", "", 190, 60), Voice.espeak("en-gb-x-rp", "klatt", 150, 55)]
LINES = ["Take 20mg of ibuprofen twice daily.", "", "Metformin with meals", "Stop aspirin 3 days before surgery",
         "Call your doctor"]


def _write(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _fake_espeak(tmp_path: Path, fail_on: str = "", sleep: float = 0.0) -> str:
    """A wrapper that fails on texts containing ``fail_on`` and otherwise runs the real espeak-ng."""
    script = tmp_path / "fake-espeak-ng"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$1" in --voices*) exec {ESPEAK} "$@";; esac
        text=$(cat)
        case "$text" in *{fail_on or '@@never@@'}*) echo "cannot speak this" >&2; exit 3;; esac
        sleep {sleep}
        printf '%s' "$text" | exec {ESPEAK} "$@"
        """))
    script.chmod(0o755)
    return str(script)


def _sups(path: Path):
    return [s.to_dict() for s in SupervisionSet.from_file(path)]


def test_generate_writes_valid_manifests(tmp_path, caplog):
    text = _write(tmp_path / "in.txt", LINES)
    with caplog.at_level(logging.WARNING, logger="tts_gen"):
        summary = generate(text, tmp_path / "out", VOICES, domain="medication", prefix="med", progress=False)
    assert "in.txt:2: empty line skipped" in caplog.text
    assert summary.utterances == 4 and summary.failures == 0
    assert summary.distinct_voices == len({s["speaker"] for s in _sups(tmp_path / "out/med_supervisions.jsonl.gz")})
    sups = _sups(tmp_path / "out" / "med_supervisions.jsonl.gz")
    assert [s["id"] for s in sups] == ["med-000001", "med-000003", "med-000004", "med-000005"]
    first = sups[0]
    assert first["text"] == "take twenty milligrams of ibuprofen twice daily"
    assert first["language"] == "English" and first["speaker"] in {v.id for v in VOICES}
    assert first["custom"] == {"domain": "medication", "source": "synthetic", "engine": "espeak",
                               "voice": first["speaker"], "orig_text": LINES[0]}
    recs = RecordingSet.from_file(tmp_path / "out" / "med_recordings.jsonl.gz")
    for rec in recs:
        audio, rate = sf.read(rec.sources[0].source)
        assert rate == 16000 and audio.ndim == 1 and len(audio) == rec.num_samples
        assert rec.sources[0].source.endswith(f"audio/med/{rec.id}.flac")
    cuts = CutSet.from_file(tmp_path / "out" / "med_cuts.jsonl.gz")
    assert len(cuts) == 4 and cuts[0].supervisions[0].text == first["text"]
    assert summary.hours == pytest.approx(sum(r.duration for r in recs) / 3600)
    assert not list((tmp_path / "out").rglob(".*tmp*"))  # no temp files left behind


def test_jsonl_input_and_duplicate_ids(tmp_path):
    good = _write(tmp_path / "in.jsonl", [json.dumps({"id": "a1", "text": "one pill"}), json.dumps({"id": "b2", "text": "two pills"})])
    assert [(i.id, i.text, i.line) for i in read_texts(good, "x")] == [("a1", "one pill", 1), ("b2", "two pills", 2)]
    dup = _write(tmp_path / "dup.jsonl", [json.dumps({"id": "a", "text": "x"}), "", json.dumps({"id": "a", "text": "y"})])
    with pytest.raises(InputError, match=r"dup.jsonl:3: duplicate id 'a' \(first on line 1\)"):
        read_texts(dup, "x")
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"id": "a", "text": "x"}), "{not json"])
    with pytest.raises(InputError, match="bad.jsonl:2: invalid JSON"):
        read_texts(bad, "x")
    slash = _write(tmp_path / "slash.jsonl", [json.dumps({"id": "../a", "text": "x"})])
    with pytest.raises(InputError, match="slash.jsonl:1: invalid id"):
        read_texts(slash, "x")


def test_unmappable_and_engine_failures_are_counted(tmp_path, caplog):
    lines = ["one tablet", "hello \u2603 world", "please explode now", "two tablets", "three tablets"]
    text = _write(tmp_path / "in.txt", lines)
    opts = {"espeak": {"binary": _fake_espeak(tmp_path, fail_on="explode")}}
    with caplog.at_level(logging.WARNING, logger="tts_gen"):
        with pytest.raises(FailureThresholdExceeded, match=r"2 of 5 utterances failed \(40.0% > 5.0%\)") as err:
            generate(text, tmp_path / "out", VOICES, "med", "m", engine_opts=opts, progress=False)
    assert "in.txt:2: skipped" in caplog.text and "U+2603" in caplog.text
    assert "in.txt:3: skipped" in caplog.text and "cannot speak this" in caplog.text
    assert [f["line"] for f in err.value.summary.failed] == [2, 3]
    failures = [json.loads(x) for x in (tmp_path / "out" / "m_failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["m-000002", "m-000003"]
    # the successes are still written; a lenient threshold makes the same run succeed
    assert len(_sups(tmp_path / "out" / "m_supervisions.jsonl.gz")) == 3
    summary = generate(text, tmp_path / "out", VOICES, "med", "m", engine_opts=opts, failure_threshold=0.5, progress=False)
    assert summary.failures == 2 and summary.utterances == 3 and summary.resumed == 3


def test_unknown_voice_missing_binary_and_unwritable_output(tmp_path):
    text = _write(tmp_path / "in.txt", ["one tablet"])
    with pytest.raises(UnknownVoiceError, match="close: en-gb-scotland"):
        generate(text, tmp_path / "o1", [Voice.espeak("en-gb-scotlnd")], "d", "p", progress=False)
    with pytest.raises(EngineUnavailableError, match="apt-get install espeak-ng"):
        generate(text, tmp_path / "o2", VOICES, "d", "p", engine_opts={"espeak": {"binary": str(tmp_path / "none")}},
                 progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritableError, match=f"output directory not writable: {blocker}/out"):
        generate(text, blocker / "out", VOICES, "d", "p", progress=False)


def test_voice_assignment_is_deterministic_and_weighted():
    groups = voices_by_engine(VOICES + [Voice.piper("en_US-joe-medium", 1.05)])
    picks = [assign_voice(f"utt{i}", 0, groups)[0].engine for i in range(2000)]
    assert 0.11 < picks.count("piper") / 2000 < 0.19  # default espeak 0.85 / piper 0.15
    assert assign_voice("utt7", 0, groups) == assign_voice("utt7", 0, dict(reversed(list(groups.items()))))
    only_piper = [assign_voice(f"u{i}", 0, groups, {"espeak": 0.0})[0].engine for i in range(50)]
    assert set(only_piper) == {"piper"}


def test_jobs_and_shards_give_identical_manifests(tmp_path):
    text = _write(tmp_path / "in.txt", [f"take {i} tablets of drug number {i}" for i in range(1, 9)])
    one = generate(text, tmp_path / "one", VOICES, "d", "p", num_jobs=1, seed=5, progress=False)
    two = generate(text, tmp_path / "two", VOICES, "d", "p", num_jobs=2, seed=5, progress=False)
    assert one.utterances == two.utterances == 8
    assert _sups(tmp_path / "one/p_supervisions.jsonl.gz") == _sups(tmp_path / "two/p_supervisions.jsonl.gz")
    for k in (1, 2, 3):
        generate(text, tmp_path / "sh", VOICES, "d", "p", seed=5, shard=f"{k}/3", progress=False)
    assert (tmp_path / "sh" / "p_cuts.2-of-3.jsonl.gz").exists()
    result = combine_shards(tmp_path / "sh", "p")
    assert result["shards"] == 3 and result["utterances"] == 8
    assert _sups(tmp_path / "sh/p_supervisions.jsonl.gz") == _sups(tmp_path / "one/p_supervisions.jsonl.gz")
    assert len(CutSet.from_file(tmp_path / "sh/p_cuts.jsonl.gz")) == 8
    (tmp_path / "sh" / "p_recordings.2-of-3.jsonl.gz").unlink()
    with pytest.raises(CombineError, match="missing shard 2-of-3"):
        combine_shards(tmp_path / "sh", "p", num_shards=3)


def test_shard_spec_errors():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x", "1-4"):
        with pytest.raises(ShardSpecError):
            parse_shard(bad)


def test_resume_skips_verified_and_redoes_corrupt(tmp_path):
    text = _write(tmp_path / "in.txt", ["one tablet", "two tablets", "three tablets"])
    first = generate(text, tmp_path / "out", VOICES, "d", "p", progress=False)
    sups = _sups(tmp_path / "out/p_supervisions.jsonl.gz")
    again = generate(text, tmp_path / "out", VOICES, "d", "p", progress=False)
    assert (again.resumed, again.synthesized) == (3, 0)
    flac = tmp_path / "out" / "audio" / "p" / "p-000002.flac"
    flac.write_bytes(flac.read_bytes()[:200])  # truncated: must not be trusted
    third = generate(text, tmp_path / "out", VOICES, "d", "p", progress=False)
    assert (third.resumed, third.synthesized) == (2, 1)
    assert _sups(tmp_path / "out/p_supervisions.jsonl.gz") == sups == _sups(tmp_path / "out/p_supervisions.jsonl.gz")
    assert first.hours == pytest.approx(third.hours)
    # a different seed reassigns voices: exactly the utterances whose voice changed are redone
    other = generate(text, tmp_path / "out", VOICES, "d", "p", seed=99, progress=False)
    changed = sum(a["speaker"] != b["speaker"] for a, b in zip(sups, _sups(tmp_path / "out/p_supervisions.jsonl.gz")))
    assert changed >= 1 and (other.synthesized, other.resumed) == (changed, 3 - changed)


RUNNER = """
import sys
from tts_gen.generate import generate
from tts_gen.voices import Voice
voices = [Voice.parse(v) for v in sys.argv[4].split(",")]
generate(sys.argv[1], sys.argv[2], voices, "d", "p", engine_opts={{"espeak": {{"binary": sys.argv[3]}}}}, progress=False)
"""


def test_sigkill_mid_run_then_rerun_matches_clean_run(tmp_path):
    lines = [f"dose number {i}" for i in range(1, 25)]
    text = _write(tmp_path / "in.txt", lines)
    slow = _fake_espeak(tmp_path, sleep=0.15)
    out = tmp_path / "out"
    ledger = out / ".tts_gen" / "p.ledger.jsonl"
    voices = ",".join(v.id for v in VOICES)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER.format(), str(text), str(out), slow, voices])
    deadline = time.time() + 30
    while time.time() < deadline:
        if ledger.exists() and len(ledger.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(ledger.read_text().splitlines())
    assert 4 <= done_before < len(lines)
    assert not (out / "p_supervisions.jsonl.gz").exists()  # no partial manifest is visible
    resumed = generate(text, out, VOICES, "d", "p", progress=False)
    assert resumed.resumed >= done_before - 1 and resumed.utterances == len(lines)
    clean = generate(text, tmp_path / "clean", VOICES, "d", "p", progress=False)
    assert _sups(out / "p_supervisions.jsonl.gz") == _sups(tmp_path / "clean/p_supervisions.jsonl.gz")
    assert clean.hours == pytest.approx(resumed.hours)


# --- CLI -------------------------------------------------------------------------------------------
def test_cli_tts_gen_voices_and_combine(tmp_path):
    runner = CliRunner()
    text = _write(tmp_path / "in.txt", ["one tablet", "two tablets", "three tablets", "four tablets"])
    res = runner.invoke(cli, ["tts-voices", "split", "--engines", "espeak", "--holdout", "espeak:name=en-gb-scotland",
                              "--train-out", str(tmp_path / "train.txt"), "--test-out", str(tmp_path / "test.txt")])
    assert res.exit_code == 0, res.output
    assert "scotland" not in (tmp_path / "train.txt").read_text()
    for k in (1, 2):
        res = runner.invoke(cli, ["tts-gen", str(text), str(tmp_path / "out"), "--domain", "med", "--prefix", "tr",
                                  "--engines", "espeak", "--num-voices", "6", "--exclude-voices-file",
                                  str(tmp_path / "test.txt"), "--shard", f"{k}/2", "--no-progress"])
        assert res.exit_code == 0, res.output
        assert f"tr shard {k}/2: 2 utterances" in res.output
    res = runner.invoke(cli, ["tts-combine", str(tmp_path / "out"), "--prefix", "tr"])
    assert res.exit_code == 0 and "combined 2 shards, 4 utterances" in res.output
    speakers = {s["speaker"] for s in _sups(tmp_path / "out/tr_supervisions.jsonl.gz")}
    test_ids = set((tmp_path / "test.txt").read_text().split())
    assert speakers and not speakers & test_ids
    assert len((tmp_path / "out" / "tr_voices.txt").read_text().split()) == 6
    res = runner.invoke(cli, ["tts-gen", str(text), str(tmp_path / "out2"), "--domain", "med", "--prefix", "tr",
                              "--voices-file", str(tmp_path / "train.txt"), "--num-voices", "5", "--no-progress"])
    assert res.exit_code == 0, res.output
    chosen = (tmp_path / "out2" / "tr_voices.txt").read_text().split()
    assert len(chosen) == 5 and set(chosen) <= set((tmp_path / "train.txt").read_text().split())
    res = runner.invoke(cli, ["tts-voices", "sample", "--engines", "espeak,piper", "-n", "50", "--seed", "1"])
    assert res.exit_code == 0
    ids = res.output.split()
    assert len(set(ids)) == 50 and {i.split(":")[0] for i in ids} == {"espeak", "piper"}


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    runner = CliRunner()
    text = _write(tmp_path / "in.txt", ["one tablet", "hello \u2603"])
    vfile = _write(tmp_path / "v.txt", ["espeak:en-gb-scotlnd+f3:r165:p42"])
    res = runner.invoke(cli, ["tts-gen", str(text), str(tmp_path / "o"), "--domain", "d", "--prefix", "p",
                              "--voices-file", str(vfile), "--no-progress"])
    assert res.exit_code == 1 and "Error: unknown espeak voice 'en-gb-scotlnd'" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(cli, ["tts-gen", str(text), str(tmp_path / "o"), "--domain", "d", "--prefix", "p",
                              "--engines", "espeak", "--num-voices", "2", "--no-progress"])
    assert res.exit_code == 1 and "1 of 2 utterances failed (50.0% > 5.0%)" in res.output
    res = runner.invoke(cli, ["tts-gen", str(text), str(tmp_path / "o"), "--domain", "d", "--prefix", "p",
                              "--engines", "espeak", "--num-voices", "2", "--failure-threshold", "0.6", "--no-progress"])
    assert res.exit_code == 0 and "1 failures (50.0%)" in res.output
    monkeypatch.setenv("PATH", str(tmp_path))
    res = runner.invoke(cli, ["tts-gen", str(text), str(tmp_path / "o"), "--domain", "d", "--prefix", "p",
                              "--engines", "espeak", "--no-progress"])
    assert res.exit_code == 1 and "apt-get install espeak-ng" in res.output


# --- hostile input (issue 12) ----------------------------------------------------------------------
def test_lines_end_at_newline_only_and_keep_their_numbers(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("one tablet\rtwo\x0bthree\r\n\x85four\u2028five\n\nsix\n".encode("utf-8"))
    items = read_texts(path, "x")
    assert [(i.id, i.line) for i in items] == [("x-000001", 1), ("x-000002", 2), ("x-000004", 4)]
    assert items[0].text == "one tablet\rtwo\x0bthree" and items[1].text == "four\u2028five"
    jsonl = tmp_path / "in.jsonl"  # raw U+2028 is legal inside a JSON string
    jsonl.write_bytes('{"id": "a", "text": "one\u2028pill"}\r\n{"id": "b", "text": "two"}'.encode("utf-8"))
    assert [(i.id, i.text, i.line) for i in read_texts(jsonl, "x")] == [("a", "one\u2028pill", 1), ("b", "two", 2)]


def test_empty_input_and_overlong_lines_are_refused_before_synthesis(tmp_path):
    for name, content in (("empty.txt", ""), ("blank.txt", "\n \r\n\t\n")):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(InputError, match=rf"{name}: no text to speak"):
            generate(path, tmp_path / "out", VOICES, "d", "p", progress=False)
    text = _write(tmp_path / "long.txt", ["one tablet", " ".join(["dose"] * 101), "two tablets"])
    with pytest.raises(InputError, match=r"long\.txt:2: utterance too long: 101 words"):
        generate(text, tmp_path / "out", VOICES, "d", "p", progress=False)
    with pytest.raises(InputError, match=r"long\.txt:2: .*max_chars=300"):
        generate(text, tmp_path / "out", VOICES, "d", "p", progress=False, max_words=1000, max_chars=300)
    assert not (tmp_path / "out" / "audio").exists()  # refused before anything was spoken
    fine = generate(text, tmp_path / "out", VOICES[:1], "d", "p", progress=False, max_words=101)
    assert fine.utterances == 3


def _children(pid: int):
    """Pids of the live children of ``pid`` (Linux /proc)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited; only its parent's wait() is missing


def _python_children(pid: int):
    out = []
    for child in _children(pid):
        try:
            if Path(f"/proc/{child}/exe").resolve() == Path(sys.executable).resolve():
                out.append(child)
        except OSError:
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL,  # SIGTERM: same kernel path (parent death), so slow-only
                                 pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_killing_the_parent_does_not_orphan_pool_workers(tmp_path, sig):
    text = _write(tmp_path / "in.txt", [f"dose number {i}" for i in range(1, 41)])
    slow = _fake_espeak(tmp_path, sleep=0.3)
    runner = RUNNER.format().replace("progress=False)", "progress=False, num_jobs=2)")
    proc = subprocess.Popen([sys.executable, "-c", runner, str(text), str(tmp_path / "out"), slow,
                             ",".join(v.id for v in VOICES)])
    workers = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.05)
            workers = _python_children(proc.pid)
        assert len(workers) == 2, workers
        time.sleep(0.5)  # let them start working
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        orphans = [p for p in workers if _alive(p)]
        assert not orphans, f"pool workers outlived their parent: {orphans}"
    finally:
        for p in [proc.pid, *workers]:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
