"""Atomic file output: a reader never sees a half-written file.

Every artifact SynthASR writes (manifests, checkpoints, reports, result files) goes through
:func:`atomic_write` or :func:`atomic_path` so that an interrupted run leaves either the previous good
file or nothing, never a truncated one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``path`` on success.

    The temp file keeps the target's suffixes (``x.jsonl.gz`` -> ``.x.tmp123.jsonl.gz``) so writers
    that pick a format from the file name (lhotse, soundfile, torch) still work. ``fsync=False``
    skips the flush to disk: for many small files whose completeness is verified another way (TTS
    audio checked against a ledger), where two fsyncs per file would dominate the run time.
    The result gets the usual umask-based mode (0644), not mkstemp's owner-only 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.tmp", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        if fsync:
            _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        if fsync:
            _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask is process-global and racy to query later


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
