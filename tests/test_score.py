"""Tests for synthasr.score: alignment counts on hand-made cases, backend agreement, result files."""
import random

import pytest

from synthasr.score import (
    ErrorStats,
    ScoreError,
    align,
    compute_wer,
    read_kaldi_text,
    write_results,
)


def _counts(pairs):
    s = ErrorStats.from_alignment(pairs)
    return s.ins, s.dels, s.subs


@pytest.mark.parametrize("backend", ["kaldialign", "python"])
def test_hand_made_alignments(backend):
    assert align("a b c".split(), "a x c d".split(), backend) == [("a", "a"), ("b", "x"), ("c", "c"), (None, "d")]
    assert align("a b".split(), [], backend) == [("a", None), ("b", None)]
    assert align([], "a".split(), backend) == [(None, "a")]
    assert _counts(align("a b c d".split(), "a c d e f".split(), backend)) == (2, 1, 0)
    assert _counts(align("the cat sat".split(), "the bat sat down".split(), backend)) == (1, 0, 1)
    # tie broken like Kaldi: deletion + insertion rather than two substitutions
    assert align("x y".split(), "y x".split(), backend) == [("x", None), ("y", "y"), (None, "x")]


def test_eps_like_tokens_are_plain_words():
    assert align(["<eps>", "*"], ["*"], "kaldialign") == [("<eps>", None), ("*", "*")]
    assert align(["<eps>", "*"], ["*"], "python") == [("<eps>", None), ("*", "*")]


def test_backends_agree_on_random_sequences():
    rng = random.Random(0)
    for _ in range(1500):
        ref = [rng.choice("abcd") for _ in range(rng.randint(0, 8))]
        hyp = [rng.choice("abcd") for _ in range(rng.randint(0, 8))]
        py, kd = align(ref, hyp, "python"), align(ref, hyp, "kaldialign")
        assert py == kd, (ref, hyp)


def test_compute_wer_normalizes_and_counts():
    result = compute_wer([
        ("u1", "Take 20mg of Lipitor\u00ae", "take twenty milligram of lipitor today"),
        ("u2", "hello world", "hello"),
        ("u3", "pain killer", "painkiller"),
    ])
    w = result.word
    assert (w.ref_words, w.ins, w.dels, w.subs, w.correct) == (9, 1, 2, 2, 5)
    assert w.wer == pytest.approx(100 * 5 / 9)
    # characters, spaces excluded: u1 1 del ('s') + 5 ins ('today'); u2 5 del ('world'); u3 0 errors
    c = result.char
    assert (c.ref_words, c.ins, c.dels, c.subs) == (29 + 10 + 10, 5, 6, 0)
    assert result.substitutions[("milligrams", "milligram")] == 1
    assert result.insertions["today"] == 1 and result.deletions["world"] == 1
    assert [u.stats.wer for u in result.utts] == pytest.approx([40.0, 50.0, 100.0])


def test_compute_wer_errors():
    with pytest.raises(ScoreError, match="duplicate utterance id 'a'"):
        compute_wer([("a", "x", "x"), ("a", "y", "y")])
    with pytest.raises(ScoreError, match=r"utterance 'b' \(hyp\).*U\+00A7"):
        compute_wer([("b", "x", "\u00a7")])


def test_empty_reference_rate():
    assert ErrorStats().wer == 0.0
    assert ErrorStats(ref_words=0, ins=2).wer == float("inf")


def test_write_results_files(tmp_path):
    result = compute_wer([("u2", "hello world", "hello"), ("u1", "a b c", "a x c d")])
    paths = write_results(tmp_path, "test-med", "greedy", result)
    recogs = paths["recogs"].read_text().splitlines()
    assert paths["recogs"].name == "recogs-test-med-greedy.txt"
    assert recogs[0] == "u1:\tref=['a', 'b', 'c']"
    assert recogs[1] == "u1:\thyp=['a', 'x', 'c', 'd']"
    errs = paths["errs"].read_text()
    assert errs.startswith("%WER = 60.00\nErrors: 1 insertions, 1 deletions, 1 substitutions, over 5 reference words (3 correct)\n")
    assert "u1:\ta (b->x) c (*->d)" in errs
    assert "u2:\thello (world->*)" in errs
    assert "1   b -> x" in errs
    summary = tmp_path / "wer-summary-test-med.txt"
    assert summary.read_text() == "settings\tWER\ngreedy\t60.00\n"
    better = compute_wer([("u1", "a b c", "a b c")])
    write_results(tmp_path, "test-med", "beam_4", better)
    assert summary.read_text() == "settings\tWER\nbeam_4\t0.00\ngreedy\t60.00\n"
    assert not list(tmp_path.glob(".*tmp*"))


def test_read_kaldi_text(tmp_path):
    p = tmp_path / "text"
    p.write_text("u1 hello world\nu2\n\nu3  spaced   out \n", encoding="utf-8")
    assert read_kaldi_text(p) == {"u1": "hello world", "u2": "", "u3": "spaced   out"}
    p.write_text("u1 a\nu1 b\n", encoding="utf-8")
    with pytest.raises(ScoreError, match=r"text:2: duplicate utterance id 'u1'"):
        read_kaldi_text(p)


def test_score_cli(tmp_path):
    from click.testing import CliRunner

    from synthasr.cli import cli

    (tmp_path / "ref").write_text("u1 Take 20mg of Lipitor\nu2 hello world\n", encoding="utf-8")
    (tmp_path / "hyp").write_text("u1 take twenty milligrams of lipitor\n", encoding="utf-8")
    runner = CliRunner()
    missing = runner.invoke(cli, ["score", str(tmp_path / "ref"), str(tmp_path / "hyp")])
    assert missing.exit_code != 0 and "missing" in missing.output and "'u2'" in missing.output
    ok = runner.invoke(cli, ["score", str(tmp_path / "ref"), str(tmp_path / "hyp"), "--missing-as-empty",
                             "--out-dir", str(tmp_path / "out"), "--name", "dev"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("%WER 28.57 [ 2 / 7, 0 ins, 2 del, 0 sub ]")
    assert (tmp_path / "out" / "wer-summary-dev.txt").read_text() == "settings\tWER\nscore\t28.57\n"


def test_normalize_cli(tmp_path):
    from click.testing import CliRunner

    from synthasr.cli import cli

    src = tmp_path / "in.txt"
    src.write_text("u1 Take 2 tabs!\nu2 bad \u00a7\nu3 OK\n", encoding="utf-8")
    runner = CliRunner()
    bad = runner.invoke(cli, ["normalize", "--kaldi", str(src), str(tmp_path / "out.txt")])
    assert bad.exit_code != 0 and "in.txt:2:" in bad.output and "U+00A7" in bad.output
    assert not (tmp_path / "out.txt").exists()
    ok = runner.invoke(cli, ["normalize", "--kaldi", "--skip-errors", str(src), str(tmp_path / "out.txt")])
    assert ok.exit_code == 0
    assert (tmp_path / "out.txt").read_text() == "u1 take two tablets\nu3 ok\n"
