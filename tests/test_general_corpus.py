"""Tests for recipes/medication/local/prepare_general_corpus.py on a tiny fake LibriSpeech copy."""
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from synthasr.text import is_normalized

_SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "local" / "prepare_general_corpus.py"
_spec = importlib.util.spec_from_file_location("prepare_general_corpus", _SCRIPT)
G = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("prepare_general_corpus", G)  # dataclasses look their module up while the class is built
_spec.loader.exec_module(G)

MED_NAMES = "atorvastatin\tgeneric\tatorvastatin\tmedlineplus:a600045\nlipitor\tbrand\tatorvastatin\tfda-unii\n"

# part -> list of (utt id, transcript, seconds or None for "transcript line without audio")
TRAIN = [
    ("19-198-0000", "HE HOPED THERE WOULD BE STEW FOR DINNER", 0.50),
    ("19-198-0001", "TURNIPS AND CARROTS AND BRUISED POTATOES", 0.60),
    ("19-198-0002", "THE DOCTOR GAVE HIM LIPITOR YESTERDAY", 0.70),   # medication name -> dropped
    ("26-495-0000", "IT'S MISTER O'BRIEN'S HOUSE", 0.80),
    ("26-495-0001", "A SNOWMAN \u2603 IN THE YARD", 0.40),               # does not normalize -> dropped
    ("26-495-0002", "THIS LINE HAS NO AUDIO FILE", None),               # lhotse skips it
    ("32-21631-0000", "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM", 0.90),
]
DEV = [
    ("1272-128104-0000", "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES", 0.55),
    ("1272-128104-0001", "NOR IS MISTER QUILTER'S MANNER LESS INTERESTING", 0.45),
    ("1462-170138-0000", "HE HAD WRITTEN A NUMBER OF BOOKS HIMSELF", 0.65),
    ("2277-149896-0000", "HE WAS IN A FEVERED STATE OF MIND", 0.35),
    ("2412-153948-0000", "THE SUN SHONE ON THE HILLS", 0.75),
    ("2412-153948-0001", "SHE TOOK ATORVASTATIN EVERY NIGHT", 0.50),  # medication name -> dropped (dev too)
]
TRAIN_KEPT = ["19-198-0000", "19-198-0001", "26-495-0000", "32-21631-0000"]
DEV_KEPT = [u for u, _, _ in DEV if u != "2412-153948-0001"]


def _write_part(root: Path, part: str, utts, sample_rate: int = 16000) -> None:
    """LibriSpeech layout: <part>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac + <spk>-<chapter>.trans.txt."""
    rng = np.random.default_rng(len(part))
    chapters = {}
    for utt_id, text, seconds in utts:
        spk, chapter, _ = utt_id.split("-")
        chapters.setdefault((spk, chapter), []).append((utt_id, text, seconds))
    for (spk, chapter), items in chapters.items():
        d = root / part / spk / chapter
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{spk}-{chapter}.trans.txt").write_text("".join(f"{u} {t}\n" for u, t, _ in items), encoding="utf-8")
        for utt_id, _, seconds in items:
            if seconds is None:
                continue
            t = np.arange(int(seconds * sample_rate)) / sample_rate
            audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(d / f"{utt_id}.flac", audio.astype(np.float32), sample_rate, format="FLAC")


def _fake_mini(base: Path) -> Path:
    root = base / "LibriSpeech"
    _write_part(root, "train-clean-5", TRAIN)
    _write_part(root, "dev-clean-2", DEV)
    (root / "SPEAKERS.TXT").write_text("; ID | SEX | SUBSET | MINUTES | NAME\n19 | F | train-clean-5 | 1 | A\n")
    return base


def _run(*args):
    result = CliRunner().invoke(G.main, [str(a) for a in args])
    return result


def _mini_args(corpus_dir: Path, data: Path, *extra):
    return ["--corpus", "mini_librispeech", "--corpus-dir", corpus_dir, "--out-dir", data / "tts",
            "--text-dir", data / "text", *extra]


def _jsonl(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _cut_sups(path: Path):
    """Supervision by utterance id (cut ids are lhotse's ``<recording id>-<index>``, as in tts_gen's)."""
    cuts = _jsonl(path)
    assert all(len(c["supervisions"]) == 1 and c["id"].startswith(c["supervisions"][0]["id"] + "-") for c in cuts)
    assert all(c["start"] == 0 and c["duration"] == c["supervisions"][0]["duration"] for c in cuts)
    return {c["supervisions"][0]["id"]: c["supervisions"][0] for c in cuts}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("general")
    corpus = _fake_mini(base / "corpus")
    data = base / "data"
    (data / "text").mkdir(parents=True)
    (data / "text" / "medication_names.txt").write_text(MED_NAMES, encoding="utf-8")
    result = _run(*_mini_args(corpus, data))
    assert result.exit_code == 0, result.output
    return corpus, data, result.output


def test_manifests_exist_with_expected_counts(prepared):
    _, data, output = prepared
    for split in ("train", "dev", "test"):
        for kind in ("recordings", "supervisions", "cuts"):
            assert (data / "tts" / f"general_{split}_{kind}.jsonl.gz").is_file()
        assert (data / "text" / f"general_{split}.jsonl").is_file()
    train = _cut_sups(data / "tts" / "general_train_cuts.jsonl.gz")
    assert sorted(train) == TRAIN_KEPT
    dev = _cut_sups(data / "tts" / "general_dev_cuts.jsonl.gz")
    test = _cut_sups(data / "tts" / "general_test_cuts.jsonl.gz")
    assert sorted(set(dev) | set(test)) == DEV_KEPT and not set(dev) & set(test)
    summary = json.loads((data / "tts" / G.SUMMARY_NAME).read_text())
    hours = sum(s for u, _, s in TRAIN if u in TRAIN_KEPT) / 3600
    assert summary["splits"]["train"]["utterances"] == 4
    assert summary["splits"]["train"]["hours"] == pytest.approx(hours, abs=1e-4)
    assert summary["missing_audio"] == 1
    domain = (data / "tts" / G.DOMAIN_NAME).read_text()
    assert domain.startswith("real read speech, mini LibriSpeech (train train-clean-5: 0.00 h, 4 utts; "
                             "dev dev-clean-2 (speaker-disjoint half): 0.00 h, ")
    assert summary["general_domain"] == domain.strip() and f"general domain: {domain.strip()}" in output
    assert "train: 4 utterances" in output


def test_texts_normalized_and_tagged(prepared):
    _, data, _ = prepared
    train = _cut_sups(data / "tts" / "general_train_cuts.jsonl.gz")
    assert train["26-495-0000"]["text"] == "it's mister o'brien's house"
    for cuts in ("general_train_cuts", "general_dev_cuts", "general_test_cuts"):
        for sup in _cut_sups(data / "tts" / f"{cuts}.jsonl.gz").values():
            assert is_normalized(sup["text"]) and sup["text"]
            assert sup["custom"]["domain"] == "general" and sup["custom"]["source"] == "real"
            assert sup["custom"]["corpus"] == "mini_librispeech"
            assert sup["custom"]["orig_text"].upper() == sup["custom"]["orig_text"]
    recs = _jsonl(data / "tts" / "general_train_recordings.jsonl.gz")
    assert {r["sampling_rate"] for r in recs} == {16000}
    assert all(Path(r["sources"][0]["source"]).is_absolute() for r in recs)
    text = _jsonl(data / "text" / "general_train.jsonl")
    assert [r["id"] for r in text] == TRAIN_KEPT
    assert text[0] == {"id": "19-198-0000", "text": "he hoped there would be stew for dinner",
                       "raw": "HE HOPED THERE WOULD BE STEW FOR DINNER", "source": "mini_librispeech"}


def test_drops_are_counted_and_named(prepared):
    _, data, output = prepared
    summary = json.loads((data / "tts" / G.SUMMARY_NAME).read_text())
    assert summary["dropped"]["med_names"] == {"count": 2, "by_part": {"dev-clean-2": 1, "train-clean-5": 1},
                                               "examples": ["19-198-0002", "2412-153948-0001"]}
    assert summary["dropped"]["normalization"] == {"count": 1, "by_part": {"train-clean-5": 1},
                                                   "examples": ["26-495-0001"]}
    assert set(summary["dropped"]) == {"med_names", "normalization"}
    assert summary["med_name_hits"] == {"lipitor": 1, "atorvastatin": 1}
    assert "19-198-0002" in output and "lipitor x1" in output


def test_dev_test_split_is_speaker_disjoint(prepared):
    _, data, _ = prepared
    dev = {s["speaker"] for s in _cut_sups(data / "tts" / "general_dev_cuts.jsonl.gz").values()}
    test = {s["speaker"] for s in _cut_sups(data / "tts" / "general_test_cuts.jsonl.gz").values()}
    assert len(dev) == 2 and len(test) == 2 and not dev & test


def test_rerun_is_a_noop_and_detects_clobbered_text(prepared):
    corpus, data, _ = prepared
    files = sorted((data / "tts").iterdir()) + sorted((data / "text").glob("general_*.jsonl"))
    before = {p: p.stat().st_mtime_ns for p in files}
    result = _run(*_mini_args(corpus, data))
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    assert {p: p.stat().st_mtime_ns for p in files} == before
    # Stage 0 rerun writes fortunes text over general_train.jsonl: the next call must notice.
    text = data / "text" / "general_train.jsonl"
    text.write_text('{"id": "general-train-000001", "text": "a fortune", "raw": "A fortune."}\n')
    result = _run(*_mini_args(corpus, data))
    assert result.exit_code == 0 and "nothing to do" not in result.output
    assert [r["id"] for r in _jsonl(text)] == TRAIN_KEPT


def test_keep_med_names_and_max_train_hours(prepared, tmp_path):
    corpus, _, _ = prepared
    result = _run(*_mini_args(corpus, tmp_path, "--keep-med-names"))
    assert result.exit_code == 0, result.output
    assert "19-198-0002" in _cut_sups(tmp_path / "tts" / "general_train_cuts.jsonl.gz")
    capped = tmp_path / "capped"
    result = _run(*_mini_args(corpus, capped, "--keep-med-names", "--max-train-hours", 1.5 / 3600))
    assert result.exit_code == 0, result.output
    kept = _cut_sups(capped / "tts" / "general_train_cuts.jsonl.gz")
    total = sum(s["duration"] for s in kept.values())
    assert 0 < total <= 1.5 and len(kept) < 5


def test_missing_corpus_dir_gives_one_line_error(tmp_path):
    missing = tmp_path / "nowhere"
    result = _run(*_mini_args(missing, tmp_path / "data"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "trans.txt" in lines[0]
    assert not (tmp_path / "data").exists()


def test_missing_part_names_the_path(prepared, tmp_path):
    corpus, _, _ = prepared
    result = _run("--corpus", "librispeech", "--corpus-dir", corpus / "LibriSpeech", "--out-dir", tmp_path / "tts",
                  "--text-dir", tmp_path / "text", "--keep-med-names")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(corpus / "LibriSpeech" / "train-clean-100") in lines[0]


def test_unknown_part_and_wrong_sampling_rate(tmp_path):
    result = _run("--corpus", "librispeech", "--corpus-dir", tmp_path, "--out-dir", tmp_path / "tts",
                  "--text-dir", tmp_path / "text", "--train-parts", "train-clean-10", "--keep-med-names")
    assert result.exit_code == 1 and "train-clean-10" in result.output and "train-clean-100" in result.output
    root = tmp_path / "LibriSpeech"
    _write_part(root, "train-clean-100", TRAIN[:2])
    _write_part(root, "dev-clean", DEV[:2])
    _write_part(root, "test-clean", DEV[2:3], sample_rate=8000)
    result = _run("--corpus", "librispeech", "--corpus-dir", root, "--out-dir", tmp_path / "tts",
                  "--text-dir", tmp_path / "text", "--keep-med-names")
    assert result.exit_code == 1
    assert "8000 Hz" in result.output and "1462-170138-0000.flac" in result.output
