"""Lhotse Shar: cuts + audio (+ features) in numbered shards, read sequentially; the large-scale layout.

Why Shar: at tens of thousands of hours a training epoch reads millions of small FLAC or feature
reads at random offsets, which network file systems serve slowly. A Shar directory holds, per shard
``k``, ``cuts.<k>.jsonl.gz`` plus one tar per data field (``recording.<k>.tar``, ``features.<k>.tar``)
that a reader streams front to back; randomness comes from shuffling the *order of shards* per epoch
(plus the sampler's buffer), not from seeking. The directory layout (FLAC files + jsonl.gz) stays the
small-scale default.

What this module adds to lhotse's :class:`~lhotse.shar.SharWriter` / ``CutSet.from_shar``:

* :func:`write_shar`: one task per shard, on the local pool or any ``concurrent.futures`` executor
  (Dask, Ray); each shard is written in a sibling temp directory and renamed into place, cuts last, so
  a rerun skips complete shards and redoes the rest. Shard ``k`` holds cuts ``k*S .. k*S+S-1`` of the
  input order, so the same input gives the same shards however the work was spread.
* :func:`shar_fields`: the shard lists of a directory, checked: a missing shard of any field (a gap,
  or one field shorter than the cuts) is a one-line :class:`SharError` naming the missing file.
  Nothing else is written into a Shar directory, so ``CutSet.from_shar(in_dir=...)`` reads it too.
* :func:`load_shar`: a lazy, *epoch-aware* CutSet: the shard order of epoch ``e`` is a function of
  ``(seed, e)`` only (``set_epoch``), so an interrupted training run resumes on the same batches.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]
DEFAULT_SHARD_SIZE = 1000
AUDIO_FORMAT = "flac"  # lossless: a 16-bit synthetic utterance reads back sample-exact
_SHARD_FILE = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*)\.(?P<index>\d{6})\.(?P<ext>jsonl\.gz|tar)$")


class SharError(ValueError):
    """A Shar directory that cannot be read or written (missing shard, no cuts, bad shard size)."""


# --- reading ---------------------------------------------------------------------------------------
def is_shar_dir(path: PathLike) -> bool:
    """True for a directory holding ``cuts.000000.jsonl.gz`` (how manifests and Shar are told apart)."""
    return Path(path).is_dir() and (Path(path) / "cuts.000000.jsonl.gz").is_file()


def shar_fields(shar_dir: PathLike, fields: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """``{"cuts": [...], "<field>": [...]}`` shard paths of ``shar_dir``, every shard checked present.

    ``fields`` limits the data fields read (e.g. ``["features"]`` skips the audio tars); default all.
    """
    root = Path(shar_dir)
    if not root.is_dir():
        raise SharError(f"{root}: not a Shar directory (no such directory)")
    found: Dict[str, Dict[int, Path]] = {}
    for p in root.iterdir():
        m = _SHARD_FILE.match(p.name)
        if m:
            found.setdefault(m.group("field"), {})[int(m.group("index"))] = p
    cuts = found.pop("cuts", {})
    if not cuts:
        raise SharError(f"{root}: no cuts.NNNNNN.jsonl.gz shards (not a Shar directory)")
    wanted = sorted(found) if fields is None else list(fields)
    for name in wanted:
        if name not in found:
            raise SharError(f"{root}: no {name}.NNNNNN.tar shards (fields: {', '.join(sorted(found)) or 'none'})")
    count = max(max(cuts), *(max(found[f]) for f in wanted)) + 1
    for index in range(count):
        if index not in cuts:
            raise SharError(f"{root}: missing shard cuts.{index:06d}.jsonl.gz (shards 0..{count - 1} expected)")
        for name in wanted:
            if index not in found[name]:
                raise SharError(f"{root}: missing shard {name}.{index:06d}.tar (shards 0..{count - 1} expected)")
    out = {"cuts": [str(cuts[i]) for i in range(count)]}
    out.update({name: [str(found[name][i]) for i in range(count)] for name in wanted})
    return out


class SharStream:
    """The lazy, picklable iterable behind :func:`load_shar`; shard order per ``(seed, epoch)``.

    lhotse's own stateful shuffle counts *iterations* of the reader; counting the mixing code's or a
    resumed run's extra passes would change the order, so the epoch is set explicitly instead.
    """

    def __init__(self, fields: Dict[str, List[str]], shuffle_shards: bool, seed: int) -> None:
        self.fields = fields
        self.shuffle_shards = shuffle_shards
        self.seed = int(seed)
        self.epoch = 0
        self._len: Optional[int] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator:
        from lhotse.shar import LazySharIterator

        reader = LazySharIterator(fields=self.fields, shuffle_shards=self.shuffle_shards, seed=self.seed,
                                  stateful_shuffle=True)
        reader.epoch = self.epoch
        return iter(reader)

    def __len__(self) -> int:
        if self._len is None:
            from lhotse.lazy import count_newlines_fast

            self._len = sum(count_newlines_fast(p) for p in self.fields["cuts"])
        return self._len


def load_shar(shar_dirs: Union[PathLike, Sequence[PathLike]], shuffle_shards: bool = True, seed: int = 0,
              fields: Optional[Sequence[str]] = None):
    """A lazy CutSet over checked Shar directories (see :func:`shar_fields`), shards shuffled per epoch.

    Several directories (e.g. one per generation run) are one pool of shards; they must hold the same
    data fields, since every shard of a reader has the same ones.
    """
    from lhotse import CutSet

    dirs = [shar_dirs] if isinstance(shar_dirs, (str, os.PathLike)) else list(shar_dirs)
    if not dirs:
        raise SharError("no Shar directory given")
    merged: Dict[str, List[str]] = {}
    for d in dirs:
        found = shar_fields(d, fields)
        if merged and set(found) != set(merged):
            raise SharError(f"{d}: fields {sorted(set(found) - {'cuts'})} differ from {dirs[0]}'s "
                            f"{sorted(set(merged) - {'cuts'})}")
        for name, shards in found.items():
            merged.setdefault(name, []).extend(shards)
    return CutSet(SharStream(merged, shuffle_shards, seed))


# --- writing ---------------------------------------------------------------------------------------
def shard_name(field: str, index: int, fmt: str) -> str:
    return f"{field}.{index:06d}.{'jsonl.gz' if fmt == 'jsonl' or field == 'cuts' else 'tar'}"


def _shard_complete(root: Path, index: int, ids: Sequence[str], fields: Mapping[str, str]) -> bool:
    """A shard counts as written when every field file exists and its cuts are exactly ``ids``."""
    from lhotse.lazy import LazyJsonlIterator

    cuts = root / shard_name("cuts", index, "jsonl")
    if not cuts.is_file() or not all((root / shard_name(f, index, fmt)).is_file() for f, fmt in fields.items()):
        return False
    try:
        return [d.get("id") for d in LazyJsonlIterator(cuts)] == list(ids)
    except Exception:  # noqa: BLE001 - a torn or foreign file: rewrite the shard
        return False


def write_shard(source: Union[List[Dict[str, Any]], Dict[str, List[str]]], shar_dir: str, index: int,
                fields: Dict[str, str], prepare: Optional[Callable[[Any], Any]] = None,
                tick_power: Optional[int] = None) -> int:
    """Write shard ``index`` (runs on a worker) from cut dicts or an input Shar shard (its fields dict).

    Fields first, ``cuts.<k>.jsonl.gz`` last, each renamed into place from a sibling temp directory,
    so a present cuts file means a complete shard.
    """
    from lhotse import CutSet
    from lhotse.shar import SharWriter

    root = Path(shar_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.{index:06d}.", dir=root.parent))
    try:
        writer = SharWriter(str(tmp), fields=dict(fields), shard_size=None, shard_suffix=f".{index:06d}",
                            warn_unused_fields=False)
        if tick_power is not None and fields.get("features") == "lilcom":
            from lhotse.shar.writers.array import ArrayTarWriter

            writer.writers["features"] = ArrayTarWriter(str(tmp / shard_name("features", index, "lilcom")),
                                                        shard_size=None, compression="lilcom",
                                                        lilcom_tick_power=tick_power)
        cuts = CutSet.from_shar(fields=source) if isinstance(source, dict) else CutSet.from_dicts(source)
        count = 0
        with writer:
            for cut in cuts:
                writer.write(prepare(cut) if prepare is not None else cut)
                count += 1
        for name in [*fields, "cuts"]:  # cuts last: its presence marks the shard complete
            fname = shard_name(name, index, fields.get(name, "jsonl"))
            os.replace(tmp / fname, root / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count


def write_shar(cuts, shar_dir: PathLike, shard_size: int = DEFAULT_SHARD_SIZE, fields: Optional[Dict[str, str]] = None,
               num_jobs: int = 1, executor: Optional[cf.Executor] = None,
               prepare: Optional[Callable[[Any], Any]] = None, tick_power: Optional[int] = None) -> Dict[str, Any]:
    """Write ``cuts`` (in order) as Shar shards of ``shard_size`` into ``shar_dir``; resumable.

    ``fields`` defaults to ``{"recording": "flac"}``. ``prepare(cut)`` runs on the worker before a cut
    is written (e.g. to compute its features). Returns ``{"shards", "written", "skipped", "cuts", "dir"}``.
    """
    if shard_size < 1:
        raise SharError(f"shard_size must be >= 1, got {shard_size}")
    dicts = [c.to_dict() for c in cuts]
    jobs = [(block, [d["id"] for d in block]) for block in
            (dicts[i:i + shard_size] for i in range(0, len(dicts), shard_size))]
    return _write_shards(jobs, shar_dir, dict(fields or {"recording": AUDIO_FORMAT}), num_jobs, executor, prepare,
                         tick_power)


def convert_shar(in_dir: PathLike, shar_dir: PathLike, fields: Dict[str, str], read_fields: Sequence[str] = ("recording",),
                 num_jobs: int = 1, executor: Optional[cf.Executor] = None,
                 prepare: Optional[Callable[[Any], Any]] = None, tick_power: Optional[int] = None) -> Dict[str, Any]:
    """Shar -> Shar, shard by shard (output shard ``k`` from input shard ``k``; e.g. audio -> features).

    Each worker streams its own input shard, so no audio passes through the calling process.
    """
    from lhotse.lazy import LazyJsonlIterator

    if Path(in_dir).resolve() == Path(shar_dir).resolve():
        raise SharError(f"{shar_dir}: output Shar directory must differ from the input")
    inputs = shar_fields(in_dir, read_fields)
    jobs = []
    for k in range(len(inputs["cuts"])):
        source = {name: [paths[k]] for name, paths in inputs.items()}
        jobs.append((source, [d.get("id") for d in LazyJsonlIterator(inputs["cuts"][k])]))
    return _write_shards(jobs, shar_dir, fields, num_jobs, executor, prepare, tick_power)


def _write_shards(jobs: List[Any], shar_dir: PathLike, fields: Dict[str, str], num_jobs: int,
                  executor: Optional[cf.Executor], prepare: Optional[Callable[[Any], Any]],
                  tick_power: Optional[int]) -> Dict[str, Any]:
    """Write the shards of ``jobs`` (``(source, ids)`` per shard) that are not complete yet."""
    from synthasr.utils.io import ensure_dir

    root = ensure_dir(Path(shar_dir).absolute())  # absolute: a remote worker has its own working directory
    _remove_stale_shards(root, len(jobs))
    todo = [k for k, (_, ids) in enumerate(jobs) if not _shard_complete(root, k, ids, fields)]
    args = [(jobs[k][0], str(root), k, fields, prepare, tick_power) for k in todo]
    if executor is not None:
        _wait_all([executor.submit(write_shard, *a) for a in args])
    elif num_jobs > 1 and len(args) > 1:
        with cf.ProcessPoolExecutor(max_workers=min(num_jobs, len(args))) as pool:
            _wait_all([pool.submit(write_shard, *a) for a in args])
    else:
        for a in args:
            write_shard(*a)
    return {"shards": len(jobs), "written": len(todo), "skipped": len(jobs) - len(todo),
            "cuts": sum(len(ids) for _, ids in jobs), "dir": str(root)}


def _wait_all(futures: List[cf.Future]) -> None:
    try:
        for fut in cf.as_completed(futures):
            fut.result()
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _remove_stale_shards(root: Path, count: int) -> None:
    """Shards numbered ``>= count`` are from an earlier, larger run; left there they would be read."""
    for p in root.iterdir():
        m = _SHARD_FILE.match(p.name)
        if m and int(m.group("index")) >= count:
            p.unlink()
