#!/usr/bin/env python3
"""Medication recipe: a REAL human speech test set (``general_real``), for evaluation only.

Every other test set in the recipe is TTS speech. This one measures what a user cares about:
whether the model still recognises real people. It is assembled from recordings with exact
transcripts that ship inside Debian packages (nothing is downloaded; installing the packages is the
recipe's setup step). Sources, licences, speakers and durations: ``local/README.md``.

* ``asterisk``: Debian ``asterisk-core-sounds-en-wav`` (audio, 8 kHz) + ``asterisk-core-sounds-en``
  (the transcript list ``core-sounds-en.txt.gz``): Asterisk's English prompts read by Allison Smith.
* ``pocketsphinx``: Debian ``pocketsphinx-testdata``: LibriVox read speech (5 utterances) and
  spoken playing-card names (5 utterances), each with a Sphinx transcription file.

Outputs in ``--out-dir`` (all written atomically; the manifests pass lhotse's validators):

* ``audio/<utt-id>.flac``: 16 kHz mono copies, resampled by lhotse,
* ``general_real_{recordings,supervisions,cuts}.jsonl.gz``: one supervision per recording, ``text``
  normalized by ``synthasr.text.normalize``, ``speaker`` set, and ``custom = {"domain": "general_real",
  "source": "real", "corpus", "orig_text"}`` on the supervision (``domain``/``source``/``corpus`` on the
  cut too),
* ``general_real.jsonl`` (``{"id", "text", "raw", "speaker", "corpus"}``) and
  ``general_real_summary.json`` (counts, minutes, speakers, drops per reason; written last).

A recording longer than ``--max-duration`` is cut at sentence boundaries only when that is
unambiguous: some minimum pause length splits it into exactly as many speech stretches as its
transcript has sentences, each of a plausible length for its words. Otherwise it is dropped (and
counted): these transcripts carry no timings. With the packaged data, the three Asterisk prompts over
30 s all fail that test (a short first sentence is followed by a pause no longer than pauses inside
sentences); two of them are dropped earlier for acronyms anyway. Everything kept is shorter than 30 s
and kept whole.

Also dropped (and counted): transcript entries that describe a sound instead of words (``[beep
tone]``, ``(10 seconds of silence)``, ``<beep ascending>``), text the normalizer cannot read, and
Asterisk entries with acronyms or names like ``H.323`` (read as letters or as a word: the normalized
text would score only one reading). A missing package, a transcript list whose entries do not match
the audio files, or a manifest that fails validation stops with a one-line error; ``--optional``
turns that into a warning and exit status 0 (stale outputs are removed so later stages skip the set).
"""
from __future__ import annotations

import collections
import gzip
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import click

from synthasr.text import NormalizationError, normalize
from synthasr.utils.io import atomic_path, atomic_write, ensure_dir

SAMPLE_RATE = 16000
DOMAIN = "general_real"
PREFIX = "general_real"
MANIFEST_KINDS = ("recordings", "supervisions", "cuts")
DEFAULT_MAX_DURATION = 30.0  # seconds; Whisper's window, and far above the longest prompt (25.4 s)


class RealSpeechError(ValueError):
    """A source is missing or inconsistent, or a manifest is invalid; the message names the file."""


@dataclass(frozen=True)
class Utterance:
    """One recording with its exact transcript, before resampling and normalization."""

    id: str
    audio: Path
    raw_text: str
    speaker: str
    corpus: str


@dataclass(frozen=True)
class Source:
    name: str
    packages: Tuple[str, ...]  # Debian packages to install
    reader: Callable[[Path, "DropLog"], List[Utterance]]


class DropLog:
    """Why utterances were left out: counts and a few example ids per reason."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.examples: Dict[str, List[str]] = collections.defaultdict(list)

    def add(self, reason: str, utt_id: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(utt_id)

    def as_dict(self) -> dict:
        return {r: {"count": n, "examples": self.examples[r]} for r, n in sorted(self.counts.items())}


def require(path: Path, package: str) -> Path:
    if not path.exists():
        raise RealSpeechError(f"{path} not found: install the Debian package {package} "
                              f"(apt-get install {package})")
    return path


# ---------------------------------------------------------------------------------------------
# asterisk-core-sounds-en
# ---------------------------------------------------------------------------------------------

ASTERISK_AUDIO = Path("usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXT = Path("usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_SPEAKER = "asterisk-allison-smith"
# Listed in core-sounds-en.txt but shipped without audio upstream (asterisk-core-sounds 1.6.1).
ASTERISK_TEXT_WITHOUT_AUDIO = frozenset({"pls-try-call-later"})
# Entries that describe a sound or carry an editor's note instead of (only) the spoken words.
ANNOTATION_RE = re.compile(r"[\[\]()<>]")
# Acronyms (PBX, IAX, DAHDI) and names like H.323 are read as letters or as a word: the normalized
# transcript would score only one of the readings, so such entries are left out.
AMBIGUOUS_READING_RE = re.compile(r"\b[A-Z]{2,}\b|\b[A-Za-z]+\.\d")
# What the prompts say for keypad symbols, and the list's misspellings of English words (text-only
# fixes: each is a non-word in the list, corrected to the word it misspells).
ASTERISK_MISSPELLINGS = {"fourtieth": "fortieth", "umute": "unmute", "represenatives": "representatives",
                         "indentified": "identified", "witheld": "withheld"}
ASTERISK_SPOKEN_FORMS = ((re.compile(r"\*"), " star "), (re.compile(r"#"), " pound "),
                         *((re.compile(rf"\b{wrong}\b"), right) for wrong, right in ASTERISK_MISSPELLINGS.items()))


def parse_asterisk_list(path: Path) -> Dict[str, str]:
    """``name: text`` lines of core-sounds-en.txt(.gz); ``;`` comments; errors name file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise RealSpeechError(f"{path}: cannot read the transcript list: {e}") from None
    entries: Dict[str, str] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(";"):
            continue
        name, sep, text = line.partition(":")
        if not sep or not name.strip():
            raise RealSpeechError(f"{path}:{line_no}: expected 'name: transcript', got {line!r}")
        if name.strip() in entries:
            raise RealSpeechError(f"{path}:{line_no}: duplicate entry {name.strip()!r}")
        entries[name.strip()] = text.strip()
    return entries


def asterisk_spoken_text(text: str) -> str:
    for pattern, spoken in ASTERISK_SPOKEN_FORMS:
        text = pattern.sub(spoken, text)
    return text


def read_asterisk(root: Path, drops: DropLog) -> List[Utterance]:
    audio_dir = require(root / ASTERISK_AUDIO, "asterisk-core-sounds-en-wav")
    text_path = require(root / ASTERISK_TEXT, "asterisk-core-sounds-en")
    entries = parse_asterisk_list(text_path)
    audio = {p.relative_to(audio_dir).with_suffix("").as_posix(): p for p in audio_dir.rglob("*.wav")}
    missing_audio = sorted(set(entries) - set(audio) - ASTERISK_TEXT_WITHOUT_AUDIO)
    missing_text = sorted(set(audio) - set(entries))
    if missing_audio or missing_text:
        raise RealSpeechError(
            f"{text_path}: {len(entries)} transcripts do not match the {len(audio)} .wav files in {audio_dir} "
            f"(no audio: {missing_audio[:3]}, no transcript: {missing_text[:3]}); reinstall "
            f"asterisk-core-sounds-en and asterisk-core-sounds-en-wav")
    utterances = []
    for name in sorted(set(entries) & set(audio)):
        utt_id = "asterisk-" + name.replace("/", "-")
        if ANNOTATION_RE.search(entries[name]):
            drops.add("not_words", utt_id)
            continue
        if AMBIGUOUS_READING_RE.search(entries[name]):
            drops.add("ambiguous_reading", utt_id)
            continue
        utterances.append(Utterance(utt_id, audio[name], asterisk_spoken_text(entries[name]), ASTERISK_SPEAKER,
                                    "asterisk-core-sounds-en"))
    return utterances


# ---------------------------------------------------------------------------------------------
# pocketsphinx-testdata
# ---------------------------------------------------------------------------------------------

POCKETSPHINX_DATA = Path("usr/share/pocketsphinx/test/data")
POCKETSPHINX_PARTS = (  # (directory, transcription file, fileids file, speaker)
    ("librivox", "transcription", "fileids", "pocketsphinx-librivox-reader"),
    ("cards", "cards.transcription", "cards.fileids", "pocketsphinx-cards-speaker"),
)
SPHINX_LINE_RE = re.compile(r"^(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()\s]+)\)\s*$")


def parse_sphinx_transcription(path: Path) -> List[Tuple[str, str]]:
    """``<s> words </s> (utt_id)`` lines -> ``[(utt_id, words)]``; errors name file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RealSpeechError(f"{path}: cannot read: {e}") from None
    pairs = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        m = SPHINX_LINE_RE.match(line)
        if m is None:
            raise RealSpeechError(f"{path}:{line_no}: expected '<s> words </s> (utt_id)', got {line!r}")
        pairs.append((m.group("id"), m.group("text")))
    return pairs


def read_pocketsphinx(root: Path, drops: DropLog) -> List[Utterance]:
    data = require(root / POCKETSPHINX_DATA, "pocketsphinx-testdata")
    utterances = []
    for part, transcription, fileids, speaker in POCKETSPHINX_PARTS:
        part_dir = require(data / part, "pocketsphinx-testdata")
        pairs = parse_sphinx_transcription(require(part_dir / transcription, "pocketsphinx-testdata"))
        ids = require(part_dir / fileids, "pocketsphinx-testdata").read_text(encoding="utf-8").split()
        wavs = sorted(part_dir.glob("*.wav"))
        if [p[0] for p in pairs] != ids or len(wavs) != len(ids):
            raise RealSpeechError(f"{part_dir / transcription}: {len(pairs)} transcripts, {len(ids)} ids in "
                                  f"{fileids}, {len(wavs)} .wav files: they must match one to one")
        for utt, text in pairs:
            wav = require(part_dir / f"{utt}.wav", "pocketsphinx-testdata")
            utterances.append(Utterance(f"pocketsphinx-{part}-{utt}", wav, text, speaker,
                                        f"pocketsphinx-testdata/{part}"))
    return utterances


SOURCES: Dict[str, Source] = {
    "asterisk": Source("asterisk", ("asterisk-core-sounds-en", "asterisk-core-sounds-en-wav"), read_asterisk),
    "pocketsphinx": Source("pocketsphinx", ("pocketsphinx-testdata",), read_pocketsphinx),
}


# ---------------------------------------------------------------------------------------------
# Audio, manifests, validation
# ---------------------------------------------------------------------------------------------


def output_paths(out_dir: Path) -> Dict[str, Path]:
    paths = {kind: out_dir / f"{PREFIX}_{kind}.jsonl.gz" for kind in MANIFEST_KINDS}
    paths["text"] = out_dir / f"{PREFIX}.jsonl"
    paths["summary"] = out_dir / f"{PREFIX}_summary.json"
    return paths


def load_resampled(utt: Utterance):
    """``utt.audio`` as 16 kHz mono float32 samples (lhotse resampling)."""
    from lhotse import Recording

    try:
        source = Recording.from_file(utt.audio, recording_id=utt.id)
        if source.num_channels != 1:
            raise RealSpeechError(f"{utt.audio}: {source.num_channels} channels, expected mono")
        return source.resample(SAMPLE_RATE).load_audio()[0]
    except RealSpeechError:
        raise
    except Exception as e:  # lhotse/soundfile raise many types for unreadable audio
        raise RealSpeechError(f"{utt.audio}: cannot read audio: {e}") from None


def write_flac(samples, utt_id: str, audio_dir: Path):
    """Atomically write a 16 kHz FLAC; returns its lhotse Recording."""
    import soundfile as sf
    from lhotse import Recording

    target = audio_dir / f"{utt_id}.flac"
    with atomic_path(target) as tmp:
        sf.write(str(tmp), samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return Recording.from_file(target, recording_id=utt_id)


# ---------------------------------------------------------------------------------------------
# Cutting a long recording at sentence boundaries, only when that is unambiguous
# ---------------------------------------------------------------------------------------------

SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
FRAME_SECONDS = 0.02
SILENCE_DB = -35.0  # frame RMS below this (relative to the loudest frame) is silence
PAUSE_THRESHOLDS = (0.25, 0.35, 0.5, 0.75, 1.0)  # seconds; tried in order
SECONDS_PER_WORD = (0.12, 1.5)  # a segment outside this range means the mapping is wrong


def split_sentences(text: str) -> List[str]:
    return [s for s in SENTENCE_END_RE.split(text.strip()) if s]


def find_pauses(samples, min_pause: float) -> List[Tuple[float, float]]:
    """Silent runs of at least ``min_pause`` seconds strictly between speech (start, end in seconds)."""
    import numpy as np

    hop = int(FRAME_SECONDS * SAMPLE_RATE)
    n = len(samples) // hop
    if n == 0:
        return []
    frames = np.asarray(samples[: n * hop], dtype=np.float64).reshape(n, hop)
    rms_db = 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    silent = rms_db < rms_db.max() + SILENCE_DB
    speech = np.flatnonzero(~silent)
    if len(speech) == 0:
        return []
    pauses, run_start = [], None
    for i in range(speech[0], speech[-1] + 1):
        if silent[i] and run_start is None:
            run_start = i
        elif not silent[i] and run_start is not None:
            if (i - run_start) * FRAME_SECONDS >= min_pause:
                pauses.append((run_start * FRAME_SECONDS, i * FRAME_SECONDS))
            run_start = None
    return pauses


def sentence_segments(samples, text: str) -> Optional[List[Tuple[int, int, str]]]:
    """``[(start_sample, end_sample, sentence)]`` when some pause length separates the recording into
    exactly as many speech stretches as the transcript has sentences, each of a plausible length for
    its words; otherwise None (the recording cannot be cut exactly)."""
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return None
    for min_pause in PAUSE_THRESHOLDS:
        pauses = find_pauses(samples, min_pause)
        if len(pauses) != len(sentences) - 1:
            continue
        bounds = [0] + [int((a + b) / 2 * SAMPLE_RATE) for a, b in pauses] + [len(samples)]
        segments = [(bounds[i], bounds[i + 1], sentences[i]) for i in range(len(sentences))]
        if all(SECONDS_PER_WORD[0] <= (end - start) / SAMPLE_RATE / max(1, len(sentence.split()))
               <= SECONDS_PER_WORD[1] for start, end, sentence in segments):
            return segments
    return None


def utterance_pieces(utt: Utterance, samples, max_duration: float, drops: DropLog):
    """``[(utt_id, samples, raw_text)]``: the whole recording, its sentences, or nothing."""
    if len(samples) <= max_duration * SAMPLE_RATE:
        return [(utt.id, samples, utt.raw_text)]
    segments = sentence_segments(samples, utt.raw_text)
    if segments is None or any(end - start > max_duration * SAMPLE_RATE for start, end, _ in segments):
        drops.add("longer_than_max_duration_not_cuttable", utt.id)
        return []
    drops.add("cut_at_sentence_boundaries", utt.id)
    return [(f"{utt.id}-s{i + 1}", samples[start:end], sentence)
            for i, (start, end, sentence) in enumerate(segments)]


def build_supervision(utt: Utterance, recording, text: str, raw_text: str):
    from lhotse import SupervisionSegment

    return SupervisionSegment(
        id=recording.id, recording_id=recording.id, start=0.0, duration=recording.duration, channel=0,
        text=text, speaker=utt.speaker, language="English",
        custom={"domain": DOMAIN, "source": "real", "corpus": utt.corpus, "orig_text": raw_text})


def validate_manifests(recordings, supervisions, cuts, where: Path) -> None:
    """lhotse's validators; any failure becomes one line naming the manifest directory."""
    from lhotse import validate, validate_recordings_and_supervisions

    try:
        validate_recordings_and_supervisions(recordings, supervisions)
        validate(cuts, read_data=False)
    except (AssertionError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RealSpeechError(f"{where}: {PREFIX} manifests fail lhotse validation: {first}") from None


def build_manifests(utterances: Sequence[Utterance], audio_dir: Path, max_duration: float, drops: DropLog):
    from lhotse import CutSet, RecordingSet, SupervisionSet
    from lhotse.utils import fastcopy

    recordings, supervisions = [], []
    for utt in utterances:
        try:
            text = normalize(utt.raw_text)
        except NormalizationError:
            drops.add("normalization", utt.id)
            continue
        if not text:
            drops.add("empty_text", utt.id)
            continue
        for piece_id, samples, raw_text in utterance_pieces(utt, load_resampled(utt), max_duration, drops):
            recording = write_flac(samples, piece_id, audio_dir)
            recordings.append(recording)
            supervisions.append(build_supervision(utt, recording, normalize(raw_text), raw_text))
    if not supervisions:
        raise RealSpeechError(f"{audio_dir}: no utterance left after filtering; drops: {dict(drops.counts)}")
    recs = RecordingSet.from_recordings(recordings)
    sups = SupervisionSet.from_segments(supervisions)
    cuts = CutSet.from_manifests(recordings=recs, supervisions=sups)
    # Cut id = utterance id (lhotse would append "-0"), so result files name the utterance.
    cuts = CutSet.from_cuts(
        fastcopy(c, id=c.supervisions[0].id,
                 custom={k: c.supervisions[0].custom[k] for k in ("domain", "source", "corpus")})
        for c in cuts)
    return recs, sups, cuts


def sample_manifests(recs, sups, cuts, max_utterances: int, seed: int):
    """A seeded random sample of ``max_utterances`` cuts (0: all), with their recordings and supervisions."""
    if max_utterances <= 0 or len(cuts) <= max_utterances:
        return recs, sups, cuts
    import random

    keep = set(random.Random(f"real_speech:{seed}").sample(sorted(cuts.ids), max_utterances))
    cuts = cuts.filter(lambda c: c.id in keep).to_eager()
    sups = sups.filter(lambda s: s.id in keep)
    recording_ids = {s.recording_id for s in sups}
    return recs.filter(lambda r: r.id in recording_ids), sups, cuts


def summarize(sups, drops: DropLog, sources: Sequence[str], max_duration: float) -> dict:
    by_corpus: Dict[str, dict] = {}
    for s in sups:
        row = by_corpus.setdefault(s.custom["corpus"], {"utterances": 0, "minutes": 0.0, "speakers": set()})
        row["utterances"] += 1
        row["minutes"] += s.duration / 60.0
        row["speakers"].add(s.speaker)
    return {
        "sources": list(sources),
        "max_duration": max_duration,
        "utterances": len(sups),
        "minutes": round(sum(s.duration for s in sups) / 60.0, 2),
        "speakers": len({s.speaker for s in sups}),
        "words": sum(len(s.text.split()) for s in sups),
        "corpora": {c: {"utterances": r["utterances"], "minutes": round(r["minutes"], 2),
                        "speakers": sorted(r["speakers"])} for c, r in sorted(by_corpus.items())},
        "dropped": drops.as_dict(),
    }


def write_outputs(recs, sups, cuts, paths: Dict[str, Path], summary: dict) -> None:
    for kind, manifest in zip(MANIFEST_KINDS, (recs, sups, cuts)):
        with atomic_path(paths[kind]) as tmp:
            manifest.to_file(tmp)
    with atomic_write(paths["text"]) as f:
        for s in sups:
            f.write(json.dumps({"id": s.id, "text": s.text, "raw": s.custom["orig_text"], "speaker": s.speaker,
                                "corpus": s.custom["corpus"]}, ensure_ascii=False) + "\n")
    with atomic_write(paths["summary"]) as f:  # last: its presence means the set is complete
        json.dump(summary, f, indent=2)
        f.write("\n")


def remove_outputs(paths: Dict[str, Path]) -> None:
    for path in paths.values():
        path.unlink(missing_ok=True)


def prepare(out_dir: Path, sources: Sequence[str], data_root: Path = Path("/"),
            max_duration: float = DEFAULT_MAX_DURATION, max_utterances: int = 0, seed: int = 0) -> dict:
    """Read every source, resample, normalize, validate and write the ``general_real`` set."""
    drops = DropLog()
    utterances: List[Utterance] = []
    for name in sources:
        utterances += SOURCES[name].reader(data_root, drops)
    paths = output_paths(out_dir)
    audio_dir = ensure_dir(out_dir / "audio")
    recs, sups, cuts = build_manifests(utterances, audio_dir, max_duration, drops)
    recs, sups, cuts = sample_manifests(recs, sups, cuts, max_utterances, seed)
    validate_manifests(recs, sups, cuts, out_dir)
    summary = summarize(sups, drops, sources, max_duration)
    write_outputs(recs, sups, cuts, paths, summary)
    return summary


def format_summary(summary: dict) -> Iterable[str]:
    yield (f"{PREFIX}: {summary['utterances']} utterances, {summary['minutes']:.1f} min, "
           f"{summary['speakers']} speakers, {summary['words']} words")
    for corpus, row in summary["corpora"].items():
        yield f"  {corpus}: {row['utterances']} utterances, {row['minutes']:.1f} min, {len(row['speakers'])} speaker(s)"
    for reason, row in summary["dropped"].items():
        yield f"  dropped ({reason}): {row['count']}, e.g. {', '.join(row['examples'])}"


def parse_sources(value: str) -> List[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise click.BadParameter(f"unknown source(s) {unknown}; choose from {', '.join(SOURCES)}")
    return names


@click.command()
@click.option("--out-dir", required=True, type=click.Path(path_type=Path),
              help="Where the manifests, text and 16 kHz audio go (e.g. data/default/real).")
@click.option("--sources", default=",".join(SOURCES), show_default=True,
              help="Comma-separated sources: " + ", ".join(SOURCES))
@click.option("--max-duration", default=DEFAULT_MAX_DURATION, show_default=True, type=click.FloatRange(min=1.0),
              help="Recordings longer than this (seconds) are dropped, not cut.")
@click.option("--max-utterances", default=0, show_default=True, type=click.IntRange(min=0),
              help="Keep a seeded random sample of this many utterances (0: all; smoke runs).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of that sample.")
@click.option("--data-root", default="/", show_default=True, type=click.Path(path_type=Path),
              help="Prefix of the Debian install paths (tests use a fake tree).")
@click.option("--optional", is_flag=True,
              help="A missing or broken source is a warning and exit 0 (the recipe goes on without the set).")
def main(out_dir: Path, sources: str, max_duration: float, max_utterances: int, seed: int, data_root: Path,
         optional: bool) -> None:
    """Real human speech test set (evaluation only) from Debian package data -> lhotse manifests."""
    names = parse_sources(sources)
    try:
        summary = prepare(out_dir, names, data_root, max_duration, max_utterances, seed)
    except (RealSpeechError, OSError) as e:
        if not optional:
            raise click.ClickException(str(e)) from None
        remove_outputs(output_paths(out_dir))
        click.echo(f"[prepare_real_speech] WARNING: {e}; continuing without {PREFIX} (optional)", err=True)
        return
    for line in format_summary(summary):
        click.echo(f"[prepare_real_speech] {line}")


if __name__ == "__main__":
    sys.exit(main())
