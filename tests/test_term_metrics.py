"""Term (medication-name) recall/precision on hand-made alignments, term lists, result files, CLI."""
from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from synthasr.score import (
    ScoreError,
    TermList,
    align,
    compute_wer,
    format_terms,
    read_recogs,
    score_terms,
    write_results,
)

TERMS = TermList.from_terms([
    ("metformin", "seen"), ("warfarin", "seen"), ("metoprolol", "seen"), ("insulin", "seen"),
    ("insulin glargine", "unseen"), ("zoloft", "unseen"),
])


def _score(ref: str, hyp: str, terms: TermList = TERMS, backend: str = "auto"):
    r, h = ref.split(), hyp.split()
    return score_terms("u", r, h, align(r, h, backend), terms)


def _totals(stats):
    t = stats.total
    return t.ref, t.hyp, t.hits


def test_correct_names_are_hits():
    stats = _score("please refill my metformin and warfarin", "please refill my metformin and warfarin")
    assert _totals(stats) == (2, 2, 2)
    assert stats.total.recall == 100.0 and stats.total.precision == 100.0
    assert stats.events == [] and stats.worst() == []


def test_substitution_by_another_name_is_a_miss_and_a_false_alarm():
    stats = _score("please refill my metformin prescription", "please refill my metoprolol prescription")
    assert _totals(stats) == (1, 1, 0)
    assert stats.total.recall == 0.0 and stats.total.precision == 0.0
    assert stats.recognised_as["metformin"] == {"metoprolol": 1}
    assert stats.false_alarm_for["metoprolol"] == {"metformin": 1}
    assert [(e.kind, e.term, e.ref, e.hyp) for e in stats.events] == [
        ("miss", "metformin", "metformin", "metoprolol"), ("false_alarm", "metoprolol", "metformin", "metoprolol")]


def test_substitution_by_a_non_name_lowers_recall_only():
    stats = _score("please refill my metformin prescription", "please refill my met prescription")
    assert _totals(stats) == (1, 0, 0)
    assert stats.total.recall == 0.0 and stats.total.precision is None  # no hypothesis mention at all
    assert stats.recognised_as["metformin"] == {"met": 1}


def test_deleted_name_is_a_miss_recognised_as_nothing():
    stats = _score("take warfarin daily", "take daily")
    assert _totals(stats) == (1, 0, 0)
    assert stats.recognised_as["warfarin"] == {"": 1}
    assert "warfarin   seen 1 0 1 0   (deleted) (1) | -" in format_terms(stats)


def test_inserted_names_are_false_alarms_that_lower_precision_only():
    """What hotword biasing does wrong: the name appears where nobody said it."""
    stats = _score("take it with food", "take it with zoloft food")
    assert _totals(stats) == (0, 1, 0)
    assert stats.total.recall is None and stats.total.precision == 0.0
    assert stats.false_alarm_for["zoloft"] == {"": 1}
    doubled = _score("take warfarin daily", "take warfarin warfarin daily")
    assert _totals(doubled) == (1, 2, 1)
    assert doubled.total.recall == 100.0 and doubled.total.precision == 50.0


def test_name_split_into_several_words_shows_what_was_heard():
    """Adjacent insertions belong to the miss: 'metformin' heard as 'met for men'."""
    stats = _score("take metformin daily", "take met for men daily")
    assert _totals(stats) == (1, 0, 0)
    assert stats.recognised_as["metformin"] == {"met for men": 1}


def test_multi_word_name_needs_every_word():
    assert _totals(_score("start insulin glargine tonight", "start insulin glargine tonight")) == (1, 1, 1)
    one_wrong = _score("start insulin glargine tonight", "start insulin glulisine tonight")
    assert _totals(one_wrong) == (1, 1, 0)  # the hypothesis says "insulin": a different (shorter) name
    assert one_wrong.recognised_as["insulin glargine"] == {"insulin glulisine": 1}
    assert one_wrong.false_alarm_for["insulin"] == {"insulin glargine": 1}
    split = _score("start insulin glargine tonight", "start insulin the glargine tonight")
    assert split.total.hits == 0  # a word inserted inside the name breaks it
    assert split.recognised_as["insulin glargine"] == {"insulin the glargine": 1}


def test_longest_name_wins_on_both_sides():
    stats = _score("insulin glargine and insulin", "insulin glargine and insulin")
    assert _totals(stats) == (2, 2, 2)
    assert stats.per_term["insulin glargine"].ref == 1 and stats.per_term["insulin"].ref == 1
    shorter = _score("insulin glargine", "insulin")
    assert _totals(shorter) == (1, 1, 0)
    # "insulin" is right word for word, but the hypothesis names a different (longer) product there
    longer = _score("insulin lispro", "insulin glargine")
    assert _totals(longer) == (1, 1, 0)
    assert longer.recognised_as["insulin"] == {"insulin glargine": 1}  # the name said there is shown whole
    assert longer.false_alarm_for["insulin glargine"] == {"insulin lispro": 1}


def test_names_at_first_and_last_word():
    assert _totals(_score("metformin twice daily with warfarin", "metformin twice daily with warfarin")) == (2, 2, 2)
    stats = _score("metformin twice daily with warfarin", "met formin twice daily with war far in")
    assert _totals(stats) == (2, 0, 0)
    assert stats.recognised_as["metformin"] == {"met formin": 1}
    assert stats.recognised_as["warfarin"] == {"war far in": 1}
    gone = _score("metformin twice daily with warfarin", "twice daily with")
    assert gone.recognised_as == {"metformin": {"": 1}, "warfarin": {"": 1}}
    only = _score("zoloft", "zoloft")
    assert _totals(only) == (1, 1, 1)


def test_seen_unseen_split_and_aggregation():
    result = compute_wer([
        ("a", "take metformin and zoloft", "take metformin and zoloft"),
        ("b", "take warfarin daily", "take warfarin daily"),
        ("c", "is zoloft safe with warfarin", "is soloft safe with warfarin"),
        ("d", "start insulin glargine", "start insulin"),
    ], terms=TERMS)
    terms = result.terms
    assert _totals(terms) == (6, 5, 4)
    assert terms.groups["seen"].ref == 3 and terms.groups["seen"].hits == 3
    assert terms.groups["unseen"].ref == 3 and terms.groups["unseen"].hits == 1  # zoloft, zoloft, insulin glargine
    assert terms.groups["unseen"].recall == pytest.approx(100 / 3) and terms.groups["seen"].recall == 100.0
    assert terms.groups["seen"].false_alarms == 1  # "insulin" in utterance d
    assert terms.total.precision == 80.0
    worst = terms.worst()  # one error each: most reference mentions first
    assert [row["term"] for row in worst] == ["zoloft", "insulin glargine", "insulin"]
    assert worst[0]["recognised_as"] == [["soloft", 1]] and worst[0]["group"] == "unseen"
    assert worst[2]["false_alarm_for"] == [["insulin glargine", 1]] and worst[2]["recall"] is None
    summed = _score("take metformin and zoloft", "take metformin and zoloft")
    for utt in ("take warfarin daily", "is zoloft safe with warfarin"):
        summed.add(_score(utt, utt))
    assert _totals(summed) == (5, 5, 5)


def test_groups_without_mentions_are_reported_empty():
    result = compute_wer([("a", "take metformin", "take metformin")], terms=TERMS)
    assert result.terms.groups["unseen"].ref == 0 and result.terms.groups["unseen"].recall is None
    assert compute_wer([("a", "x", "x")]).terms is None  # no term list: no term metrics


def test_names_split_into_bpe_pieces_are_scored_after_detokenisation(tmp_path):
    """A name the tokenizer splits into pieces counts once; one wrong piece makes it a miss."""
    from synthasr.tokenizer import Tokenizer, train_bpe

    corpus = [f"please refill my {w} prescription today" for w in ("lipitor", "aspirin", "tylenol", "advil")] * 20
    tok = Tokenizer.load(train_bpe(corpus, tmp_path / "lang", vocab_size=60, hard_vocab_limit=False))
    text = "please refill my metformin prescription"
    ids = tok.encode([text])[0]
    pieces = [tok.id_to_piece(i) for i in ids]
    word_of, word = [], -1
    for piece in pieces:
        word += piece.startswith("▁")
        word_of.append(word)
    name_pieces = [k for k, w in enumerate(word_of) if w == 3]
    assert len(name_pieces) >= 3, pieces  # the name the tokenizer never saw is spelt out in pieces
    refs = [("all_pieces_right", text, tok.decode([ids])[0])]
    k = name_pieces[len(name_pieces) // 2]
    other = next(i for i in range(3, tok.vocab_size)
                 if len(tok.id_to_piece(i)) == 1 and tok.id_to_piece(i) not in ("▁", pieces[k]))
    wrong_piece = list(ids)
    wrong_piece[k] = other
    refs.append(("one_piece_wrong", text, tok.decode([wrong_piece])[0]))
    result = compute_wer(refs, terms=TermList.from_terms(["metformin"]))
    assert result.terms.per_term["metformin"].ref == 2 and result.terms.per_term["metformin"].hits == 1
    heard = tok.decode([wrong_piece])[0].split()[3]
    assert heard != "metformin" and result.terms.recognised_as["metformin"] == {heard: 1}
    assert [u.stats.subs for u in result.utts] == [0, 1]  # one word wrong, whatever the piece count


@pytest.mark.parametrize("seed", range(3))
def test_backends_agree_and_perfect_hypotheses_score_100(seed):
    rng = random.Random(seed)
    vocab = ["take", "insulin", "glargine", "metformin", "zoloft", "daily", "met"]
    for _ in range(200):
        ref = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 7)))
        hyp = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 7)))
        a, b = _score(ref, hyp, backend="kaldialign"), _score(ref, hyp, backend="python")
        assert _totals(a) == _totals(b)
        t = a.total
        assert 0 <= t.hits <= min(t.ref, t.hyp)
        same = _score(ref, ref)
        assert same.total.hits == same.total.ref == same.total.hyp


# ---------------------------------------------------------------------------------------------
# Term lists
# ---------------------------------------------------------------------------------------------
def test_term_list_from_names_used_file(tmp_path):
    path = tmp_path / "names_used.txt"
    path.write_text("# name kind role\nMetformin\tgeneric\tseen\nCo-Trimoxazole\tgeneric\tunseen\n\n"
                    "Zoloft\tbrand\tseen\n", encoding="utf-8")
    terms = TermList.from_file(path, group_column=3)
    assert terms.groups == {("metformin",): "seen", ("co", "trimoxazole"): "unseen", ("zoloft",): "seen"}
    assert terms.group_names == ["seen", "unseen"] and terms.max_words == 2
    plain = TermList.from_file(path)
    assert set(plain.groups.values()) == {""} and len(plain.groups) == 3


@pytest.mark.parametrize("content,column,message", [
    ("metformin\tgeneric\n", 3, r"names\.txt:1: no group in tab-separated column 3"),
    ("metformin\tx\tseen\nMETFORMIN\tx\tunseen\n", 3, r"names\.txt:2: term 'metformin' listed in groups 'seen' and 'unseen'"),
    ("ok\nαβγ\n", None, r"names\.txt:2: .*"),
    ("ok\n...\n", None, r"names\.txt:2: term '...' is empty after normalization"),
    ("# only a comment\n", None, r"names\.txt: the term list is empty"),
    ("x\n", 1, r"group column must be 2 or more"),
])
def test_bad_term_lists_name_the_file_and_line(tmp_path, content, column, message):
    path = tmp_path / "names.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ScoreError, match=message):
        TermList.from_file(path, group_column=column)
    with pytest.raises(ScoreError, match="cannot read term list"):
        TermList.from_file(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------
# Result files, evaluation, CLI
# ---------------------------------------------------------------------------------------------
PAIRS = [("u1", "take metformin daily", "take met for men daily"),
         ("u2", "take warfarin", "take warfarin"),
         ("u3", "call the doctor", "call the zoloft doctor")]


def test_write_results_adds_terms_file_and_json(tmp_path):
    result = compute_wer(PAIRS, terms=TERMS)
    paths = write_results(tmp_path, "med", "greedy", result)
    text = paths["terms"].read_text()
    assert paths["terms"].name == "terms-med-greedy.txt"
    assert text.startswith("%RECALL = 50.00 (1 of 2 reference term mentions recognised)\n"
                           "%PRECISION = 50.00 (1 false alarms in 2 hypothesis mentions)\n")
    assert "u1:\tmiss\tmetformin\tmetformin -> met for men" in text
    assert "u3:\tfalse_alarm\tzoloft\t* -> zoloft" in text
    data = json.loads(paths["json"].read_text())
    assert data["terms"]["recall"] == 50.0 and data["terms"]["groups"]["unseen"]["false_alarms"] == 1
    assert data["terms"]["worst"][0]["term"] == "metformin"
    plain = write_results(tmp_path, "gen", "greedy", compute_wer(PAIRS))
    assert "terms" not in plain and "terms" not in json.loads(plain["json"].read_text())


def test_recogs_round_trip_and_bad_lines(tmp_path):
    result = compute_wer(PAIRS + [("u4", "it's fine", "")])
    path = write_results(tmp_path, "med", "greedy", result)["recogs"]
    back = read_recogs(path)
    assert back["u1"] == (["take", "metformin", "daily"], ["take", "met", "for", "men", "daily"])
    assert back["u4"] == (["it's", "fine"], [])
    path.write_text("u1:\tref=['a']\nu1:\thyp=oops\n")
    with pytest.raises(ScoreError, match=r"recogs-med-greedy\.txt:2: expected"):
        read_recogs(path)
    path.write_text("u1:\tref=['a']\n")
    with pytest.raises(ScoreError, match="'u1' has a reference but no hypothesis"):
        read_recogs(path)


def _fake_decode(monkeypatch):
    import synthasr.decode.evaluation as evaluation

    monkeypatch.setattr(evaluation, "encode_cuts", lambda *args, **kwargs: [])
    monkeypatch.setattr(evaluation, "search_encoded", lambda *args, **kwargs: list(PAIRS))


def test_evaluate_scores_terms_and_summarises_for_eval_json(tmp_path, monkeypatch):
    from synthasr.decode.evaluation import eval_summary, evaluate

    _fake_decode(monkeypatch)
    wer = evaluate(None, None, None, tmp_path / "stage" / "decode", "med", terms=TERMS)
    assert (tmp_path / "stage" / "decode" / "terms-med-greedy_search.txt").is_file()
    summary = eval_summary(wer, relative_to=tmp_path / "stage")
    assert summary["recogs"] == "decode/recogs-med-greedy_search.txt"
    assert summary["terms"]["recall"] == 50.0 and summary["terms"]["precision"] == 50.0
    assert summary["num_utts"] == 3 and summary["wer"] == 50.0  # met+for+men for metformin, zoloft inserted
    json.dumps(summary, allow_nan=False)


def test_cli_evaluate_with_terms(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from click.testing import CliRunner
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    import synthasr.cli.decode as cli_decode
    from synthasr.cli import cli

    _fake_decode(monkeypatch)
    monkeypatch.setattr(cli_decode, "_load_bundle", lambda *a: SimpleNamespace(model=None, tokenizer=None,
                                                                               feature_config=None))
    CutSet.from_cuts([dummy_cut(0)]).to_file(tmp_path / "cuts.jsonl.gz")
    names = tmp_path / "names_used.txt"
    names.write_text("metformin\tgeneric\tseen\nwarfarin\tgeneric\tseen\nzoloft\tbrand\tunseen\n")
    args = ["evaluate", "--model", "unused.pt", "--cuts", str(tmp_path / "cuts.jsonl.gz"),
            "--out-dir", str(tmp_path / "res"), "--name", "med"]
    out = CliRunner().invoke(cli, args + ["--terms", str(names), "--terms-group-column", "3"])
    assert out.exit_code == 0, out.output
    assert "med\tterm recall 50.00% (1/2), precision 50.00% (1 false alarms)" in out.output
    data = json.loads((tmp_path / "res" / "wer-med-greedy_search.json").read_text())
    assert data["terms"]["groups"]["unseen"] == {"ref": 0, "hyp": 1, "hits": 0, "misses": 0, "false_alarms": 1,
                                                 "recall": None, "precision": 0.0}
    bad = CliRunner().invoke(cli, args + ["--terms", str(names), "--terms-group-column", "4"])
    assert bad.exit_code != 0 and "names_used.txt:1: no group in tab-separated column 4" in bad.output
    lone = CliRunner().invoke(cli, args + ["--terms-group-column", "3"])
    assert lone.exit_code != 0 and "--terms-group-column needs --terms" in lone.output


def test_evaluate_cli_checks_every_set_before_loading_the_model(tmp_path, monkeypatch):
    """A later set without the --breakdown tag, or an unreadable one, fails before anything is decoded."""
    from click.testing import CliRunner
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    import synthasr.cli.decode as cli_decode
    from synthasr.cli import cli

    _fake_decode(monkeypatch)
    loads = []
    monkeypatch.setattr(cli_decode, "_load_bundle", lambda *a: loads.append(a) or SimpleNamespace(
        model=None, tokenizer=None, feature_config=None))
    tagged = dummy_cut(0).with_custom("engine", "piper")
    import synthasr.decode.evaluation as evaluation

    monkeypatch.setattr(evaluation, "search_encoded", lambda *a, **k: [(tagged.id, "take warfarin", "take warfarin")])
    CutSet.from_cuts([tagged]).to_file(tmp_path / "tts.jsonl.gz")
    CutSet.from_cuts([dummy_cut(1)]).to_file(tmp_path / "real.jsonl.gz")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not a manifest")
    args = ["evaluate", "--model", "unused.pt", "--out-dir", str(tmp_path / "res"), "--breakdown", "engine",
            "--cuts", str(tmp_path / "tts.jsonl.gz"), "--name", "med"]
    for later, message in ((str(tmp_path / "real.jsonl.gz"), "real (" + str(tmp_path / "real.jsonl.gz") +
                            "): cannot break results down by 'engine'"),
                           (str(tmp_path / "broken.jsonl.gz"), "broken.jsonl.gz: cannot read cuts")):
        out = CliRunner().invoke(cli, args + ["--cuts", later, "--name", "real"])
        assert out.exit_code != 0 and message in out.output, out.output
        assert len(out.output.strip().splitlines()) == 1
    assert not loads and not (tmp_path / "res").exists()  # no model loaded, no set decoded
    ok = CliRunner().invoke(cli, args)
    assert ok.exit_code == 0, ok.output
    assert len(loads) == 1 and "med\t[engine=piper]" in ok.output


def test_schedule_base_terms_are_loaded_and_checked_before_training(tmp_path):
    import yaml
    from lhotse import CutSet
    from lhotse.testing.dummies import dummy_cut

    from synthasr.tokenizer import train_bpe
    from synthasr.train.schedule import ScheduleError, validate_schedule

    bpe = train_bpe(["take metformin daily", "call the doctor"] * 5, tmp_path / "lang", vocab_size=30,
                    hard_vocab_limit=False)
    cuts = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts([dummy_cut(0)]).to_file(cuts)
    names = tmp_path / "names_used.txt"
    names.write_text("metformin\tgeneric\tseen\nzoloft\tbrand\tunseen\n")
    schedule = {"base": {"bpe_model": str(bpe), "sources": {"general": [str(cuts)]},
                         "eval_sets": {"test": str(cuts)}, "terms": {"file": str(names), "group_column": 3},
                         "train": {"model": {"preset": "tiny"}}},
                "stages": [{"name": "general", "init": "scratch", "data": {"general": 1.0}}]}
    path = tmp_path / "sched.yaml"
    path.write_text(yaml.safe_dump(schedule))
    plan = validate_schedule(path, exp_dir=tmp_path / "exp")
    assert plan.terms.groups == {("metformin",): "seen", ("zoloft",): "unseen"}
    schedule["base"]["terms"]["group_column"] = 5
    path.write_text(yaml.safe_dump(schedule))
    with pytest.raises(ScheduleError, match=r"sched\.yaml: base\.terms: .*names_used\.txt:1: no group in tab-separated column 5"):
        validate_schedule(path, exp_dir=tmp_path / "exp")
    del schedule["base"]["terms"]
    path.write_text(yaml.safe_dump(schedule))
    assert validate_schedule(path, exp_dir=tmp_path / "exp").terms is None
