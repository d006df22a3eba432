"""Hostile input to the CLI: every row must end with a non-zero exit and ONE stderr line naming the
culprit (file, file:line or key), never a traceback, never the same error twice (issue 12)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from synthasr.cli import cli
from synthasr.config import ConfigError, load_yaml
from synthasr.utils.io import OutputError, atomic_path, atomic_write, ensure_dir

ESPEAK_VOICE = "espeak:en-us+f3:r175:p50"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, Path]:
    """A tiny checkpoint, good and broken audio, broken configs and texts, a file in an output's way."""
    import torch

    from synthasr.checkpoint import save_checkpoint
    from synthasr.config import to_dict
    from synthasr.model import build_model
    from synthasr.tokenizer import Tokenizer, train_bpe

    root = tmp_path_factory.mktemp("hostile")
    torch.set_num_threads(1)
    bpe = train_bpe(["take one tablet twice daily", "call the doctor"] * 5, root / "lang", vocab_size=30,
                    hard_vocab_limit=False)
    tok = Tokenizer.load(bpe)
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": tok.vocab_size})
    f = {"ckpt": save_checkpoint(root / "model.pt", model.state_dict(), to_dict(model.config),
                                 {"sampling_rate": 16000, "num_mel_bins": 80}, tok.to_bytes())}
    speech = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    f["wav"] = root / "speech.wav"
    sf.write(f["wav"], speech, 16000, subtype="PCM_16")
    f["truncated_wav"] = root / "truncated.wav"
    f["truncated_wav"].write_bytes(f["wav"].read_bytes()[:20000])
    f["corrupt_wav"] = root / "corrupt.wav"
    f["corrupt_wav"].write_bytes(b"RIFF\x00\x00garbage" * 10)
    f["random_bytes"] = root / "random.pt"
    f["random_bytes"].write_bytes(np.random.default_rng(1).bytes(4096))
    texts = {
        "latin1.yaml": "model:\n  name: caf\xe9\n".encode("latin-1"),
        "duplicate.yaml": b"seed: 1\noptim:\n  lr: 0.001\n  lr: 0.01\n",
        "list.yaml": b"- seed: 1\n- seed: 2\n",
        "stages.yaml": b"stages: 5\nbase: {}\n",
        "empty.txt": b"",
        "long.txt": b"one tablet\n" + b"dose " * 150 + b"\n",
        "in.txt": b"one tablet\ntwo tablets\n",
        "a_file": b"I am a file, not a folder\n",
    }
    for name, data in texts.items():
        f[name] = root / name
        f[name].write_bytes(data)
    f["cuts"] = root / "cuts.jsonl.gz"
    f["cuts"].write_bytes(b"")
    f["train.yaml"] = root / "train.yaml"
    f["train.yaml"].write_text(f"bpe_model: {bpe}\ntrain_cuts: {f['cuts']}\nmodel: {{preset: tiny}}\n")
    return f


def _tts_gen(text: str, out: Callable[[Dict[str, Path]], str]) -> Callable[[Dict[str, Path]], List[str]]:
    return lambda f: ["tts-gen", str(f[text]), out(f), "--domain", "d", "--prefix", "p", "--voices-file",
                      str(f["voices"]), "--no-progress"]


# (id, argv builder, text the one stderr line must contain)
ROWS = [
    ("decode-truncated-wav", lambda f: ["decode", "--model", str(f["ckpt"]), str(f["truncated_wav"])],
     "truncated.wav: truncated audio file"),
    ("decode-corrupt-wav", lambda f: ["decode", "--model", str(f["ckpt"]), str(f["corrupt_wav"])],
     "corrupt.wav: cannot read audio"),
    ("checkpoint-is-a-wav", lambda f: ["decode", "--model", str(f["wav"]), str(f["wav"])], "speech.wav"),
    ("checkpoint-is-random-bytes", lambda f: ["decode", "--model", str(f["random_bytes"]), str(f["wav"])],
     "random.pt"),
    ("config-not-utf8", lambda f: ["train", "--config", str(f["latin1.yaml"])], "latin1.yaml:2: not UTF-8"),
    ("config-duplicate-key", lambda f: ["train", "--config", str(f["duplicate.yaml"])],
     "duplicate.yaml:4: duplicate key 'lr' (first on line 3)"),
    ("config-top-level-list", lambda f: ["train", "--config", str(f["list.yaml"])],
     "list.yaml: expected a mapping at top level"),
    ("schedule-stages-not-a-list", lambda f: ["train", "--schedule", str(f["stages.yaml"])],
     "stages.yaml: stages: expected a list"),
    ("feature-config-duplicate-key", lambda f: ["compute-fbank", "--cuts", str(f["cuts"]), "--out-dir",
                                                str(f["cuts"].parent / "fb"), "--prefix", "x", "--feature-config",
                                                str(f["duplicate.yaml"])], "duplicate.yaml:4: duplicate key"),
    ("tts-gen-empty-input", _tts_gen("empty.txt", lambda f: str(f["a_file"].parent / "o1")),
     "empty.txt: no text to speak"),
    ("tts-gen-overlong-line", _tts_gen("long.txt", lambda f: str(f["a_file"].parent / "o2")),
     "long.txt:2: utterance too long: 150 words"),
    ("tts-gen-output-under-a-file", _tts_gen("in.txt", lambda f: str(f["a_file"] / "out")), "a_file"),
    ("train-exp-dir-under-a-file", lambda f: ["train", "--config", str(f["train.yaml"]), "--exp-dir",
                                              str(f["a_file"] / "exp")],
     "a_file is a file, not a directory"),
    ("export-output-under-a-file", lambda f: ["export", "--model", str(f["ckpt"]), "--out-dir",
                                              str(f["a_file"] / "onnx")],
     "a_file is a file, not a directory"),
]


@pytest.fixture(scope="module")
def voices_file(files):
    files["voices"] = files["in.txt"].parent / "voices.txt"
    files["voices"].write_text(ESPEAK_VOICE + "\n")
    return files


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("argv, expected", [pytest.param(a, e, id=i) for i, a, e in ROWS])
def test_hostile_input_is_one_line_naming_the_culprit(voices_file, argv, expected):
    result = CliRunner().invoke(cli, argv(voices_file))
    assert result.exit_code not in (0, None), result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        f"uncaught {type(result.exception).__name__}: {result.exception}"
    assert expected in _one_error_line(result.stderr)


def test_a_bad_audio_file_is_reported_once_by_the_real_entry_point(files):
    """The decode error used to be printed twice: once as a warning, once by the library's logger."""
    out = subprocess.run([sys.executable, "-m", "synthasr", "decode", "--model", str(files["ckpt"]),
                          str(files["corrupt_wav"]), str(files["wav"])],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 1
    assert "corrupt.wav: cannot read audio" in _one_error_line(out.stderr)
    assert out.stdout.startswith(f"{files['wav']}\t")


def test_full_disk_during_tts_gen_is_one_line_and_leaves_no_partial_file(voices_file, tmp_path, monkeypatch):
    import tts_gen.generate as generate_module

    def no_space(path, *args, **kwargs):
        Path(path).write_bytes(b"half a FLAC")  # what a real full disk leaves behind
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(generate_module.sf, "write", no_space)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, _tts_gen("in.txt", lambda f: str(out))(voices_file))
    assert result.exit_code == 1
    assert "no space left on device: " in _one_error_line(result.stderr) and "p-000001.flac" in result.stderr
    assert list((out / "audio" / "p").iterdir()) == []


# --- the library pieces the rows rely on ---------------------------------------------------------
def test_yaml_duplicate_keys_merge_keys_and_encodings(tmp_path):
    flow = tmp_path / "flow.yaml"
    flow.write_text("optim: {lr: 1, lr: 2}\n")
    with pytest.raises(ConfigError, match=r"^.*flow\.yaml:1: duplicate key 'lr' \(first on line 1\)$"):
        load_yaml(flow)
    merged = tmp_path / "merge.yaml"  # a `<<:` merge may be overridden on purpose
    merged.write_text("base: &b {lr: 1, seed: 3}\ntrain:\n  <<: *b\n  lr: 2\n")
    assert load_yaml(merged)["train"] == {"lr": 2, "seed": 3}
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"seed: 1\n\n\xff\xfe: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: not UTF-8 text \(byte 0xff at offset 9\)"):
        load_yaml(bad)


def test_outputs_under_a_regular_file_name_the_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=r"cannot write .*results/x/y\.txt: .*results is a file, not a directory"):
        with atomic_write(blocker / "x" / "y.txt") as f:
            f.write("data")
    with pytest.raises(OutputError, match=r"results is a file, not a directory"):
        ensure_dir(blocker)
    assert blocker.read_text() == "not a folder"


def test_full_disk_is_named_even_when_the_writer_drops_the_errno(tmp_path, monkeypatch):
    """libsndfile says "System error." and torch "unexpected pos" on a full disk: the check is statvfs."""
    import torch

    target = tmp_path / "model.pt"
    real_statvfs = os.statvfs

    class Full:
        def __init__(self, real):
            self.f_frsize, self.f_bsize, self.f_bavail, self.f_bfree = real.f_frsize, real.f_bsize, 0, 0

    def torch_save_fails(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 partial")
        monkeypatch.setattr(os, "statvfs", lambda p: Full(real_statvfs(p)))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(OutputError, match=rf"^no space left on device: {target}$"):
        with atomic_path(target) as tmp:
            torch_save_fails({"w": torch.zeros(3)}, tmp)
    monkeypatch.setattr(os, "statvfs", real_statvfs)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file is left
    with pytest.raises(RuntimeError, match="unrelated"):  # with free space, errors pass through untouched
        with atomic_path(target):
            raise RuntimeError("unrelated")


def test_real_full_tmpfs(tmp_path):
    """The same on a real 64 KiB tmpfs, where the machine lets us mount one (root); skipped elsewhere."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN)")
    try:
        noise = (0.1 * np.random.default_rng(0).standard_normal(200000)).astype(np.float32)  # ~400 KB of PCM
        with pytest.raises(OutputError, match=rf"^no space left on device: {mount / 'a.flac'}$"):
            with atomic_path(mount / "a.flac") as tmp:
                sf.write(str(tmp), noise, 16000, subtype="PCM_16")
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)
