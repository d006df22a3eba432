"""Text -> synthetic speech in many voices -> 16 kHz FLAC + lhotse manifests.

Design choices that matter downstream:

* The engine speaks the *normalized* text (``synthasr.text.normalize``), so the transcript in the
  supervision is exactly what was spoken.
* Each utterance's voice (and piper's noise seed) is a pure function of ``(seed, utterance id)``,
  so results do not depend on ``num_jobs``, on sharding or on what an interrupted run finished.
* Resume: after each FLAC is renamed into place, a line goes to a per-shard ledger (flushed). A
  rerun trusts a ledger line only if the FLAC decodes to the recorded length with the same voice
  and text; everything else is re-synthesized. Manifests are built from the ledger and written
  atomically at the end, so a reader never sees a partial manifest.
* Sharding is by contiguous blocks of input lines, so concatenating shard manifests in shard order
  (``tts-combine``) reproduces the unsharded manifests exactly.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf

from synthasr.utils.audio import resample  # imported here (with lhotse) so forked workers inherit it
from synthasr.utils.io import atomic_path, atomic_write
from synthasr.utils.process import die_with_parent
from tts_gen.engines.base import SynthesisError, TTSEngine, get_engine
from tts_gen.pronounce import build_plan, phonemes_for_engine
from tts_gen.voices import DEFAULT_ENGINE_WEIGHTS, Voice, check_voice, voices_by_engine

LOG = logging.getLogger("tts_gen")
TARGET_RATE = 16000
MAX_WORDS = 100  # ~40 s of speech at a normal rate; a 10k-word line once became a 704 s utterance
MAX_CHARS = 1000
LANGUAGE = "English"
PathLike = Union[str, os.PathLike]
EngineOptions = Mapping[str, Mapping[str, Any]]


class InputError(ValueError):
    """Bad text input (malformed JSONL, duplicate or invalid ids); the message names file and line."""


class ShardSpecError(ValueError):
    """A ``k/N`` shard spec that does not parse or is out of range."""


class OutputNotWritableError(RuntimeError):
    """The output directory cannot be created or written."""


class FailureThresholdExceeded(RuntimeError):
    """More utterances failed than ``failure_threshold`` allows (manifests of the rest are written)."""

    def __init__(self, message: str, summary: "GenerationSummary") -> None:
        super().__init__(message)
        self.summary = summary


class CombineError(ValueError):
    """Shard manifests that are missing or inconsistent."""


# --- input ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextItem:
    """One input utterance: its id, the raw text and the 1-based input line it came from.

    ``names`` and ``pronunciations`` are the JSONL line's fields of those names (raw; checked by
    :mod:`tts_gen.pronounce` only when pronunciation control is on), so plain lines stay as they were.
    """

    id: str
    text: str
    line: int
    names: Any = field(default=None, compare=False, repr=False)
    pronunciations: Any = field(default=None, compare=False, repr=False)


_BAD_ID = re.compile(r"[/\\\s]|^\.|^$")


def read_texts(path: PathLike, id_prefix: str) -> List[TextItem]:
    r"""Read plain text (one utterance a line) or JSONL ``{"id", "text"}``.

    Lines end at ``\n`` only (a trailing ``\r`` is dropped): ``str.splitlines`` would also split on
    ``\r``, ``\x0b``, ``\x85`` or ``\u2028`` inside a line, adding utterances and shifting every later
    line number (text-mode reading would, too: it turns a lone ``\r`` into a newline). Plain-text ids
    are ``<id_prefix>-<line:06d>``. Empty lines are skipped with a warning naming the line (none when
    the whole input is blank: the caller reports that); duplicate ids raise :class:`InputError` naming
    both lines.
    """
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read text file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in raw.split("\n")]
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line does not start another one
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    is_jsonl = path.name.endswith((".jsonl", ".jsonl.txt")) or first.startswith("{")
    items: List[TextItem] = []
    seen: Dict[str, int] = {}
    blank: List[int] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            blank.append(lineno)
            continue
        item = _parse_jsonl_line(path, lineno, line) if is_jsonl else TextItem(f"{id_prefix}-{lineno:06d}", line.strip(), lineno)
        if item is None:
            continue
        if item.id in seen:
            raise InputError(f"{path}:{lineno}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = lineno
        items.append(item)
    for lineno in blank if items else []:
        LOG.warning("%s:%d: empty line skipped", path, lineno)
    return items


def _parse_jsonl_line(path: Path, lineno: int, line: str) -> Optional[TextItem]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(obj, dict) or "text" not in obj or "id" not in obj:
        raise InputError(f"{path}:{lineno}: expected an object with 'id' and 'text'")
    utt_id, text = str(obj["id"]), obj["text"]
    if _BAD_ID.search(utt_id):
        raise InputError(f"{path}:{lineno}: invalid id {utt_id!r} (no '/', '\\', spaces or leading '.')")
    if not isinstance(text, str):
        raise InputError(f"{path}:{lineno}: 'text' must be a string")
    if not text.strip():
        LOG.warning("%s:%d: empty text skipped", path, lineno)
        return None
    return TextItem(utt_id, text.strip(), lineno, obj.get("names"), obj.get("pronunciations"))


def parse_shard(spec: Union[str, Tuple[int, int], None]) -> Optional[Tuple[int, int]]:
    """``"2/4"`` -> ``(2, 4)`` (1-based); ``None`` stays ``None``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        m = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", spec)
        if not m:
            raise ShardSpecError(f"invalid shard {spec!r}: expected K/N, e.g. 1/4")
        spec = (int(m.group(1)), int(m.group(2)))
    k, n = spec
    if n < 1 or not 1 <= k <= n:
        raise ShardSpecError(f"invalid shard {k}/{n}: need 1 <= K <= N")
    return k, n


def shard_block(items: Sequence[TextItem], shard: Optional[Tuple[int, int]]) -> List[TextItem]:
    """Contiguous block ``k`` of ``N`` (so shard manifests concatenate in input order)."""
    if shard is None:
        return list(items)
    k, n = shard
    start, stop = (k - 1) * len(items) // n, k * len(items) // n
    return list(items[start:stop])


def shard_tag(shard: Optional[Tuple[int, int]]) -> str:
    return "" if shard is None else f".{shard[0]}-of-{shard[1]}"


def manifest_paths(out_dir: PathLike, prefix: str, shard: Optional[Tuple[int, int]] = None) -> Dict[str, Path]:
    """Where the recordings/supervisions/cuts manifests (and failure list) of a run go."""
    out_dir, tag = Path(out_dir), shard_tag(shard)
    return {
        "recordings": out_dir / f"{prefix}_recordings{tag}.jsonl.gz",
        "supervisions": out_dir / f"{prefix}_supervisions{tag}.jsonl.gz",
        "cuts": out_dir / f"{prefix}_cuts{tag}.jsonl.gz",
        "failures": out_dir / f"{prefix}_failures{tag}.jsonl",
    }


# --- deterministic voice assignment -------------------------------------------------------------
def _hash_ints(*parts: object) -> Tuple[float, float, int]:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    u1 = int.from_bytes(digest[0:8], "big") / 2**64
    u2 = int.from_bytes(digest[8:16], "big") / 2**64
    return u1, u2, int.from_bytes(digest[16:20], "big")


def assign_voice(utt_id: str, seed: int, groups: Mapping[str, Sequence[Voice]],
                 engine_weights: Optional[Mapping[str, float]] = None) -> Tuple[Voice, int]:
    """(voice, synthesis seed) for one utterance: engine by weight, then a voice of that engine.

    Depends only on ``seed``, ``utt_id`` and the voice set, never on order of processing.
    """
    weights = dict(DEFAULT_ENGINE_WEIGHTS)
    weights.update(engine_weights or {})
    engines = sorted(e for e in groups if groups[e])
    w = np.array([max(float(weights.get(e, 1.0)), 0.0) for e in engines])
    if w.sum() <= 0:
        w = np.ones(len(engines))
    u1, u2, synth_seed = _hash_ints("assign", seed, utt_id)
    cumulative = np.cumsum(w / w.sum())
    engine = engines[min(int(np.searchsorted(cumulative, u1, side="right")), len(engines) - 1)]
    pool = groups[engine]
    return pool[min(int(u2 * len(pool)), len(pool) - 1)], synth_seed


# --- workers --------------------------------------------------------------------------------------
_WORKER_ENGINES: Dict[str, TTSEngine] = {}
_WORKER_OPTS: Dict[str, Dict[str, Any]] = {}


def _init_worker(engine_opts: Mapping[str, Mapping[str, Any]], parent_pid: Optional[int] = None) -> None:
    if parent_pid is not None:  # a pool worker: do not outlive a killed parent
        die_with_parent(parent_pid)
    _WORKER_ENGINES.clear()
    _WORKER_OPTS.clear()
    _WORKER_OPTS.update({k: dict(v) for k, v in engine_opts.items()})


def _worker_engine(name: str) -> TTSEngine:
    """Engines are built lazily once per process (piper loads its model once)."""
    if name not in _WORKER_ENGINES:
        _WORKER_ENGINES[name] = get_engine(name, **_WORKER_OPTS.get(name, {}))
    return _WORKER_ENGINES[name]


def to_target_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz (the project's one resampler, as in training), clipped to [-1, 1]."""
    audio = resample(np.asarray(audio, dtype=np.float32).reshape(-1), rate, TARGET_RATE)
    return np.clip(audio, -1.0, 1.0)


def _synthesize_task(task: Dict[str, Any]) -> Dict[str, Any]:
    """Speak one utterance and write its FLAC atomically; a :class:`SynthesisError` becomes a result."""
    voice = Voice.parse(task["voice"])
    try:
        phonemes = phonemes_for_engine(task.get("pron"))  # term -> phonemes; none: engine's own rules
        kwargs = {"pronunciations": phonemes} if phonemes else {}
        audio, rate = _worker_engine(voice.engine).synthesize(task["text"], voice, seed=task["seed"], **kwargs)
        audio = to_target_rate(audio, rate)
        if audio.size == 0:
            raise SynthesisError("empty audio after resampling")
    except SynthesisError as e:
        return {"id": task["id"], "ok": False, "error": str(e)}
    with atomic_path(task["path"], fsync=False) as tmp:  # completeness is checked via the ledger
        sf.write(str(tmp), audio, TARGET_RATE, format="FLAC", subtype="PCM_16")
    return {"id": task["id"], "ok": True, "num_samples": int(audio.size)}


def _synthesize_chunk(tasks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [_synthesize_task(t) for t in tasks]


# --- ledger ---------------------------------------------------------------------------------------
def _ledger_path(out_dir: Path, prefix: str, shard: Optional[Tuple[int, int]]) -> Path:
    return out_dir / ".tts_gen" / f"{prefix}{shard_tag(shard)}.ledger.jsonl"


def _read_ledger(path: Path) -> Dict[str, Dict[str, Any]]:
    """Last valid record per id; a torn last line (SIGKILL mid-write) is ignored."""
    records: Dict[str, Dict[str, Any]] = {}
    if not path.exists():
        return records
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                records[rec["id"]] = rec
    return records


def _verified(rec: Optional[Dict[str, Any]], task: Dict[str, Any]) -> bool:
    """A ledger record counts only if voice/text match and the FLAC decodes to the recorded length."""
    if not rec or rec.get("voice") != task["voice"] or rec.get("text") != task["text"] or rec.get("pron") != task.get("pron"):
        return False
    try:
        audio, rate = sf.read(task["path"], dtype="int16")
    except (RuntimeError, OSError, sf.LibsndfileError):
        return False
    return rate == TARGET_RATE and len(audio) == rec.get("num_samples")


# --- summary --------------------------------------------------------------------------------------
@dataclass
class GenerationSummary:
    """What a run produced; :meth:`line` is the one-line report printed at the end."""

    prefix: str
    shard: str
    utterances: int
    hours: float
    distinct_voices: int
    engines: Dict[str, int]
    failures: int
    attempted: int
    resumed: int
    synthesized: int
    wall_seconds: float
    failed: List[Dict[str, Any]] = field(default_factory=list)
    manifests: Dict[str, str] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        return self.failures / self.attempted if self.attempted else 0.0

    def line(self) -> str:
        engines = " ".join(f"{k}={v}" for k, v in sorted(self.engines.items())) or "none"
        shard = f" shard {self.shard}" if self.shard else ""
        return (f"{self.prefix}{shard}: {self.utterances} utterances, {self.hours:.3f} h, "
                f"{self.distinct_voices} distinct voices, engines {engines}, "
                f"{self.failures} failures ({100 * self.failure_rate:.1f}%), "
                f"{self.resumed} resumed, {self.synthesized} synthesized in {self.wall_seconds:.1f} s")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# --- main entry -----------------------------------------------------------------------------------
def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputNotWritableError(f"output directory not writable: {out_dir}: {e.strerror or e}") from None


def _prepare_engines(voices: Sequence[Voice], engine_opts: EngineOptions) -> None:
    """Fail fast in the parent: missing binaries/packages and unknown voices, one line each."""
    engines: Dict[str, TTSEngine] = {}
    for voice in voices:
        if voice.engine not in engines:
            engines[voice.engine] = get_engine(voice.engine, **dict(engine_opts.get(voice.engine, {})))
        check_voice(voice, engines[voice.engine])


def _normalize_items(items: Sequence[TextItem], source: str) -> Tuple[List[Tuple[TextItem, str]], List[Dict[str, Any]]]:
    from synthasr.text import NormalizationError, normalize

    good, failed = [], []
    for item in items:
        try:
            text = normalize(item.text)
            if not text:
                raise NormalizationError("nothing left to speak after normalization")
        except NormalizationError as e:
            LOG.warning("%s:%d: skipped (id %s): %s", source, item.line, item.id, e)
            failed.append({"line": item.line, "id": item.id, "error": f"normalization: {e}"})
            continue
        good.append((item, text))
    return good, failed


def _check_lengths(good: Sequence[Tuple[TextItem, str]], source: str, max_words: int, max_chars: int) -> None:
    """Refuse an utterance longer than the caps (counted on the normalized text, what is spoken)."""
    for item, text in good:
        words = len(text.split())
        if words > max_words or len(text) > max_chars:
            raise InputError(f"{source}:{item.line}: utterance too long: {words} words, {len(text)} characters "
                             f"(limits: max_words={max_words}, max_chars={max_chars})")


def _run_tasks(tasks: List[Dict[str, Any]], num_jobs: int, engine_opts: EngineOptions,
               ledger: Path, progress: bool, executor: Optional[cf.Executor] = None) -> Dict[str, Dict[str, Any]]:
    """Synthesize ``tasks`` (parallel if ``num_jobs > 1`` or on ``executor``), appending each success to
    the ledger as it arrives (so an interrupted run, local or distributed, resumes from it)."""
    from tqdm import tqdm

    results: Dict[str, Dict[str, Any]] = {}
    by_id = {t["id"]: t for t in tasks}
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger, "a", encoding="utf-8") as led, tqdm(total=len(tasks), desc="tts", unit="utt",
                                                           disable=not progress or not tasks) as bar:
        def record(batch: List[Dict[str, Any]]) -> None:
            for res in batch:
                task = by_id[res["id"]]
                if res["ok"]:
                    led.write(json.dumps({"id": res["id"], "voice": task["voice"], "text": task["text"],
                                          "num_samples": res["num_samples"],
                                          **({"pron": task["pron"]} if "pron" in task else {})}) + "\n")
                results[res["id"]] = res
            led.flush()
            bar.update(len(batch))

        if executor is not None:
            _run_on_executor(executor, tasks, num_jobs, engine_opts, record)
            return results
        if num_jobs <= 1:
            _init_worker(engine_opts)
            for task in tasks:
                record([_synthesize_task(task)])
            return results
        chunk = max(1, min(16, len(tasks) // (num_jobs * 4) or 1))
        chunks = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
        with cf.ProcessPoolExecutor(max_workers=num_jobs, initializer=_init_worker,
                                    initargs=({k: dict(v) for k, v in engine_opts.items()}, os.getpid())) as pool:
            futures = [pool.submit(_synthesize_chunk, c) for c in chunks]
            try:
                for fut in cf.as_completed(futures):
                    record(fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    return results


def _run_on_executor(executor: cf.Executor, tasks: List[Dict[str, Any]], num_jobs: int,
                     engine_opts: EngineOptions, record: Any) -> None:
    """Chunks of ``tasks`` on any ``concurrent.futures`` executor (Dask, Ray, ...), a bounded number in
    flight: a cluster never holds the whole run's task list, and an interruption loses little work."""
    from tts_gen.executors import executor_workers, run_chunk

    workers = executor_workers(executor, num_jobs)
    chunk = max(1, min(16, len(tasks) // (workers * 4) or 1))
    # Remote workers have their own working directory: they get absolute paths (the manifests keep
    # the paths as given, exactly as a local run writes them).
    remote = [dict(t, path=os.path.abspath(t["path"])) for t in tasks]
    chunks = iter([remote[i:i + chunk] for i in range(0, len(remote), chunk)])
    opts = {k: dict(v) for k, v in engine_opts.items()}
    pending: set = set()
    try:
        while True:
            for part in chunks:
                pending.add(executor.submit(run_chunk, opts, part))
                if len(pending) >= 4 * workers:
                    break
            if not pending:
                return
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                record(fut.result())
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


def _write_manifests(rows: List[Tuple[TextItem, str, Voice, int, Path]], paths: Dict[str, Path], domain: str,
                     prons: Optional[Mapping[str, List[Dict[str, Any]]]] = None) -> None:
    """Build, validate and atomically write the three manifests (rows in input order)."""
    from lhotse import (AudioSource, CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet,
                        validate, validate_recordings_and_supervisions)

    recordings, supervisions = [], []
    for item, text, voice, num_samples, audio_path in rows:
        duration = num_samples / TARGET_RATE
        recordings.append(Recording(id=item.id, sources=[AudioSource(type="file", channels=[0], source=str(audio_path))],
                                    sampling_rate=TARGET_RATE, num_samples=num_samples, duration=duration))
        supervisions.append(SupervisionSegment(
            id=item.id, recording_id=item.id, start=0.0, duration=duration, channel=0, text=text,
            speaker=voice.id, language=LANGUAGE,
            custom={"domain": domain, "source": "synthetic", "engine": voice.engine, "voice": voice.id,
                    "orig_text": item.text, **({"pronunciations": prons[item.id]} if prons and item.id in prons else {})},
        ))
    recs = RecordingSet.from_recordings(recordings)
    sups = SupervisionSet.from_segments(supervisions)
    cuts = CutSet.from_manifests(recordings=recs, supervisions=sups)
    if rows:
        validate_recordings_and_supervisions(recs, sups)
        validate(cuts)
    for key, manifest in (("recordings", recs), ("supervisions", sups), ("cuts", cuts)):
        with atomic_path(paths[key]) as tmp:
            manifest.to_file(tmp)


def generate(
    texts: Union[PathLike, Sequence[TextItem]],
    out_dir: PathLike,
    voices: Sequence[Voice],
    domain: str,
    prefix: str,
    num_jobs: int = 1,
    seed: int = 0,
    shard: Union[str, Tuple[int, int], None] = None,
    failure_threshold: float = 0.05,
    engine_opts: Optional[EngineOptions] = None,
    engine_weights: Optional[Mapping[str, float]] = None,
    progress: bool = True,
    max_words: int = MAX_WORDS,
    max_chars: int = MAX_CHARS,
    lexicon: Optional[PathLike] = None,
    pron_variants: int = 0,
    executor: Optional[cf.Executor] = None,
    shar_dir: Optional[PathLike] = None,
    shar_shard_size: int = 1000,
) -> GenerationSummary:
    """Speak ``texts`` with ``voices`` into ``out_dir``; resumable, shardable, parallel.

    Writes ``audio/<prefix>/<id>.flac`` and ``<prefix>_{recordings,supervisions,cuts}[.k-of-N].jsonl.gz``.
    Raises :class:`FailureThresholdExceeded` (after writing the manifests of what succeeded) when the
    share of failed utterances is above ``failure_threshold``, and :class:`InputError` before any
    synthesis for an input with no text or a line longer than ``max_words`` / ``max_chars``.
    Pronunciation control (:mod:`tts_gen.pronounce`) is on with a ``lexicon`` TSV, ``pron_variants``
    > 0 (variants per term in a line's ``names``) or a line's ``pronunciations`` field; each
    supervision then records ``custom["pronunciations"]``.
    ``executor`` (see :mod:`tts_gen.executors`) runs the synthesis elsewhere (Dask, Ray); the ledger,
    manifests and resume work exactly as with the local pool, so the outputs are the same.
    ``shar_dir``: also write the cuts with their audio as lhotse Shar shards of ``shar_shard_size``
    (:func:`write_cuts_shar`), the layout for large-scale training; not with ``shard``.
    """
    start = time.perf_counter()
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", prefix):
        raise InputError(f"invalid prefix {prefix!r}: use letters, digits, '_', '-', '.'")
    if not voices:
        raise InputError("no voices given")
    if max_words < 1 or max_chars < 1:
        raise InputError(f"max_words and max_chars must be >= 1, got {max_words} and {max_chars}")
    engine_opts = engine_opts or {}
    shard_k = parse_shard(shard)
    if shar_dir is not None and shard_k is not None:
        raise InputError(f"shar_dir {shar_dir}: not per K/N shard; combine the shards first (tts-combine --shar-dir)")
    if shar_dir is not None and shar_shard_size < 1:
        raise InputError(f"shar_dir {shar_dir}: shar_shard_size must be >= 1, got {shar_shard_size}")
    out = Path(out_dir)
    _check_writable(out)
    items = read_texts(texts, prefix) if isinstance(texts, (str, os.PathLike)) else list(texts)
    source = str(texts) if isinstance(texts, (str, os.PathLike)) else "<texts>"
    if not items:
        raise InputError(f"{source}: no text to speak (the input is empty or has only blank lines)")
    block = shard_block(items, shard_k)
    _prepare_engines(voices, engine_opts)
    groups = voices_by_engine(voices)

    good, failed = _normalize_items(block, source)
    _check_lengths(good, source, max_words, max_chars)
    audio_dir = out / "audio" / prefix
    plan = None
    if lexicon is not None or pron_variants > 0 or any(item.pronunciations is not None for item, _t in good):
        plan = build_plan([item.names for item, _t in good], lexicon, pron_variants, seed,
                          binary=str(engine_opts.get("espeak", {}).get("binary") or "espeak-ng"))
    tasks = []
    for item, text in good:
        voice, synth_seed = assign_voice(item.id, seed, groups, engine_weights)
        tasks.append({"id": item.id, "text": text, "voice": voice.id, "seed": synth_seed,
                      "path": str(audio_dir / f"{item.id}.flac"), "line": item.line})
        if plan is not None:  # which pronunciation each term gets: chosen here, recorded in the manifest
            options = plan.options(text, item.names, item.pronunciations, f"{source}:{item.line}")
            tasks[-1]["pron"] = plan.choose_for(text, voice.engine, item.id, options)

    ledger = _ledger_path(out, prefix, shard_k)
    previous = _read_ledger(ledger)
    done = {t["id"]: previous[t["id"]]["num_samples"] for t in tasks if _verified(previous.get(t["id"]), t)}
    pending = [t for t in tasks if t["id"] not in done]
    results = _run_tasks(pending, num_jobs, engine_opts, ledger, progress, executor)

    rows = []
    for (item, text), task in zip(good, tasks):
        if task["id"] in done:
            rows.append((item, text, Voice.parse(task["voice"]), done[task["id"]], Path(task["path"])))
            continue
        res = results[task["id"]]
        if res["ok"]:
            rows.append((item, text, Voice.parse(task["voice"]), res["num_samples"], Path(task["path"])))
        else:
            LOG.warning("%s:%d: skipped (id %s): %s", source, task["line"], task["id"], res["error"])
            failed.append({"line": task["line"], "id": task["id"], "error": res["error"]})
    failed.sort(key=lambda f: f["line"])

    paths = manifest_paths(out, prefix, shard_k)
    _write_manifests(rows, paths, domain, {t["id"]: t["pron"] for t in tasks if "pron" in t})
    with atomic_write(paths["failures"]) as f:
        for fail in failed:
            f.write(json.dumps(fail) + "\n")
    if shar_dir is not None:
        write_cuts_shar(paths["cuts"], shar_dir, shar_shard_size, num_jobs, executor)

    engines: Dict[str, int] = {}
    for _item, _text, voice, _n, _p in rows:
        engines[voice.engine] = engines.get(voice.engine, 0) + 1
    summary = GenerationSummary(
        prefix=prefix, shard=f"{shard_k[0]}/{shard_k[1]}" if shard_k else "", utterances=len(rows),
        hours=sum(r[3] for r in rows) / TARGET_RATE / 3600, distinct_voices=len({r[2].id for r in rows}),
        engines=engines, failures=len(failed), attempted=len(block), resumed=len(done),
        synthesized=sum(1 for r in results.values() if r["ok"]), wall_seconds=time.perf_counter() - start,
        failed=failed, manifests={k: str(v) for k, v in paths.items()},
    )
    if shar_dir is not None:
        summary.manifests["shar"] = str(shar_dir)
    if summary.failure_rate > failure_threshold:
        raise FailureThresholdExceeded(
            f"{summary.failures} of {summary.attempted} utterances failed ({100 * summary.failure_rate:.1f}% > "
            f"{100 * failure_threshold:.1f}%); see {paths['failures']}", summary)
    return summary


def write_cuts_shar(cuts_manifest: PathLike, shar_dir: PathLike, shard_size: int = 1000, num_jobs: int = 1,
                    executor: Optional[cf.Executor] = None) -> Dict[str, Any]:
    """A finished run's cuts (input order) with their audio as Shar shards (:mod:`synthasr.data.shar`):
    one task per shard on the same pool or cluster, complete shards kept on a rerun."""
    from lhotse import CutSet

    from synthasr.data.shar import write_shar

    cuts = CutSet.from_file(cuts_manifest)  # None for an empty manifest
    return write_shar(cuts if cuts is not None else [], shar_dir, shard_size, num_jobs=num_jobs, executor=executor)


# --- combining shards -----------------------------------------------------------------------------
def combine_shards(out_dir: PathLike, prefix: str, num_shards: Optional[int] = None) -> Dict[str, Any]:
    """Concatenate ``<prefix>_*.k-of-N`` shard manifests (k = 1..N) into the final manifests."""
    from lhotse import CutSet, RecordingSet, SupervisionSet, validate, validate_recordings_and_supervisions

    out = Path(out_dir)
    pattern = re.compile(re.escape(prefix) + r"_recordings\.(\d+)-of-(\d+)\.jsonl\.gz$")
    found: Dict[int, set] = {}
    for p in out.iterdir() if out.is_dir() else []:
        m = pattern.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if num_shards is None:
        if not found:
            raise CombineError(f"no shard manifests {prefix}_recordings.K-of-N.jsonl.gz in {out}")
        if len(found) > 1:
            raise CombineError(f"shard manifests with different N in {out}: {sorted(found)}; pass num_shards")
        num_shards = next(iter(found))
    shards = [(k, num_shards) for k in range(1, num_shards + 1)]
    for sh in shards:
        for key in ("recordings", "supervisions", "cuts"):
            p = manifest_paths(out, prefix, sh)[key]
            if not p.exists():
                raise CombineError(f"missing shard {sh[0]}-of-{sh[1]}: {p}")
    recs = RecordingSet.from_recordings(r for sh in shards for r in RecordingSet.from_file(manifest_paths(out, prefix, sh)["recordings"]))
    sups = SupervisionSet.from_segments(s for sh in shards for s in SupervisionSet.from_file(manifest_paths(out, prefix, sh)["supervisions"]))
    cut_list = [c for sh in shards for c in CutSet.from_file(manifest_paths(out, prefix, sh)["cuts"])]
    ids = [c.id for c in cut_list]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CombineError(f"utterance {dup!r} appears in more than one shard of {prefix}")
    cuts = CutSet.from_cuts(cut_list)
    if len(recs):
        validate_recordings_and_supervisions(recs, sups)
        validate(cuts)
    final = manifest_paths(out, prefix, None)
    for key, manifest in (("recordings", recs), ("supervisions", sups), ("cuts", cuts)):
        with atomic_path(final[key]) as tmp:
            manifest.to_file(tmp)
    failures: List[str] = []
    for sh in shards:
        fp = manifest_paths(out, prefix, sh)["failures"]
        if fp.exists():
            failures.extend(ln for ln in fp.read_text(encoding="utf-8").splitlines() if ln.strip())
    with atomic_write(final["failures"]) as f:
        f.writelines(ln + "\n" for ln in failures)
    hours = sum(r.duration for r in recs) / 3600
    return {"prefix": prefix, "shards": num_shards, "utterances": len(recs), "hours": hours,
            "failures": len(failures), "manifests": {k: str(v) for k, v in final.items()}}

