#!/usr/bin/env python3
"""Medication recipe, stage 2 alternative: a REAL general-domain corpus (LibriSpeech) instead of TTS.

When the user has a local copy of LibriSpeech or mini LibriSpeech, the baseline learns real read
speech and the general-domain test measures forgetting on real speech. This script turns the local
copy (never downloaded: there is no network) into the manifests the recipe already expects from
synthetic general speech, so later stages (fbank, BPE, training, decoding) do not change:

* ``<out-dir>/general_{train,dev,test}_{recordings,supervisions,cuts}.jsonl.gz`` (lhotse, 16 kHz mono,
  MonoCuts with one supervision spanning the whole cut; ``text`` normalized with
  ``synthasr.text.normalize``; ``custom = {"domain": "general", "source": "real", "corpus", "orig_text"}``)
* ``<text-dir>/general_{train,dev,test}.jsonl`` (``{"id", "text", "raw", "source"}``, the format of
  ``prepare_text.py``): stage 5 trains the BPE on ``general_train.jsonl``.
* ``<out-dir>/general_corpus_summary.json``: options, counts, hours, drops and a checksum of every
  output; written last, so its presence with matching checksums means the stage is complete.

Utterances whose text does not normalize are dropped; so are utterances containing any medication
name from ``medication_names.txt`` (all splits; ``--keep-med-names`` keeps them), so the baseline has
never heard a medication name and the general test does not score them. mini LibriSpeech has no test
part: its dev part is split by speaker into speaker-disjoint dev and test halves (``--test-part
split-dev``, also usable with full LibriSpeech).
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import click

from synthasr.text import NormalizationError, normalize
from synthasr.utils.io import atomic_path, atomic_write

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
SPLIT_DEV = "split-dev"  # --test-part value: carve a speaker-disjoint test half out of the dev part
SUMMARY_NAME = "general_corpus_summary.json"
DOMAIN_NAME = "general_domain.txt"  # one line for the recipe's report: which general domain was used
TEXT_SOURCE = {"librispeech": "librispeech", "mini_librispeech": "mini_librispeech"}
NUM_EXAMPLES = 5  # ids named per drop reason

# Known part names, the same lists lhotse's recipe downloads (typos fail early with the choices).
KNOWN_PARTS = {
    "librispeech": ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
                    "test-clean", "test-other"),
    "mini_librispeech": ("train-clean-5", "dev-clean-2"),
}
DEFAULT_PARTS = {
    "librispeech": (("train-clean-100",), "dev-clean", "test-clean"),
    "mini_librispeech": (("train-clean-5",), "dev-clean-2", SPLIT_DEV),
}
LAYOUT = ("LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt "
          "+ <speaker>-<chapter>-<utt>.flac")

LOG = logging.getLogger("prepare_general_corpus")


class GeneralCorpusError(ValueError):
    """The local corpus is missing, incomplete or unusable; the message names the path or utterance."""


# ---------------------------------------------------------------------------------------------
# Options and corpus layout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusOptions:
    """Everything that determines the outputs (a change means the stage must be redone)."""

    corpus: str
    corpus_root: Path  # the directory that holds the part directories (.../LibriSpeech)
    train_parts: Tuple[str, ...]
    dev_part: str
    test_part: str  # a part name or SPLIT_DEV
    max_train_hours: Optional[float] = None
    seed: int = 0
    med_names_sha256: Optional[str] = None  # None: med-name utterances are kept

    def fingerprint(self) -> dict:
        return {"corpus": self.corpus, "corpus_root": str(self.corpus_root), "train_parts": list(self.train_parts),
                "dev_part": self.dev_part, "test_part": self.test_part, "max_train_hours": self.max_train_hours,
                "seed": self.seed, "med_names_sha256": self.med_names_sha256}

    @property
    def parts(self) -> List[str]:
        parts = list(self.train_parts) + [self.dev_part]
        return parts + ([self.test_part] if self.test_part != SPLIT_DEV else [])


def resolve_parts(corpus: str, train_parts: Sequence[str], dev_part: Optional[str],
                  test_part: Optional[str]) -> Tuple[Tuple[str, ...], str, str]:
    """Fill in the corpus defaults and reject unknown or overlapping part names."""
    d_train, d_dev, d_test = DEFAULT_PARTS[corpus]
    train = tuple(train_parts) or d_train
    dev = dev_part or d_dev
    test = test_part or d_test
    known = KNOWN_PARTS[corpus]
    for part in (*train, dev) + ((test,) if test != SPLIT_DEV else ()):
        if part not in known:
            raise GeneralCorpusError(f"unknown {corpus} part {part!r}; choose from {', '.join(known)}"
                                     + (f" (or {SPLIT_DEV} for --test-part)" if part == test else ""))
    used = list(train) + [dev] + ([test] if test != SPLIT_DEV else [])
    dupes = sorted({p for p in used if used.count(p) > 1})
    if dupes:
        raise GeneralCorpusError(f"part(s) {', '.join(dupes)} used for more than one split; train/dev/test must differ")
    return train, dev, test


def find_corpus_root(corpus_dir: Path, parts: Sequence[str]) -> Path:
    """The directory holding the part directories: ``corpus_dir/LibriSpeech`` if it exists (the
    download target was given), else ``corpus_dir`` itself (``.../LibriSpeech`` was given).

    Checks every part has at least one transcript, so an incomplete copy fails here with the path
    instead of silently producing an empty split.
    """
    if not corpus_dir.is_dir():
        raise GeneralCorpusError(f"{corpus_dir}: corpus directory not found; expected {corpus_dir}/{LAYOUT}")
    corpus_dir = corpus_dir.resolve()
    root = corpus_dir / "LibriSpeech" if (corpus_dir / "LibriSpeech").is_dir() else corpus_dir
    part_layout = LAYOUT.split("/", 1)[1]
    for part in parts:
        part_dir = root / part
        if not part_dir.is_dir():
            raise GeneralCorpusError(f"{part_dir}: part missing; expected {root}/{part_layout} "
                                     f"for parts {', '.join(parts)}")
        if next(part_dir.rglob("*.trans.txt"), None) is None:
            raise GeneralCorpusError(f"{part_dir}: no *.trans.txt transcripts; expected {root}/{part_layout}")
    return root


def count_transcript_lines(part_dir: Path) -> int:
    """Utterances the transcripts list (lhotse skips those without audio with only a log warning)."""
    return sum(1 for t in part_dir.rglob("*.trans.txt")
               for line in t.read_text(encoding="utf-8").splitlines() if line.strip())


def read_med_names(path: Path) -> Set[str]:
    """First column of ``medication_names.txt`` (``name<TAB>kind<TAB>generic<TAB>source``)."""
    if not path.is_file():
        raise GeneralCorpusError(f"{path}: medication names not found; run stage 0 (local/prepare_text.py) "
                                 "first or pass --keep-med-names")
    names = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.split("\t", 1)[0].strip()
        if not line.strip():
            continue
        if not name or " " in name:
            raise GeneralCorpusError(f"{path}:{lineno}: expected a one-word name in the first column, got {line!r}")
        names.add(name)
    if not names:
        raise GeneralCorpusError(f"{path}: no medication names in the file")
    return names


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Output paths and completeness
# ---------------------------------------------------------------------------------------------


def output_paths(out_dir: Path, text_dir: Path) -> Dict[str, Path]:
    """Every file this script writes except the summary, keyed ``<split>/<kind>``."""
    paths = {}
    for split in SPLITS:
        for kind in ("recordings", "supervisions", "cuts"):
            paths[f"{split}/{kind}"] = out_dir / f"general_{split}_{kind}.jsonl.gz"
        paths[f"{split}/text"] = text_dir / f"general_{split}.jsonl"
    paths["domain"] = out_dir / DOMAIN_NAME
    return paths


def completed_summary(out_dir: Path, text_dir: Path, options: CorpusOptions) -> Optional[dict]:
    """The previous run's summary if it used the same options and all outputs are intact, else None.

    Checksums catch an output replaced since (e.g. stage 0 rewriting ``general_train.jsonl`` from
    fortunes, or synthetic TTS manifests written over ours).
    """
    summary_path = out_dir / SUMMARY_NAME
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("options") != options.fingerprint():
        LOG.info("%s: options differ from this call; preparing again", summary_path)
        return None
    recorded = summary.get("outputs", {})
    for path in output_paths(out_dir, text_dir).values():
        entry = recorded.get(str(path.resolve()))
        if not entry or not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            LOG.info("%s: missing or changed since the last run; preparing again", path)
            return None
    return summary


# ---------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------


@dataclass
class DropLog:
    """Counts (total and per corpus part) and example ids of dropped utterances, by reason."""

    counts: Dict[str, collections.Counter] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    examples: Dict[str, List[str]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, reason: str, utt_id: str, part: str) -> None:
        self.counts[reason][part] += 1
        if len(self.examples[reason]) < NUM_EXAMPLES:
            self.examples[reason].append(utt_id)

    def as_dict(self) -> dict:
        return {reason: {"count": sum(by_part.values()), "by_part": dict(sorted(by_part.items())),
                         "examples": self.examples[reason]}
                for reason, by_part in sorted(self.counts.items())}


def check_audio(recordings: Iterable) -> None:
    """LibriSpeech is 16 kHz mono FLAC; anything else would break the 16 kHz fbank contract."""
    for rec in recordings:
        if rec.sampling_rate != SAMPLE_RATE:
            raise GeneralCorpusError(f"{rec.sources[0].source}: sampling rate {rec.sampling_rate} Hz, expected "
                                     f"{SAMPLE_RATE} (resample the corpus first)")
        if rec.num_channels != 1:
            raise GeneralCorpusError(f"{rec.sources[0].source}: {rec.num_channels} channels, expected mono")


def clean_supervisions(
    supervisions: Iterable, part: str, corpus: str, med_names: Optional[Set[str]], drops: DropLog,
    med_hits: collections.Counter,
) -> List:
    """Normalize and tag each supervision; drop those that fail to normalize or name a medication."""
    from lhotse.utils import fastcopy

    kept = []
    for sup in supervisions:
        try:
            text = normalize(sup.text)
        except NormalizationError:
            drops.add("normalization", sup.id, part)
            continue
        if not text:
            drops.add("empty_text", sup.id, part)
            continue
        hits = med_names.intersection(text.split()) if med_names else set()
        if hits:
            med_hits.update(hits)
            drops.add("med_names", sup.id, part)
            continue
        custom = {"domain": "general", "source": "real", "corpus": corpus, "orig_text": sup.text}
        kept.append(fastcopy(sup, text=text, custom=custom))
    return kept


def split_by_speaker(supervisions: Sequence, seed: int) -> Tuple[List, List]:
    """Speaker-disjoint halves (by speaker count) of a part, for corpora without a test part."""
    speakers = sorted({s.speaker for s in supervisions})
    if len(speakers) < 2:
        raise GeneralCorpusError(f"cannot split the dev part by speaker: it has {len(speakers)} speaker(s)")
    random.Random(seed).shuffle(speakers)
    dev_speakers = set(speakers[: (len(speakers) + 1) // 2])
    dev = [s for s in supervisions if s.speaker in dev_speakers]
    test = [s for s in supervisions if s.speaker not in dev_speakers]
    return dev, test


def cap_hours(supervisions: Sequence, max_hours: Optional[float], seed: int, drops: DropLog) -> List:
    """A seeded random subset of at most ``max_hours`` (whole utterances), in id order."""
    if max_hours is None:
        return list(supervisions)
    order = sorted(supervisions, key=lambda s: s.id)
    random.Random(seed).shuffle(order)
    budget, total, kept = max_hours * 3600.0, 0.0, []
    for sup in order:
        if total + sup.duration <= budget:
            kept.append(sup)
            total += sup.duration
        else:
            drops.add("max_train_hours", sup.id, "train")
    return sorted(kept, key=lambda s: s.id)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_split(split: str, supervisions: Sequence, recordings: Dict[str, object], paths: Dict[str, Path],
                text_source: str) -> dict:
    """Validate and atomically write one split's manifests and text; returns its counts."""
    from lhotse import CutSet, RecordingSet, SupervisionSet, validate, validate_recordings_and_supervisions

    if not supervisions:
        raise GeneralCorpusError(f"split {split!r} is empty after filtering; see the drop counts")
    sups = SupervisionSet.from_segments(sorted(supervisions, key=lambda s: s.id))
    recs = RecordingSet.from_recordings(recordings[s.recording_id] for s in sups)
    cuts = CutSet.from_manifests(recordings=recs, supervisions=sups)
    validate_recordings_and_supervisions(recs, sups)
    validate(cuts)
    for kind, manifest in (("recordings", recs), ("supervisions", sups), ("cuts", cuts)):
        with atomic_path(paths[f"{split}/{kind}"]) as tmp:
            manifest.to_file(tmp)
    with atomic_write(paths[f"{split}/text"]) as f:
        for sup in sups:
            record = {"id": sup.id, "text": sup.text, "raw": sup.custom["orig_text"], "source": text_source}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"utterances": len(sups), "hours": round(sum(s.duration for s in sups) / 3600.0, 4),
            "speakers": len({s.speaker for s in sups})}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def load_parts(options: CorpusOptions, num_jobs: int) -> Tuple[Dict[str, List], Dict[str, object], int]:
    """lhotse's LibriSpeech recipe on the local copy: supervisions per part, recordings by id,
    and how many transcript lines had no audio file."""
    from lhotse.recipes import prepare_librispeech

    manifests = prepare_librispeech(options.corpus_root, dataset_parts=options.parts, output_dir=None,
                                    num_jobs=num_jobs)
    supervisions, recordings, missing_audio = {}, {}, 0
    for part in options.parts:
        if part not in manifests:
            raise GeneralCorpusError(f"{options.corpus_root / part}: lhotse prepared no manifests for this part")
        recs, sups = manifests[part]["recordings"], manifests[part]["supervisions"]
        check_audio(recs)
        recordings.update((r.id, r) for r in recs)
        supervisions[part] = list(sups)
        missing_audio += count_transcript_lines(options.corpus_root / part) - len(supervisions[part])
    return supervisions, recordings, missing_audio


def prepare(options: CorpusOptions, out_dir: Path, text_dir: Path, med_names: Optional[Set[str]],
            num_jobs: int = 1, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Build every output (or return the previous summary at once if complete)."""
    done = completed_summary(out_dir, text_dir, options)
    if done is not None:
        log(f"{out_dir / SUMMARY_NAME}: outputs complete, nothing to do")
        done["skipped"] = True
        return done
    log(f"reading {options.corpus} parts {', '.join(options.parts)} from {options.corpus_root}")
    by_part, recordings, missing_audio = load_parts(options, num_jobs)

    drops, med_hits = DropLog(), collections.Counter()
    clean = {part: clean_supervisions(sups, part, options.corpus, med_names, drops, med_hits)
             for part, sups in by_part.items()}
    splits = {"train": [s for p in options.train_parts for s in clean[p]], "dev": clean[options.dev_part]}
    if options.test_part == SPLIT_DEV:
        splits["dev"], splits["test"] = split_by_speaker(splits["dev"], options.seed)
    else:
        splits["test"] = clean[options.test_part]
    splits["train"] = cap_hours(splits["train"], options.max_train_hours, options.seed, drops)

    paths = output_paths(out_dir, text_dir)
    stats = {split: write_split(split, splits[split], recordings, paths, TEXT_SOURCE[options.corpus])
             for split in SPLITS}
    domain = describe_domain(options, stats)
    with atomic_write(paths["domain"]) as f:
        f.write(domain + "\n")
    summary = {
        "general_domain": domain,
        "options": options.fingerprint(),
        "splits": stats,
        "input_utterances": {part: len(sups) for part, sups in by_part.items()},
        "missing_audio": missing_audio,
        "dropped": drops.as_dict(),
        "med_name_hits": dict(med_hits.most_common()),
        "outputs": {str(p.resolve()): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in paths.values()},
    }
    with atomic_write(out_dir / SUMMARY_NAME) as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    summary["skipped"] = False
    return summary


def describe_domain(options: CorpusOptions, stats: Dict[str, dict]) -> str:
    """One plain line saying which real corpus, parts and amounts make up the general domain."""
    test_part = f"{options.dev_part} (speaker-disjoint half)" if options.test_part == SPLIT_DEV else options.test_part
    dev_part = f"{options.dev_part} (speaker-disjoint half)" if options.test_part == SPLIT_DEV else options.dev_part
    parts = {"train": "+".join(options.train_parts), "dev": dev_part, "test": test_part}
    cap = f", capped at {options.max_train_hours:g} h" if options.max_train_hours is not None else ""
    splits = "; ".join(f"{split} {parts[split]}: {stats[split]['hours']:.2f} h, {stats[split]['utterances']} utts"
                       + (cap if split == "train" else "") for split in SPLITS)
    name = "LibriSpeech" if options.corpus == "librispeech" else "mini LibriSpeech"
    return f"real read speech, {name} ({splits})"


def format_summary(summary: dict) -> List[str]:
    lines = [f"general domain: {summary['general_domain']}"]
    for split in SPLITS:
        s = summary["splits"][split]
        lines.append(f"  {split:5s}: {s['utterances']} utterances, {s['hours']:.2f} h, {s['speakers']} speakers")
    lines.append(f"  transcript lines without audio: {summary['missing_audio']}")
    for reason, info in summary["dropped"].items():
        by_part = ", ".join(f"{part} {n}" for part, n in info["by_part"].items())
        lines.append(f"  dropped ({reason}): {info['count']} ({by_part}) e.g. {', '.join(info['examples'])}")
    if summary["med_name_hits"]:
        top = list(summary["med_name_hits"].items())[:10]
        lines.append("  medication names found: " + ", ".join(f"{name} x{n}" for name, n in top))
    return lines


@click.command()
@click.option("--corpus", required=True, type=click.Choice(sorted(KNOWN_PARTS)), help="Which corpus the directory holds.")
@click.option("--corpus-dir", required=True, type=click.Path(path_type=Path),
              help="Local copy: the directory holding LibriSpeech/ (or LibriSpeech/ itself). Never downloaded.")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Manifest directory (the recipe's data/<name>/tts).")
@click.option("--text-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Text directory (the recipe's data/<name>/text): general_{train,dev,test}.jsonl go here.")
@click.option("--train-parts", multiple=True, help="Training part(s); repeatable or comma-separated. "
              "Default: train-clean-100 (librispeech), train-clean-5 (mini_librispeech).")
@click.option("--dev-part", default=None, help="Default: dev-clean / dev-clean-2.")
@click.option("--test-part", default=None,
              help=f"Default: test-clean / {SPLIT_DEV} ({SPLIT_DEV}: speaker-disjoint half of the dev part).")
@click.option("--max-train-hours", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help="Keep a seeded random subset of at most this many training hours.")
@click.option("--med-names", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="medication_names.txt from stage 0. Default: <text-dir>/medication_names.txt.")
@click.option("--keep-med-names", is_flag=True, help="Keep utterances that contain a medication name.")
@click.option("--seed", default=0, show_default=True, type=int, help="For --max-train-hours and split-dev.")
@click.option("--num-jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads reading audio headers.")
def main(corpus: str, corpus_dir: Path, out_dir: Path, text_dir: Path, train_parts: Tuple[str, ...],
         dev_part: Optional[str], test_part: Optional[str], max_train_hours: Optional[float],
         med_names: Optional[Path], keep_med_names: bool, seed: int, num_jobs: int) -> None:
    """Manifests + text for the general domain from a local LibriSpeech / mini LibriSpeech copy."""
    logging.basicConfig(level=logging.INFO, format="[prepare_general_corpus] %(message)s")
    train_parts = tuple(p for arg in train_parts for p in arg.split(",") if p)
    try:
        train, dev, test = resolve_parts(corpus, train_parts, dev_part, test_part)
        root = find_corpus_root(corpus_dir, list(train) + [dev] + ([test] if test != SPLIT_DEV else []))
        names = None if keep_med_names else read_med_names(med_names or text_dir / "medication_names.txt")
        names_sha = None if keep_med_names else sha256_file(med_names or text_dir / "medication_names.txt")
        options = CorpusOptions(corpus, root, train, dev, test, max_train_hours, seed, names_sha)
        summary = prepare(options, out_dir, text_dir, names, num_jobs,
                          log=lambda m: click.echo(f"[prepare_general_corpus] {m}", err=True))
    except GeneralCorpusError as e:
        raise click.ClickException(str(e)) from None
    for line in format_summary(summary):
        click.echo(line)


if __name__ == "__main__":
    sys.exit(main())
