"""Per-stage forgetting report: WER/CER of every stage on every eval set, vs a baseline stage.

Inputs are the per-stage ``eval.json`` files the schedule runner writes (``exp_dir/<stage>/eval.json``)::

    {"stage": "adapt", "index": 1, "checkpoint": ".../final.pt",
     "results": {"general_test": {"wer": 12.3, "cer": 5.1, "domain": "general", "num_utts": 500, ...}}}

and optionally, per set (``synthasr.decode.evaluation.eval_summary`` writes them): ``terms`` (name
recall/precision, :class:`synthasr.score.TermStats`), ``recogs`` (the per-utterance hypotheses, relative
to the stage directory) and ``cuts`` (the eval set's manifest, for the audio in report.html).

Outputs (all written atomically into ``exp_dir``): ``report.json``, ``report.md`` (stage x eval-set
table, absolute WER and relative change vs the baseline; name recall/precision and the worst names
when the stages were scored with a term list), ``report.png`` (WER per stage per domain),
``report.html`` (the same tables and plot in one self-contained page, plus per test set a few
utterances per voice with reference, hypotheses and an audio player) and tensorboard scalars
(``tensorboard-report/``).

Definitions (WER in percent):
* relative change of set ``s`` at stage ``k``: ``100 * (WER_k(s) - WER_base(s)) / WER_base(s)``;
  negative is better (``-65`` = a 65 % relative WER reduction);
* backward transfer ``BWT_k`` = mean over general-domain sets of ``WER_k(s) - WER_base(s)`` in
  absolute WER points; positive means the general domain was forgotten, <= 0 means no degradation.
"""
from __future__ import annotations

import base64
import html
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from synthasr.utils.io import atomic_write

log = logging.getLogger(__name__)
PathLike = Union[str, Path]
GENERAL_DOMAIN = "general"


class ReportError(ValueError):
    """Missing or inconsistent per-stage eval results."""


# --------------------------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------------------------- #
def collect_stage_evals(exp_dir: PathLike) -> List[Dict[str, Any]]:
    """Read every ``exp_dir/*/eval.json`` in stage order (by ``index``, then name)."""
    exp_dir = Path(exp_dir)
    evals = []
    for path in sorted(exp_dir.glob("*/eval.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"{path}: unreadable eval results: {e}") from None
        if not isinstance(data, dict) or "results" not in data:
            raise ReportError(f"{path}: not a stage eval file (no 'results')")
        data.setdefault("stage", path.parent.name)
        evals.append(data)
    if not evals:
        raise ReportError(f"{exp_dir}: no */eval.json found (has any stage been evaluated?)")
    return sorted(evals, key=lambda d: (d.get("index", math.inf), d["stage"]))


def build_report(
    stage_evals: Sequence[Mapping[str, Any]], baseline: Optional[str] = None, general_domain: str = GENERAL_DOMAIN,
    final_stage: Optional[str] = None,
) -> Dict[str, Any]:
    """Tables of WER/CER, relative change vs ``baseline`` (default: first stage) and backward transfer;
    term (name) metrics per stage and set where the evals have them. ``final_stage`` (default: the last
    stage) is the model whose worst names the report lists."""
    if not stage_evals:
        raise ReportError("no stage results to report")
    stages = [e["stage"] for e in stage_evals]
    if len(set(stages)) != len(stages):
        raise ReportError(f"duplicate stage names in results: {stages}")
    baseline = baseline or stages[0]
    if baseline not in stages:
        raise ReportError(f"baseline stage {baseline!r} has no results (stages: {', '.join(stages)})")
    final_stage = final_stage or stages[-1]
    if final_stage not in stages:
        raise ReportError(f"final stage {final_stage!r} has no results (stages: {', '.join(stages)})")
    domains: Dict[str, str] = {}
    wer: Dict[str, Dict[str, Optional[float]]] = {}
    cer: Dict[str, Dict[str, Optional[float]]] = {}
    for e in stage_evals:
        for name, r in e["results"].items():
            domains.setdefault(name, str(r.get("domain") or "unknown"))
    sets = list(domains)
    for e in stage_evals:
        res = e["results"]
        wer[e["stage"]] = {s: _num(res.get(s, {}).get("wer")) for s in sets}
        cer[e["stage"]] = {s: _num(res.get(s, {}).get("cer")) for s in sets}
    base = wer[baseline]
    relative = {st: {s: _relative(wer[st][s], base[s]) for s in sets} for st in stages}
    general = [s for s in sets if domains[s] == general_domain]
    bwt = {st: _mean([_diff(wer[st][s], base[s]) for s in general]) for st in stages}
    bwt_rel = {st: _mean([relative[st][s] for s in general]) for st in stages}
    by_domain = {
        st: {d: _mean([wer[st][s] for s in sets if domains[s] == d]) for d in sorted(set(domains.values()))}
        for st in stages
    }
    return {
        "baseline": baseline,
        "general_domain": general_domain,
        "stages": stages,
        "eval_sets": domains,
        "wer": wer,
        "cer": cer,
        "relative_wer": relative,
        "domain_wer": by_domain,
        "backward_transfer": bwt,
        "backward_transfer_relative": bwt_rel,
        "checkpoints": {e["stage"]: e.get("checkpoint") for e in stage_evals},
        "final_stage": final_stage,
        "terms": {e["stage"]: {s: e["results"].get(s, {}).get("terms") for s in sets} for e in stage_evals},
    }


def _num(v: Any) -> Optional[float]:
    return None if v is None else float(v)


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def _relative(value: Optional[float], base: Optional[float]) -> Optional[float]:
    if value is None or base is None:
        return None
    if base == 0:
        return 0.0 if value == 0 else None  # undefined: no relative change from a perfect baseline
    return 100.0 * (value - base) / base


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


# --------------------------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------------------------- #
def _fmt(v: Optional[float], signed: bool = False, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: absolute WER, relative change, CER and backward transfer per stage."""
    sets = list(report["eval_sets"])
    head = "| stage | " + " | ".join(f"{s} ({report['eval_sets'][s]})" for s in sets) + " |"
    rule = "|---|" + "---|" * len(sets)
    lines = [f"# WER per stage (baseline: `{report['baseline']}`)", "", "## WER (%)", "", head, rule]
    for st in report["stages"]:
        lines.append(f"| {st} | " + " | ".join(_fmt(report["wer"][st][s]) for s in sets) + " |")
    lines += ["", f"## Relative WER change vs `{report['baseline']}` (%; negative = better)", "", head, rule]
    for st in report["stages"]:
        lines.append(f"| {st} | " + " | ".join(_fmt(report["relative_wer"][st][s], signed=True, digits=1) for s in sets) + " |")
    lines += ["", "## CER (%)", "", head, rule]
    for st in report["stages"]:
        lines.append(f"| {st} | " + " | ".join(_fmt(report["cer"][st][s]) for s in sets) + " |")
    gd = report["general_domain"]
    lines += [
        "",
        f"## Backward transfer on the `{gd}` domain",
        "",
        f"Mean change of {gd}-domain WER vs the baseline (absolute points; positive = forgetting).",
        "",
        "| stage | BWT (abs. WER) | BWT (rel. %) |",
        "|---|---|---|",
    ]
    for st in report["stages"]:
        lines.append(
            f"| {st} | {_fmt(report['backward_transfer'][st], signed=True)} | "
            f"{_fmt(report['backward_transfer_relative'][st], signed=True, digits=1)} |"
        )
    lines += _term_markdown(report)
    return "\n".join(lines) + "\n"


# Term (name) metrics: ``report["terms"][stage][set]`` is the ``terms`` dict of synthasr.score.TermStats.
TERMS_EXPLAINED = ("Recall: reference name mentions the hypothesis has at the aligned position; precision: "
                   "hypothesis name mentions that are such hits (names said where nobody said them, e.g. "
                   "hotword false alarms, lower it).")


def term_sets(report: Mapping[str, Any]) -> List[str]:
    """Eval sets scored with a term list (by any stage) that have at least one name mention."""
    terms = report.get("terms") or {}
    return [s for s in report["eval_sets"]
            if any((terms.get(st) or {}).get(s) and (terms[st][s]["ref"] or terms[st][s]["hyp"]) for st in terms)]


def term_value(report: Mapping[str, Any], stage: str, eval_set: str, key: str,
               group: Optional[str] = None) -> Optional[float]:
    """``recall``/``precision`` (or a count) of ``eval_set`` at ``stage``, overall or for one group."""
    t = ((report.get("terms") or {}).get(stage) or {}).get(eval_set)
    if t is not None and group is not None:
        t = t.get("groups", {}).get(group)
    return None if t is None else _num(t.get(key))


def term_groups(report: Mapping[str, Any], eval_set: str) -> List[str]:
    """Groups (e.g. seen/unseen) with reference mentions in ``eval_set`` at some stage."""
    found = set()
    for per_set in (report.get("terms") or {}).values():
        for g, counts in ((per_set or {}).get(eval_set) or {}).get("groups", {}).items():
            if counts.get("ref"):
                found.add(g)
    return sorted(found)


def worst_terms(report: Mapping[str, Any], eval_set: str, stage: Optional[str] = None,
                top: int = 10) -> List[Dict[str, Any]]:
    """The worst names of ``eval_set`` at ``stage`` (default: the final stage), as the eval stored them."""
    t = ((report.get("terms") or {}).get(stage or report["final_stage"]) or {}).get(eval_set) or {}
    return list(t.get("worst") or [])[:top]


def format_counts(pairs: Sequence[Sequence[Any]], empty: str, limit: int = 3) -> str:
    """``[[text, n], ...]`` -> ``"a ×2, b"``; ``empty`` stands for an empty text (deleted/inserted)."""
    parts = [f"{text or empty}" + (f" ×{n}" if n > 1 else "") for text, n in list(pairs)[:limit]]
    more = len(pairs) - limit
    return ", ".join(parts) + (f", … (+{more})" if more > 0 else "")


def worst_terms_markdown(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """Markdown table of :func:`worst_terms` rows."""
    lines = ["| name | group | mentions | recognised | missed | false alarms | recognised as "
             "| false alarm where the reference had |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['term']} | {r.get('group') or '–'} | {r['ref']} | {r['hits']} | {r['misses']} | "
                     f"{r['false_alarms']} | {format_counts(r.get('recognised_as') or [], '(deleted)') or '–'} | "
                     f"{format_counts(r.get('false_alarm_for') or [], '(nothing)') or '–'} |")
    return lines


def _term_markdown(report: Mapping[str, Any]) -> List[str]:
    sets = term_sets(report)
    if not sets:
        return []
    lines = ["", "## Name recall / precision (%)", "", TERMS_EXPLAINED, "",
             "| stage | " + " | ".join(f"{s} recall | {s} precision" for s in sets) + " |",
             "|---|" + "---|---|" * len(sets)]
    for st in report["stages"]:
        cells = [f"{_fmt(term_value(report, st, s, 'recall'))} | {_fmt(term_value(report, st, s, 'precision'))}"
                 for s in sets]
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    columns = [(s, g) for s in sets for g in term_groups(report, s)]
    if columns:
        lines += ["", "## Name recall by group (%)", "",
                  "| stage | " + " | ".join(f"{s}: {g}" for s, g in columns) + " |", "|---|" + "---|" * len(columns)]
        for st in report["stages"]:
            lines.append(f"| {st} | " + " | ".join(_fmt(term_value(report, st, s, "recall", g)) for s, g in columns) + " |")
    final = report["final_stage"]
    lines += ["", f"## Worst names at `{final}` (up to 10 per set)"]
    for s in sets:
        lines += ["", f"### {s}", ""]
        if term_value(report, final, s, "ref") is None:
            lines.append("Not scored with the term list at this stage.")
        else:
            rows = worst_terms(report, s)
            lines += worst_terms_markdown(rows) if rows else ["No name errors."]
    return lines


def plot_report(report: Mapping[str, Any], path: PathLike) -> Path:
    """PNG: mean WER per domain (thick) and per eval set (thin, dashed) across stages."""
    path = Path(path)
    png = plot_png(report)
    with atomic_write(path, "wb") as f:
        f.write(png)
    return path


def plot_png(report: Mapping[str, Any]) -> bytes:
    """The bytes of :func:`plot_report`'s PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    x = list(range(len(stages)))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(stages) + 2), 4.0))
    domains = sorted(set(report["eval_sets"].values()))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, d in enumerate(domains):
        colour = colours[i % len(colours)]
        ys = [report["domain_wer"][st].get(d) for st in stages]
        ax.plot(x, [math.nan if y is None else y for y in ys], marker="o", lw=2.5, color=colour, label=f"{d} (mean)")
        for s, dom in report["eval_sets"].items():
            if dom == d:
                ys = [report["wer"][st][s] for st in stages]
                ax.plot(x, [math.nan if y is None else y for y in ys], ls="--", lw=1, color=colour, alpha=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(stages, rotation=20, ha="right")
    ax.set_ylabel("WER (%)")
    ax.set_title("WER per stage and domain")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_tensorboard(report: Mapping[str, Any], out_dir: PathLike) -> Path:
    """Scalars ``wer/<set>``, ``domain_wer/<domain>``, ``backward_transfer`` at step = stage index.

    Event files are written into a temporary directory that then replaces ``out_dir`` whole.
    """
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
    try:
        writer = SummaryWriter(str(tmp))
        for step, st in enumerate(report["stages"]):
            for s, v in report["wer"][st].items():
                if v is not None:
                    writer.add_scalar(f"wer/{s}", v, step)
            for d, v in report["domain_wer"][st].items():
                if v is not None:
                    writer.add_scalar(f"domain_wer/{d}", v, step)
            if report["backward_transfer"][st] is not None:
                writer.add_scalar("backward_transfer", report["backward_transfer"][st], step)
        writer.close()
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_report(
    exp_dir: PathLike,
    stage_evals: Optional[Sequence[Mapping[str, Any]]] = None,
    baseline: Optional[str] = None,
    plot: bool = True,
    tensorboard: bool = True,
    general_domain: str = GENERAL_DOMAIN,
    final_stage: Optional[str] = None,
    html_page: bool = True,
    audio: str = "embed",
    utts_per_voice: int = 2,
    max_voices: int = 8,
) -> Dict[str, Any]:
    """Build and write ``report.json``/``report.md`` (+ PNG, HTML, tensorboard) into ``exp_dir``; return
    the report. The HTML page embeds the plot even with ``plot=False``."""
    exp_dir = Path(exp_dir)
    if stage_evals is None:
        stage_evals = collect_stage_evals(exp_dir)
    report = build_report(stage_evals, baseline=baseline, general_domain=general_domain, final_stage=final_stage)
    with atomic_write(exp_dir / "report.json") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with atomic_write(exp_dir / "report.md") as f:
        f.write(render_markdown(report))
    png = plot_png(report) if plot or html_page else None
    if plot:
        with atomic_write(exp_dir / "report.png", "wb") as f:
            f.write(png)
    if html_page:
        page = render_html(report, stage_evals, exp_dir, png=png, audio=audio, utts_per_voice=utts_per_voice,
                           max_voices=max_voices)
        with atomic_write(exp_dir / "report.html") as f:
            f.write(page)
    if tensorboard:
        write_tensorboard(report, exp_dir / "tensorboard-report")
    return report


# --------------------------------------------------------------------------------------------- #
# HTML
# --------------------------------------------------------------------------------------------- #
AUDIO_MODES = ("embed", "link", "none")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
th{background:#f2f2f2;text-align:left}td.num{text-align:right;white-space:nowrap}
small,.note{color:#666}figure{margin:1em 0}figure img{max-width:100%}
.utts td.text div{margin:.1em 0}.label{display:inline-block;min-width:8em;color:#666}
ins{background:#d4f7d4;text-decoration:none}del{background:#fdd;color:#900}
.sub{background:#ffe7a8}audio{width:260px}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_html(report: Mapping[str, Any], stage_evals: Sequence[Mapping[str, Any]], exp_dir: PathLike,
                png: Optional[bytes] = None, audio: str = "embed", utts_per_voice: int = 2,
                max_voices: int = 8) -> str:
    """``report.html``: one self-contained page (plot and audio as data URIs, or audio as links
    relative to ``exp_dir``); no scripts, no external resources.

    Per test set it shows up to ``utts_per_voice`` utterances of up to ``max_voices`` voices (taken
    in turn from each engine), with the reference and the hypotheses of the baseline and final stages
    read back from the ``recogs`` files the evaluation wrote.
    """
    if audio not in AUDIO_MODES:
        raise ReportError(f"audio must be one of {', '.join(AUDIO_MODES)}, got {audio!r}")
    exp_dir = Path(exp_dir)
    evals = {e["stage"]: e for e in stage_evals}
    shown = list(dict.fromkeys([report["baseline"], report["final_stage"]]))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>SynthASR report: {_esc(exp_dir.resolve().name)}</title><style>{_CSS}</style></head><body>",
           f"<h1>SynthASR report: {_esc(exp_dir.resolve().name)}</h1>",
           f"<p>Baseline <code>{_esc(report['baseline'])}</code>, final <code>{_esc(report['final_stage'])}</code>. "
           "WER in %, relative change vs the baseline in brackets (negative = better).</p>",
           '<section id="stages"><h2>Per-stage results</h2>', _html_stage_table(report)]
    if term_sets(report):
        out.append(f'<p class="note">Name recall (R) and precision (P), %. {_esc(TERMS_EXPLAINED)}</p>')
    if png is not None:
        out.append('<figure><img alt="WER per stage and domain" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode("ascii")}"><figcaption>WER per stage: domain means (thick), '
                   "eval sets (dashed).</figcaption></figure>")
    out.append("</section>")
    for eval_set in report["eval_sets"]:
        out.append(_html_set_section(report, eval_set, evals, shown, exp_dir, audio, utts_per_voice, max_voices))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_stage_table(report: Mapping[str, Any]) -> str:
    sets = list(report["eval_sets"])
    with_terms = set(term_sets(report))
    head = "".join(f"<th>{_esc(s)}<br><small>{_esc(report['eval_sets'][s])}</small></th>" for s in sets)
    rows = [f'<table class="stages"><tr><th>stage</th>{head}<th>backward transfer<br><small>abs. WER</small></th></tr>']
    for st in report["stages"]:
        cells = []
        for s in sets:
            cell = _fmt(report["wer"][st][s])
            if st != report["baseline"]:
                cell += f" <small>({_fmt(report['relative_wer'][st][s], signed=True, digits=1)} %)</small>"
            if s in with_terms:
                cell += (f"<br><small>R {_fmt(term_value(report, st, s, 'recall'), digits=1)} · "
                         f"P {_fmt(term_value(report, st, s, 'precision'), digits=1)}</small>")
            cells.append(f'<td class="num">{cell}</td>')
        rows.append(f"<tr><td>{_esc(st)}</td>{''.join(cells)}"
                    f"<td class=\"num\">{_fmt(report['backward_transfer'][st], signed=True)}</td></tr>")
    return "\n".join(rows) + "</table>"


def _html_set_section(report: Mapping[str, Any], eval_set: str, evals: Mapping[str, Mapping[str, Any]],
                      shown: Sequence[str], exp_dir: Path, audio: str, per_voice: int, max_voices: int) -> str:
    base, final = report["baseline"], report["final_stage"]
    out = [f'<section class="test-set" id="set-{_esc(eval_set)}"><h2>{_esc(eval_set)} '
           f"<small>({_esc(report['eval_sets'][eval_set])})</small></h2>",
           f"<p>WER {_fmt(report['wer'][base][eval_set])} → {_fmt(report['wer'][final][eval_set])}"]
    if eval_set in term_sets(report):
        out[-1] += (f"; name recall {_fmt(term_value(report, base, eval_set, 'recall'), digits=1)} → "
                    f"{_fmt(term_value(report, final, eval_set, 'recall'), digits=1)}, precision "
                    f"{_fmt(term_value(report, base, eval_set, 'precision'), digits=1)} → "
                    f"{_fmt(term_value(report, final, eval_set, 'precision'), digits=1)}")
        for g in term_groups(report, eval_set):
            out[-1] += (f"; recall ({_esc(g)}) {_fmt(term_value(report, base, eval_set, 'recall', g), digits=1)} → "
                        f"{_fmt(term_value(report, final, eval_set, 'recall', g), digits=1)}")
    out[-1] += f" (<code>{_esc(base)}</code> → <code>{_esc(final)}</code>).</p>"
    if eval_set in term_sets(report):
        out.append(f"<h3>Worst names at <code>{_esc(final)}</code></h3>")
        rows = worst_terms(report, eval_set)
        out.append(_html_terms_table(rows) if rows else '<p class="note">No name errors.</p>')
    out.append("<h3>Utterances</h3>")
    out.append(_html_utterances(eval_set, evals, shown, exp_dir, audio, per_voice, max_voices))
    out.append("</section>")
    return "\n".join(out)


def _html_terms_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ("<tr><th>name</th><th>group</th><th>mentions</th><th>recognised</th><th>missed</th>"
            "<th>false alarms</th><th>recognised as</th><th>false alarm where the reference had</th></tr>")
    body = [f"<tr><td>{_esc(r['term'])}</td><td>{_esc(r.get('group') or '–')}</td><td class=\"num\">{r['ref']}</td>"
            f"<td class=\"num\">{r['hits']}</td><td class=\"num\">{r['misses']}</td>"
            f"<td class=\"num\">{r['false_alarms']}</td>"
            f"<td>{_esc(format_counts(r.get('recognised_as') or [], '(deleted)') or '–')}</td>"
            f"<td>{_esc(format_counts(r.get('false_alarm_for') or [], '(nothing)') or '–')}</td></tr>" for r in rows]
    return '<table class="terms">' + head + "".join(body) + "</table>"


def _stage_recogs(exp_dir: Path, stage: str, entry: Mapping[str, Any]) -> Dict[str, Any]:
    from synthasr.score import ScoreError, read_recogs

    path = Path(entry["recogs"])
    path = path if path.is_absolute() else exp_dir / stage / path
    try:
        return read_recogs(path)
    except ScoreError as e:
        log.warning("report.html: %s", e)
        return {}


def _html_utterances(eval_set: str, evals: Mapping[str, Mapping[str, Any]], shown: Sequence[str], exp_dir: Path,
                     audio: str, per_voice: int, max_voices: int) -> str:
    entries = {st: evals[st]["results"].get(eval_set) or {} for st in shown if st in evals}
    recogs = {st: _stage_recogs(exp_dir, st, e) for st, e in entries.items() if e.get("recogs")}
    recogs = {st: r for st, r in recogs.items() if r}
    candidates = [e["cuts"] for e in reversed(list(entries.values())) if e.get("cuts")]  # the final stage's first
    cuts_path = next((c for c in candidates if Path(c).is_file()), candidates[0] if candidates else None)
    if not recogs or cuts_path is None:
        return ('<p class="note">No per-utterance results recorded for this set (eval.json has no '
                "<code>recogs</code>/<code>cuts</code> entry).</p>")
    ids = set.intersection(*(set(r) for r in recogs.values()))
    try:
        picked = pick_utterances(cuts_path, ids, per_voice, max_voices)
    except Exception as e:  # noqa: BLE001 - an unreadable manifest leaves a note, not a failed report
        log.warning("report.html: %s: cannot read cuts: %s", cuts_path, e)
        return f'<p class="note">Cannot read {_esc(cuts_path)}: {_esc(str(e).splitlines()[0] if str(e) else e)}</p>'
    rows = ['<table class="utts"><tr><th>voice</th><th>utterance</th><th>audio</th>'
            "<th>reference and hypotheses</th></tr>"]
    for (engine, voice), utts in picked:
        for k, (utt_id, cut) in enumerate(utts):
            ref = next(iter(recogs.values()))[utt_id][0]
            lines = [f'<div class="ref"><span class="label">reference</span>{_esc(" ".join(ref))}</div>']
            for st, r in recogs.items():
                hyp = _html_hyp(ref, r[utt_id][1])
                lines.append(f'<div class="hyp"><span class="label">{_esc(st)}</span>{hyp}</div>')
            voice_cell = ""
            if k == 0:  # one cell per voice, spanning its utterances
                voice_cell = f'<td rowspan="{len(utts)}">{_esc(voice)}<br><small>{_esc(engine)}</small></td>'
            rows.append(f'<tr data-utt="{_esc(utt_id)}">{voice_cell}<td><code>{_esc(utt_id)}</code></td>'
                        f'<td>{_html_audio(cut, audio, exp_dir)}</td><td class="text">{"".join(lines)}</td></tr>')
    return "\n".join(rows) + "</table>"


def _html_hyp(ref: Sequence[str], hyp: Sequence[str]) -> str:
    """The hypothesis with its errors marked: insertions, deletions (struck reference words), substitutions."""
    from synthasr.score import align

    words = []
    for r, h in align(ref, hyp):
        if r == h:
            words.append(_esc(h))
        elif r is None:
            words.append(f'<ins title="inserted">{_esc(h)}</ins>')
        elif h is None:
            words.append(f'<del title="deleted">{_esc(r)}</del>')
        else:
            words.append(f'<span class="sub" title="reference: {_esc(r)}">{_esc(h)}</span>')
    return " ".join(words) if words else '<span class="note">(empty)</span>'


def _voice_of(cut: Any) -> Tuple[str, str]:
    """(engine, voice) from the supervision's or cut's custom fields; real speech: (source, speaker)."""
    sup = cut.supervisions[0] if cut.supervisions else None
    custom = {**(getattr(cut, "custom", None) or {}), **((sup.custom or {}) if sup is not None else {})}
    engine = custom.get("engine") or custom.get("source") or "unknown engine"
    voice = custom.get("voice") or (sup.speaker if sup is not None and sup.speaker else None) or "unknown voice"
    return str(engine), str(voice)


def pick_utterances(cuts_path: PathLike, utt_ids: Set[str], per_voice: int = 2,
                    max_voices: int = 8) -> List[Tuple[Tuple[str, str], List[Tuple[str, Any]]]]:
    """``[((engine, voice), [(utt_id, cut), ...]), ...]``: the first ``per_voice`` utterances (by id) of
    up to ``max_voices`` voices, taking voices from each engine in turn so every engine is shown.

    Utterance ids follow the evaluation's rule: the cut id, or ``<cut id>-<k>`` for the k-th of several
    supervisions (that cut is then trimmed to the supervision)."""
    from lhotse import load_manifest_lazy

    by_voice: Dict[Tuple[str, str], List[Tuple[str, Any]]] = {}
    for cut in load_manifest_lazy(cuts_path):
        for k, sup in enumerate(cut.supervisions):
            utt_id = cut.id if len(cut.supervisions) <= 1 else f"{cut.id}-{k}"
            if utt_id in utt_ids:
                one = cut if len(cut.supervisions) <= 1 else _only_supervision(cut, sup)
                by_voice.setdefault(_voice_of(one), []).append((utt_id, one))
    engines: Dict[str, List[Tuple[str, str]]] = {}
    for key in sorted(by_voice):
        engines.setdefault(key[0], []).append(key)
    order = [key for turn in itertools.zip_longest(*engines.values()) for key in turn if key is not None]
    return [(key, sorted(by_voice[key], key=lambda u: u[0])[:per_voice]) for key in order[:max_voices]]


def _only_supervision(cut: Any, sup: Any) -> Any:
    """The part of ``cut`` that ``sup`` covers, with ``sup`` as its only supervision."""
    from lhotse.utils import fastcopy

    part = cut.truncate(offset=sup.start, duration=sup.duration, keep_excessive_supervisions=False)
    return fastcopy(part, supervisions=[fastcopy(sup, start=0.0)])


def _html_audio(cut: Any, mode: str, exp_dir: Path) -> str:
    if mode == "none":
        return '<span class="note">–</span>'
    try:
        src = _embedded_audio(cut) if mode == "embed" else _linked_audio(cut, exp_dir)
    except Exception as e:  # noqa: BLE001 - one unreadable file leaves a note in the page
        log.warning("report.html: audio of %s: %s", cut.id, e)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f'<span class="note">audio unavailable: {_esc(reason)}</span>'
    return f'<audio controls preload="metadata" src="{_esc(src)}"></audio>'


def _embedded_audio(cut: Any) -> str:
    import io

    import numpy as np
    import soundfile as sf

    samples = np.asarray(cut.load_audio(), dtype=np.float32)
    mono = samples.mean(axis=0) if samples.ndim == 2 else samples
    buf = io.BytesIO()
    sf.write(buf, np.clip(mono, -1.0, 1.0), int(cut.sampling_rate), format="FLAC", subtype="PCM_16")
    return "data:audio/flac;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _linked_audio(cut: Any, exp_dir: Path) -> str:
    rec = getattr(cut, "recording", None)
    if rec is None or len(rec.sources) != 1 or rec.sources[0].type != "file":
        raise ReportError("not a single audio file (use audio='embed')")
    path = Path(rec.sources[0].source).resolve()
    if not path.is_file():
        raise ReportError(f"{path} not found")
    src = urllib.parse.quote(os.path.relpath(path, exp_dir.resolve()))
    if cut.start > 0 or abs(cut.duration - rec.duration) > 1e-3:  # a part of the file: media fragment
        src += f"#t={cut.start:.3f},{cut.start + cut.duration:.3f}"
    return src


# --------------------------------------------------------------------------------------------- #
# Ablations
# --------------------------------------------------------------------------------------------- #
def load_report(path_or_dir: PathLike) -> Dict[str, Any]:
    """A ``report.json`` (or the experiment directory holding one)."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: cannot read report: {e}") from None


def ablation_table(
    reports: Mapping[str, Union[Mapping[str, Any], PathLike]],
    reference: Optional[str] = None,
    stage: Optional[str] = None,
    new_domain: Optional[str] = None,
) -> str:
    """Paper-style markdown table: one row per system (its final stage, or ``stage``), one column per
    eval set, plus the relative WER reduction (WERR) on the new domain and the general-domain change,
    both vs the ``reference`` row (default: the first row, e.g. "(a) baseline")."""
    loaded = {label: (dict(r) if isinstance(r, Mapping) else load_report(r)) for label, r in reports.items()}
    if not loaded:
        raise ReportError("ablation table: no reports given")
    labels = list(loaded)
    reference = reference or labels[0]
    if reference not in loaded:
        raise ReportError(f"ablation table: reference {reference!r} is not one of {labels}")
    sets: Dict[str, str] = {}
    for r in loaded.values():
        for s, d in r["eval_sets"].items():
            sets.setdefault(s, d)
    general = loaded[reference].get("general_domain", GENERAL_DOMAIN)
    new_domain = new_domain or next((d for d in sets.values() if d != general), None)
    rows = {label: _row_wers(r, stage) for label, r in loaded.items()}
    ref = rows[reference]

    def mean_over(row: Dict[str, Optional[float]], domain: Optional[str]) -> Optional[float]:
        return _mean([row.get(s) for s, d in sets.items() if d == domain])

    head = "| system | " + " | ".join(sets) + f" | WERR {new_domain} (%) | Δ {general} WER |"
    lines = [head, "|---|" + "---|" * (len(sets) + 2)]
    for label in labels:
        row = rows[label]
        werr = _relative(mean_over(row, new_domain), mean_over(ref, new_domain))
        delta = _diff(mean_over(row, general), mean_over(ref, general))
        cells = [_fmt(row.get(s)) for s in sets]
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {_fmt(None if werr is None else 0.0 - werr + 0.0, digits=1)} | "
            f"{_fmt(delta, signed=True)} |"
        )
    return "\n".join(lines) + "\n"


def _row_wers(report: Mapping[str, Any], stage: Optional[str]) -> Dict[str, Optional[float]]:
    stages = report["stages"]
    if stage is not None and stage not in stages:
        raise ReportError(f"ablation table: stage {stage!r} not in report (stages: {', '.join(stages)})")
    return dict(report["wer"][stage or stages[-1]])


def write_ablation_table(out_path: PathLike, reports: Mapping[str, Any], **kwargs: Any) -> Path:
    """Render :func:`ablation_table` into ``out_path`` atomically."""
    table = ablation_table(reports, **kwargs)
    with atomic_write(out_path) as f:
        f.write(table)
    return Path(out_path)
