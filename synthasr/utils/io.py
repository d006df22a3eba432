"""Atomic file output: a reader never sees a half-written file.

Every artifact SynthASR writes (manifests, checkpoints, reports, result files) goes through
:func:`atomic_write` or :func:`atomic_path` so that an interrupted run leaves either the previous good
file or nothing, never a truncated one. Output folders are made with :func:`ensure_dir`. Both turn
the two common environmental failures into a one-line :class:`OutputError`: a full disk (which
libsndfile and torch report as "System error." / "unexpected pos") and a regular file where a
folder must be.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # disk full, or quota exceeded


class OutputError(OSError):
    """An output cannot be written (disk full, a file where a folder must be, ...); one line.

    An ``OSError`` (with ``errno``/``filename``), so existing ``except OSError`` handlers still apply.
    """

    def __str__(self) -> str:
        if self.errno in _NO_SPACE:
            return f"no space left on device: {self.filename}"
        if self.errno == errno.ENOTDIR and self.filename2:
            return f"cannot write {self.filename}: {self.filename2} is a file, not a directory"
        return f"cannot write {self.filename}: {self.strerror}"


def ensure_dir(path: PathLike) -> Path:
    """``mkdir -p path``; a regular file on the way is a one-line :class:`OutputError` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _not_a_directory(path) from None
    except OSError as e:
        raise OutputError(e.errno, e.strerror, str(path)) from None
    return path


def _not_a_directory(path: Path) -> OutputError:
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
    return OutputError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path), None, str(blocker))


def as_output_error(exc: BaseException, path: PathLike) -> Optional[OutputError]:
    """The :class:`OutputError` behind ``exc`` raised while writing ``path``, or None if it is not one.

    libsndfile ("System error.") and torch ("unexpected pos") drop the errno of a full disk, so any
    failure while the target's file system has no free block counts as ENOSPC.
    """
    if isinstance(exc, OutputError):
        return exc
    path = Path(path)
    code = exc.errno if isinstance(exc, OSError) else None
    if code in _NO_SPACE or (isinstance(exc, Exception) and _file_system_full(path.parent)):
        return OutputError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if code == errno.ENOTDIR:
        return _not_a_directory(path.parent)
    return None


def describe_os_error(exc: OSError) -> Optional[str]:
    """One line for an environmental ``OSError`` that names a path (or is a full disk), else None."""
    if isinstance(exc, OutputError):
        return str(exc)
    if exc.errno in _NO_SPACE:
        return f"no space left on device: {exc.filename or '(unknown file)'}"
    if exc.filename is None:
        return None
    path = Path(os.fsdecode(exc.filename))
    if exc.errno == errno.ENOTDIR or (exc.errno == errno.EEXIST and path.exists() and not path.is_dir()):
        return str(_not_a_directory(path))
    return f"{path}: {exc.strerror or exc}"


def _file_system_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # no such folder, or no statvfs (Windows)
        return False


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
    try:
        ensure_dir(path.parent)
    except OutputError as e:  # name the file being written, and what is in its way
        raise OutputError(e.errno, e.strerror, str(path), None, e.filename2) from None
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.tmp", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise (as_output_error(e, path) or e) from None
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
    except Exception as e:
        error = as_output_error(e, path)
        if error is None:
            raise
        raise error from None
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
