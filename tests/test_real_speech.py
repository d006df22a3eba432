"""Tests for recipes/medication/local/prepare_real_speech.py on a fake Debian install tree.

The fake tree has the layout of asterisk-core-sounds-en(-wav) and pocketsphinx-testdata, with short
tone bursts as audio (the script never looks at what is said, only at files, rates and transcripts).
"""
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

_SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "local" / "prepare_real_speech.py"
_spec = importlib.util.spec_from_file_location("prepare_real_speech", _SCRIPT)
R = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("prepare_real_speech", R)  # dataclasses look their module up while the class is built
_spec.loader.exec_module(R)

ASTERISK = {  # name -> (transcript, seconds or None: listed without audio)
    "auth-thankyou": ("Thank you.", 0.6),
    "dictate/both_help": ("press * to toggle pause, press # to enter a new dictation filename", 1.2),
    "digits/h-40": ("fourtieth", 0.5),
    "beep": ("[this is a simple beep tone]", 0.3),
    "silence/1": ("(1 second of silence)", 1.0),
    "conf-adminmenu": ("Please press 1 to mute or unmute yourself, or 8 to exit.", 1.5),
    "pls-try-call-later": ("Please try your call later.", None),  # upstream ships no audio for it
    "spy-iax": ("IAX", 0.4),  # acronym: letters or a word? -> dropped
    "spy-h323": ("H.323", 0.5),  # "h point three two three" or "h three twenty three"? -> dropped
}
SPHINX = {
    "librivox": ("transcription", "fileids", [("book-0870", "he was not an ill disposed young man", 1.1),
                                                ("book-0880", "he might even have been made amiable himself", 0.9)]),
    "cards": ("cards.transcription", "cards.fileids", [("001", "ten of clubs", 0.7)]),
}


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_tree(root: Path) -> Path:
    audio = root / R.ASTERISK_AUDIO
    lines = ["; Core Asterisk Sounds in English", ""]
    for name, (text, seconds) in ASTERISK.items():
        lines.append(f"{name}: {text}")
        if seconds is not None:
            (audio / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(audio / f"{name}.wav"), tone(seconds, 8000), 8000, subtype="PCM_16")
    (root / R.ASTERISK_TEXT).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / R.ASTERISK_TEXT, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for part, (transcription, fileids, utts) in SPHINX.items():
        d = root / R.POCKETSPHINX_DATA / part
        d.mkdir(parents=True, exist_ok=True)
        (d / transcription).write_text("".join(f"<s> {t} </s> ({u})\n" for u, t, _ in utts))
        (d / fileids).write_text("".join(f"{u}\n" for u, _, _ in utts))
        for u, _, seconds in utts:
            sf.write(str(d / f"{u}.wav"), tone(seconds, 16000), 16000, subtype="PCM_16")
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "root")


def run_cli(args):
    return CliRunner().invoke(R.main, [str(a) for a in args], catch_exceptions=False)


def test_prepare_writes_valid_16k_manifests_with_real_tags(tree: Path, tmp_path: Path):
    from lhotse import CutSet, RecordingSet, SupervisionSet, validate, validate_recordings_and_supervisions

    out = tmp_path / "real"
    result = run_cli(["--out-dir", out, "--data-root", tree])
    assert result.exit_code == 0, result.output
    cuts = CutSet.from_file(out / "general_real_cuts.jsonl.gz").to_eager()
    recs = RecordingSet.from_file(out / "general_real_recordings.jsonl.gz")
    sups = SupervisionSet.from_file(out / "general_real_supervisions.jsonl.gz")
    validate_recordings_and_supervisions(recs, sups)
    validate(cuts, read_data=True)
    texts = {c.id: c.supervisions[0].text for c in cuts}
    assert texts == {
        "asterisk-auth-thankyou": "thank you",
        "asterisk-dictate-both_help": "press star to toggle pause press pound to enter a new dictation filename",
        "asterisk-digits-h-40": "fortieth",
        "asterisk-conf-adminmenu": "please press one to mute or unmute yourself or eight to exit",
        "pocketsphinx-librivox-book-0870": "he was not an ill disposed young man",
        "pocketsphinx-librivox-book-0880": "he might even have been made amiable himself",
        "pocketsphinx-cards-001": "ten of clubs",
    }
    for cut in cuts:
        sup = cut.supervisions[0]
        assert cut.sampling_rate == 16000 and cut.num_channels == 1
        assert cut.custom["domain"] == "general_real" and cut.custom["source"] == "real"
        assert sup.custom["domain"] == "general_real" and sup.custom["source"] == "real"
        assert sup.speaker and sup.custom["orig_text"]
        assert sf.info(cut.recording.sources[0].source).samplerate == 16000
    # 8 kHz asterisk audio is resampled, not re-timed: 0.6 s stays 0.6 s.
    assert cuts["asterisk-auth-thankyou"].duration == pytest.approx(0.6, abs=0.01)
    summary = json.loads((out / "general_real_summary.json").read_text())
    assert summary["utterances"] == 7 and summary["speakers"] == 3
    assert summary["dropped"]["not_words"]["count"] == 2
    assert sorted(summary["dropped"]["ambiguous_reading"]["examples"]) == ["asterisk-spy-h323", "asterisk-spy-iax"]
    lines = (out / "general_real.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["raw"] == "Thank you."


def test_missing_package_is_one_line_error_naming_it(tmp_path: Path):
    result = run_cli(["--out-dir", tmp_path / "real", "--data-root", tmp_path / "empty", "--sources", "pocketsphinx"])
    assert result.exit_code == 1
    message = result.output.strip()
    assert "\n" not in message and "pocketsphinx-testdata" in message and "apt-get install" in message


def test_optional_missing_package_warns_exits_zero_and_removes_stale_outputs(tree: Path, tmp_path: Path):
    out = tmp_path / "real"
    assert run_cli(["--out-dir", out, "--data-root", tree]).exit_code == 0
    assert (out / "general_real_cuts.jsonl.gz").exists()
    result = run_cli(["--out-dir", out, "--data-root", tmp_path / "empty", "--optional"])
    assert result.exit_code == 0
    assert "WARNING" in result.output and "asterisk-core-sounds-en-wav" in result.output
    assert not (out / "general_real_cuts.jsonl.gz").exists()
    assert not (out / "general_real_summary.json").exists()


def test_asterisk_transcripts_not_matching_audio_is_an_error(tree: Path, tmp_path: Path):
    sf.write(str(tree / R.ASTERISK_AUDIO / "extra-prompt.wav"), tone(0.5, 8000), 8000)
    result = run_cli(["--out-dir", tmp_path / "real", "--data-root", tree, "--sources", "asterisk"])
    assert result.exit_code == 1
    assert "core-sounds-en.txt.gz" in result.output and "extra-prompt" in result.output
    assert result.output.strip().count("\n") == 0


def test_sphinx_transcription_count_mismatch_is_an_error(tree: Path, tmp_path: Path):
    (tree / R.POCKETSPHINX_DATA / "cards" / "002.wav").write_bytes(
        (tree / R.POCKETSPHINX_DATA / "cards" / "001.wav").read_bytes())
    with pytest.raises(R.RealSpeechError, match=r"cards\.transcription: 1 transcripts, 1 ids .* 2 \.wav files"):
        R.read_pocketsphinx(tree, R.DropLog())


def test_bad_transcription_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "transcription"
    path.write_text("<s> fine </s> (a)\nno id here\n")
    with pytest.raises(R.RealSpeechError, match=r"transcription:2: expected"):
        R.parse_sphinx_transcription(path)


def test_manifest_failing_lhotse_validation_is_one_line_error(tree: Path, tmp_path: Path):
    from lhotse import CutSet, SupervisionSet
    from lhotse.utils import fastcopy

    recs, sups, _ = R.build_manifests(R.read_pocketsphinx(tree, R.DropLog()), tmp_path, 30.0, R.DropLog())
    too_long = SupervisionSet.from_segments(fastcopy(s, duration=s.duration + 5.0) for s in sups)
    cuts = CutSet.from_manifests(recordings=recs, supervisions=too_long)
    with pytest.raises(R.RealSpeechError) as err:
        R.validate_manifests(recs, too_long, cuts, tmp_path)
    assert "fail lhotse validation" in str(err.value) and "\n" not in str(err.value)


def bursts(pieces):
    """Tone bursts ("speech") separated by silences: [(seconds, is_speech)] -> 16 kHz samples."""
    return np.concatenate([tone(s, 16000) if speech else np.zeros(int(s * 16000), np.float32)
                           for s, speech in pieces])


def test_sentence_segments_cut_at_pause_midpoints_when_counts_match():
    audio = bursts([(0.1, False), (1.2, True), (0.6, False), (1.0, True), (0.4, False), (1.5, True)])
    segments = R.sentence_segments(audio, "One two three four. Five six seven! Eight nine ten eleven twelve.")
    assert [s[2] for s in segments] == ["One two three four.", "Five six seven!", "Eight nine ten eleven twelve."]
    assert segments[0][0] == 0 and segments[-1][1] == len(audio)
    assert segments[0][1] / 16000 == pytest.approx(0.1 + 1.2 + 0.3, abs=0.03)
    assert segments[1][1] / 16000 == pytest.approx(0.1 + 1.2 + 0.6 + 1.0 + 0.2, abs=0.03)


def test_sentence_segments_refuse_when_pauses_do_not_match_sentences():
    two_pauses = bursts([(1.0, True), (0.6, False), (1.0, True), (0.6, False), (1.0, True)])
    assert R.sentence_segments(two_pauses, "One two three. Four five six.") is None  # 3 stretches, 2 sentences
    assert R.sentence_segments(two_pauses, "One two three four five six seven eight") is None  # one sentence
    # Counts match but the first "sentence" would be one word spoken for 2.6 s: the mapping is wrong.
    assert R.sentence_segments(bursts([(1.0, True), (0.3, False), (1.0, True), (0.6, False), (1.0, True)]),
                               "Hello. Four five six seven eight nine.") is None


def test_long_recording_is_cut_at_sentences_or_dropped(tmp_path: Path):
    root = tmp_path / "root"
    d = root / R.POCKETSPHINX_DATA
    for part, (transcription, fileids, _) in SPHINX.items():
        (d / part).mkdir(parents=True)
    lib = d / "librivox"
    sf.write(str(lib / "a.wav"), bursts([(1.2, True), (0.6, False), (1.0, True)]), 16000)
    sf.write(str(lib / "b.wav"), bursts([(1.2, True), (0.6, False), (1.0, True)]), 16000)
    (lib / "transcription").write_text("<s> one two three four. five six seven. </s> (a)\n"
                                       "<s> one two three four five six seven </s> (b)\n")
    (lib / "fileids").write_text("a\nb\n")
    sf.write(str(d / "cards" / "001.wav"), tone(0.5, 16000), 16000)
    (d / "cards" / "cards.transcription").write_text("<s> ten of clubs </s> (001)\n")
    (d / "cards" / "cards.fileids").write_text("001\n")
    summary = R.prepare(tmp_path / "real", ["pocketsphinx"], root, max_duration=2.0)
    from lhotse import CutSet

    cuts = CutSet.from_file(tmp_path / "real" / "general_real_cuts.jsonl.gz").to_eager()
    assert sorted(cuts.ids) == ["pocketsphinx-cards-001", "pocketsphinx-librivox-a-s1", "pocketsphinx-librivox-a-s2"]
    assert cuts["pocketsphinx-librivox-a-s2"].supervisions[0].text == "five six seven"
    assert summary["dropped"]["longer_than_max_duration_not_cuttable"]["examples"] == ["pocketsphinx-librivox-b"]
    assert summary["dropped"]["cut_at_sentence_boundaries"]["count"] == 1


def test_unknown_source_is_rejected(tmp_path: Path):
    result = CliRunner().invoke(R.main, ["--out-dir", str(tmp_path), "--sources", "asterisk,festival"])
    assert result.exit_code == 2 and "festival" in result.output


def test_max_utterances_samples_consistent_manifests_reproducibly(tree: Path, tmp_path: Path):
    from lhotse import load_manifest

    def sample(out: Path, seed: int):
        R.prepare(out, ["asterisk", "pocketsphinx"], tree, max_utterances=3, seed=seed)
        cuts = load_manifest(out / "general_real_cuts.jsonl.gz")
        sups = load_manifest(out / "general_real_supervisions.jsonl.gz")
        recs = load_manifest(out / "general_real_recordings.jsonl.gz")
        return sorted(cuts.ids), sorted(s.id for s in sups), sorted(r.id for r in recs)

    full = R.prepare(tmp_path / "all", ["asterisk", "pocketsphinx"], tree)
    assert full["utterances"] > 3
    first = sample(tmp_path / "a", seed=0)
    assert len(first[0]) == 3 and first[0] == first[1] == first[2]  # the three manifests agree
    assert sample(tmp_path / "b", seed=0) == first  # same seed, same sample
    others = {tuple(sample(tmp_path / f"s{s}", seed=s)[0]) for s in range(1, 6)}
    assert others - {tuple(first[0])}  # the seed chooses the sample
