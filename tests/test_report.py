"""Forgetting report: hand-made WERs -> asserted relative changes, BWT, files, CLI, ablation table."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from synthasr.report import (
    ReportError,
    ablation_table,
    build_report,
    collect_stage_evals,
    render_markdown,
    write_report,
)


def _eval(stage, index, gen_dev, gen_test, med_test, names=None):
    res = {
        "general_dev": {"wer": gen_dev, "cer": gen_dev / 2, "domain": "general"},
        "general_test": {"wer": gen_test, "cer": gen_test / 2, "domain": "general"},
        "medication_test": {"wer": med_test, "cer": med_test / 2, "domain": "medication"},
    }
    if names is not None:
        res["unseen_names"] = {"wer": names, "cer": names / 2, "domain": "medication"}
    return {"stage": stage, "index": index, "checkpoint": f"/x/{stage}/final.pt", "results": res}


EVALS = [
    _eval("baseline", 0, 10.0, 12.0, 60.0, names=80.0),
    _eval("adapt", 1, 11.0, 14.0, 20.0, names=40.0),
    _eval("consolidate", 2, 10.0, 11.0, 18.0, names=36.0),
]


def _write_evals(exp_dir, evals):
    for e in evals:
        d = exp_dir / e["stage"]
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps(e))


def test_relative_changes_and_backward_transfer():
    rep = build_report(EVALS)
    assert rep["baseline"] == "baseline"
    assert rep["eval_sets"] == {
        "general_dev": "general", "general_test": "general", "medication_test": "medication", "unseen_names": "medication",
    }
    assert rep["relative_wer"]["adapt"]["medication_test"] == pytest.approx(-66.6667, abs=1e-3)
    assert rep["relative_wer"]["adapt"]["general_test"] == pytest.approx(100 * 2 / 12)
    assert rep["relative_wer"]["baseline"]["general_dev"] == 0.0
    assert rep["backward_transfer"]["adapt"] == pytest.approx(1.5)  # mean(+1, +2)
    assert rep["backward_transfer"]["consolidate"] == pytest.approx(-0.5)  # mean(0, -1)
    assert rep["backward_transfer_relative"]["adapt"] == pytest.approx((10.0 + 100 * 2 / 12) / 2)
    assert rep["domain_wer"]["adapt"] == {"general": 12.5, "medication": 30.0}
    assert rep["cer"]["consolidate"]["general_test"] == 5.5


def test_named_baseline_and_missing_sets():
    evals = EVALS[:2] + [_eval("late", 2, 9.0, 12.0, 30.0)]  # no unseen_names for "late"
    rep = build_report(evals, baseline="adapt")
    assert rep["relative_wer"]["baseline"]["medication_test"] == pytest.approx(200.0)
    assert rep["wer"]["late"]["unseen_names"] is None
    assert rep["relative_wer"]["late"]["unseen_names"] is None
    assert rep["backward_transfer"]["late"] == pytest.approx(-2.0)  # mean(9-11, 12-14)
    assert "| late | 9.00 | 12.00 | 30.00 | – |" in render_markdown(rep)
    with pytest.raises(ReportError, match="baseline stage 'nope'"):
        build_report(evals, baseline="nope")


def test_write_report_files(tmp_path):
    _write_evals(tmp_path, list(reversed(EVALS)))
    assert [e["stage"] for e in collect_stage_evals(tmp_path)] == ["baseline", "adapt", "consolidate"]
    rep = write_report(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(rep))
    md = (tmp_path / "report.md").read_text()
    assert "| adapt | +10.0 | +16.7 | -66.7 | -50.0 |" in md
    assert "| adapt | +1.50 | +13.3 |" in md
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    events = list((tmp_path / "tensorboard-report").glob("events.out.tfevents.*"))
    assert len(events) == 1
    write_report(tmp_path)  # regenerating replaces, never accumulates
    assert len(list((tmp_path / "tensorboard-report").glob("events.out.tfevents.*"))) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_tensorboard_scalars_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write_evals(tmp_path, EVALS)
    write_report(tmp_path, plot=False)
    acc = EventAccumulator(str(tmp_path / "tensorboard-report"))
    acc.Reload()
    assert [round(e.value, 3) for e in acc.Scalars("wer/medication_test")] == [60.0, 20.0, 18.0]
    assert [round(e.value, 3) for e in acc.Scalars("backward_transfer")] == [0.0, 1.5, -0.5]


def test_no_evals_is_an_error(tmp_path):
    with pytest.raises(ReportError, match="no \\*/eval.json"):
        collect_stage_evals(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "eval.json").write_text("{broken")
    with pytest.raises(ReportError, match="unreadable"):
        collect_stage_evals(tmp_path)


def test_ablation_table_values():
    a = build_report([_eval("base", 0, 10.0, 12.0, 60.0)])
    f = build_report([_eval("base", 0, 10.0, 12.0, 60.0), _eval("full", 1, 10.0, 11.0, 18.0)])
    e = build_report([_eval("base", 0, 10.0, 12.0, 60.0), _eval("ft", 1, 14.0, 16.0, 15.0)])
    table = ablation_table({"(a) baseline": a, "(e) fine-tune": e, "(f) full": f})
    lines = table.strip().splitlines()
    assert lines[0] == "| system | general_dev | general_test | medication_test | WERR medication (%) | Δ general WER |"
    assert lines[2] == "| (a) baseline | 10.00 | 12.00 | 60.00 | 0.0 | +0.00 |"
    assert lines[3] == "| (e) fine-tune | 14.00 | 16.00 | 15.00 | 75.0 | +4.00 |"
    assert lines[4] == "| (f) full | 10.00 | 11.00 | 18.00 | 70.0 | -0.50 |"
    with pytest.raises(ReportError, match="reference"):
        ablation_table({"x": a}, reference="y")


def test_cli_regenerates_and_renders_ablations(tmp_path):
    from synthasr.cli import cli

    exp = tmp_path / "exp"
    _write_evals(exp, EVALS)
    runner = CliRunner()
    out = runner.invoke(cli, ["report", "--exp-dir", str(exp), "--no-tensorboard", "--baseline", "adapt"])
    assert out.exit_code == 0, out.output
    assert json.loads((exp / "report.json").read_text())["baseline"] == "adapt"
    out = runner.invoke(cli, ["report", "--ablation", f"(a)={exp}", "--ablation", f"(b)={exp}"])
    assert out.exit_code == 0, out.output
    assert "| (b) | 10.00 | 11.00 | 18.00 | 36.00 |" in out.output
    bad = runner.invoke(cli, ["report", "--exp-dir", str(tmp_path / "empty")])
    assert bad.exit_code != 0 and "no */eval.json" in bad.output


# --------------------------------------------------------------------------------------------- #
# Name (term) metrics in the report
# --------------------------------------------------------------------------------------------- #
def _terms(ref, hyp, hits, seen, unseen, worst=()):
    """A stage eval's ``terms`` entry as synthasr.score.TermStats.to_dict writes it."""
    def counts(r, h, k):
        return {"ref": r, "hyp": h, "hits": k, "misses": r - k, "false_alarms": h - k,
                "recall": 100.0 * k / r if r else None, "precision": 100.0 * k / h if h else None}
    return {**counts(ref, hyp, hits), "groups": {"seen": counts(*seen), "unseen": counts(*unseen)},
            "worst": list(worst)}


def _with_terms():
    evals = json.loads(json.dumps(EVALS))
    worst_row = {"term": "metformin", "group": "seen", "ref": 10, "hyp": 9, "hits": 6, "misses": 4, "false_alarms": 3,
                 "recall": 60.0, "precision": 66.7, "recognised_as": [["met for men", 3], ["", 1]],
                 "false_alarm_for": [["", 2], ["metoprolol", 1]]}
    evals[0]["results"]["medication_test"]["terms"] = _terms(40, 20, 10, (30, 15, 10), (10, 5, 0))
    evals[1]["results"]["medication_test"]["terms"] = _terms(40, 40, 30, (30, 30, 25), (10, 10, 5))
    evals[2]["results"]["medication_test"]["terms"] = _terms(40, 38, 32, (30, 28, 26), (10, 10, 6), [worst_row])
    evals[2]["results"]["general_test"]["terms"] = _terms(0, 0, 0, (0, 0, 0), (0, 0, 0))  # no names: no columns
    return evals


def test_report_shows_name_recall_precision_groups_and_worst_names():
    rep = build_report(_with_terms())
    assert rep["final_stage"] == "consolidate"
    assert rep["terms"]["adapt"]["medication_test"]["recall"] == 75.0
    assert rep["terms"]["adapt"]["unseen_names"] is None
    md = render_markdown(rep)
    assert "| stage | medication_test recall | medication_test precision |" in md
    assert "| baseline | 25.00 | 50.00 |" in md and "| consolidate | 80.00 | 84.21 |" in md
    assert "| stage | medication_test: seen | medication_test: unseen |" in md
    assert "| baseline | 33.33 | 0.00 |" in md and "| adapt | 83.33 | 50.00 |" in md
    assert "## Worst names at `consolidate` (up to 10 per set)" in md
    assert "| metformin | seen | 10 | 6 | 4 | 3 | met for men ×3, (deleted) | (nothing) ×2, metoprolol |" in md
    at_adapt = render_markdown(build_report(_with_terms(), final_stage="adapt"))
    assert "## Worst names at `adapt`" in at_adapt and "No name errors." in at_adapt
    with pytest.raises(ReportError, match="final stage 'nope'"):
        build_report(_with_terms(), final_stage="nope")
    assert "Name recall" not in render_markdown(build_report(EVALS))  # no term list, no name tables


def test_cli_writes_html_and_final_stage(tmp_path):
    from synthasr.cli import cli

    exp = tmp_path / "exp"
    _write_evals(exp, _with_terms())
    out = CliRunner().invoke(cli, ["report", "--exp-dir", str(exp), "--no-tensorboard", "--final-stage", "adapt",
                                   "--html-audio", "none"])
    assert out.exit_code == 0, out.output
    assert "report.html" in out.output and json.loads((exp / "report.json").read_text())["final_stage"] == "adapt"
    page = (exp / "report.html").read_text()
    assert "Worst names at <code>adapt</code>" in page and "<table" in page
    assert "No per-utterance results recorded" in page  # these evals predate recogs/cuts entries
    out = CliRunner().invoke(cli, ["report", "--exp-dir", str(exp), "--no-tensorboard", "--final-stage", "x"])
    assert out.exit_code != 0 and "final stage 'x' has no results" in out.output


def _write_results_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "local" / "write_results.py"
    spec = importlib.util.spec_from_file_location("medication_write_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_shows_names_next_to_wer(tmp_path):
    from synthasr.score import TermList, compute_wer, write_results

    exp, data = tmp_path / "exp", tmp_path / "data"
    data.mkdir()
    _write_evals(exp, _with_terms())
    write_report(exp, plot=False, tensorboard=False, html_page=False)
    terms = TermList.from_terms([("metformin", "seen"), ("zoloft", "unseen")])
    for stage, hyp in (("baseline", "take met for men"), ("adapt", "take metformin")):
        for settings, extra in (("beam", ""), ("beam-hotwords", " zoloft")):
            write_results(exp / stage / "decode_biasing", "medication_test", settings,
                          compute_wer([("u", "take metformin", hyp + extra)], terms=terms))
    cfg = {"results": {"final_stage": "adapt"}}
    text = _write_results_module().render(cfg, "conf/test.yaml", exp, data)
    assert ("| medication_test | medication | 60.00 | 20.00 | -66.7 % | 25.0 → 75.0 | 50.0 → 75.0 |") in text
    assert "| general_test | general | 12.00 | 14.00 | +16.7 % | – | – |" in text  # not scored by these stages
    assert "## Medication names (`baseline` → `adapt`)" in text
    assert "| medication_test | unseen | 10 | 0.0 → 50.0 | 0.0 → 50.0 |" in text
    assert "Worst names in medication_test at `adapt`" in text and "No name errors." in text
    assert "| beam | `adapt` | 100.0 / 100.0 (0 false alarms) |" in text
    assert "| beam-hotwords | `baseline` | 0.0 / 0.0 (1 false alarms) |" in text
    cfg["results"]["final_stage"] = "consolidate"
    worst = _write_results_module().render(cfg, "conf/test.yaml", exp, data)
    assert "| general_test | general | 12.00 | 11.00 | -8.3 % | no names | – → 0 false alarms |" in worst
    assert "| metformin | seen | 10 | 6 | 4 | 3 | met for men ×3, (deleted) | (nothing) ×2, metoprolol |" in worst


def test_results_page_splits_held_out_voices_by_engine(tmp_path):
    """The cross-engine table reads the eval sets' ``breakdown`` from each stage's eval.json."""
    from synthasr.decode.evaluation import eval_summary
    from synthasr.score import TermList, add_breakdown, compute_wer, write_results

    terms = TermList.from_terms([("metformin", "seen"), ("zoloft", "unseen")])
    group_of = {"e1": "espeak", "e2": "espeak", "p1": "piper"}
    hyps = {"baseline": ("take met for men", "zoloft now", "take metformin"),
            "loeo": ("take metformin", "zoloft now", "take met formin")}
    refs = ("take metformin", "zoloft now", "take metformin")
    exp = tmp_path / "exp"
    for index, (stage, hyp) in enumerate(hyps.items()):
        pairs = list(zip(("e1", "e2", "p1"), refs, hyp))
        wer = add_breakdown(compute_wer(pairs, terms=terms), pairs, group_of, "engine", terms=terms)
        (exp / stage).mkdir(parents=True)
        (exp / stage / "eval.json").write_text(json.dumps(
            {"stage": stage, "index": index, "results": {"med_test": {"domain": "medication", **eval_summary(wer)}}}))
    # stage 9's shipped decoding of the LOEO stage (evaluate --breakdown engine): its own rows
    shipped = [("e1", refs[0], "take metformin"), ("e2", refs[1], "zoloft now"), ("p1", refs[2], "take metformin")]
    wer = add_breakdown(compute_wer(shipped, terms=terms), shipped, group_of, "engine", terms=terms)
    write_results(exp / "loeo" / "decode_biasing", "med_test", "beam-lm-hotwords", wer)
    lines = _write_results_module().cross_engine_section(exp, ["baseline", "loeo", "missing"], {"loeo": "(g) LOEO"},
                                                         ["loeo"], "beam-lm-hotwords")
    text = "\n".join(lines)
    assert "## Cross-engine: held-out voices split by engine" in text
    assert "`loeo` ((g) LOEO) adapts on medication speech of the other engine only" in text
    assert "| `baseline` | greedy_search | med_test | 75.00 (2) | 0.00 (1) | 50.0 (seen 0.0, unseen 100.0) | 100.0 |" in text
    assert "| `loeo` | greedy_search | med_test | 0.00 (2) | 100.00 (1) | 100.0 (seen 100.0, unseen 100.0) | 0.0 |" in text
    assert "| `loeo` | beam-lm-hotwords | med_test | 0.00 (2) | 0.00 (1) | 100.0 (seen 100.0, unseen 100.0) | 100.0 |" in text
    assert "`baseline` | beam-lm-hotwords" not in text  # not decoded that way: no row
    assert "missing" not in text  # a stage without eval.json has no row
    assert _write_results_module().cross_engine_section(tmp_path / "none", ["baseline"], {}, []) == []


def test_results_page_names_the_users_domain_inputs(tmp_path):
    module = _write_results_module()
    assert "real drug names" in module.new_domain_line({}, tmp_path)  # packaged lists: no inputs file
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "domain_inputs.txt").write_text("my_terms.tsv@7ea3 notes.txt@5134 medication.txt@f384\n")
    line = module.new_domain_line({}, tmp_path)
    assert "`my_terms.tsv`, `notes.txt`, `medication.txt`" in line and "real drug names" not in line


def test_shipped_decoding_targets_compare_with_the_same_decoding_and_with_before(tmp_path):
    """RESULTS.md's second targets table: the final model's shipped decoding (stage 9) against the
    baseline decoded the same way and against the baseline's plain beam search, with name recall."""
    from synthasr.score import TermList, compute_wer, write_results

    terms = TermList.from_terms([("metformin", "seen")])
    ref = "take metformin with food"
    hyps = {("base", "beam"): "take met for men with food",           # 3 errors of 4 words: 75 %
            ("base", "beam-lm"): "take metformin with foot",           # 25 %
            ("final", "beam-lm"): "take metformin with food"}          # 0 %
    exp = tmp_path / "exp"
    for (stage, setting), hyp in hyps.items():
        for test_set in ("med_test", "general_test"):
            wer = compute_wer([("u1", ref, hyp)], terms=terms)
            write_results(exp / stage / "decode_biasing", test_set, setting, wer)
    res = {"shipped_decoding": "beam-lm", "before_decoding": "beam", "targets": {"name_recall_min": 80.0}}
    text = "\n".join(_write_results_module().shipped_targets_section(
        exp, res, "base", "final", ["med_test"], ["general_test"], 65.0, 2.0))
    assert "## Targets with the shipped decoding (`beam-lm`)" in text
    assert "| med_test | 75.00 | 25.00 | 0.00 | -100.0 % | -100.0 % | 100.0 |" in text
    assert "* med_test: relative WER reduction 100.0 % vs before, 100.0 % vs the same decoding" in text
    assert "name recall 100.0 % (target ≥ 80 %): **met**" in text
    assert "* general_test: relative WER change -100.0 % vs the same decoding (target ≤ +2 %): **met**" in text
    assert _write_results_module().shipped_targets_section(exp, {"shipped_decoding": "beam-xyz"}, "base", "final",
                                                           ["med_test"], [], 65.0, 2.0) == []  # not decoded
