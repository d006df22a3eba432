"""Per-stage forgetting report: WER/CER of every stage on every eval set, vs a baseline stage.

Inputs are the per-stage ``eval.json`` files the schedule runner writes (``exp_dir/<stage>/eval.json``)::

    {"stage": "adapt", "index": 1, "checkpoint": ".../final.pt",
     "results": {"general_test": {"wer": 12.3, "cer": 5.1, "domain": "general", "num_utts": 500, ...}}}

Outputs (all written atomically into ``exp_dir``): ``report.json``, ``report.md`` (stage x eval-set
table, absolute WER and relative change vs the baseline), ``report.png`` (WER per stage per domain)
and tensorboard scalars (``tensorboard-report/``).

Definitions (WER in percent):
* relative change of set ``s`` at stage ``k``: ``100 * (WER_k(s) - WER_base(s)) / WER_base(s)``;
  negative is better (``-65`` = a 65 % relative WER reduction);
* backward transfer ``BWT_k`` = mean over general-domain sets of ``WER_k(s) - WER_base(s)`` in
  absolute WER points; positive means the general domain was forgotten, <= 0 means no degradation.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from synthasr.utils.io import atomic_path, atomic_write

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
    stage_evals: Sequence[Mapping[str, Any]], baseline: Optional[str] = None, general_domain: str = GENERAL_DOMAIN
) -> Dict[str, Any]:
    """Tables of WER/CER, relative change vs ``baseline`` (default: first stage) and backward transfer."""
    if not stage_evals:
        raise ReportError("no stage results to report")
    stages = [e["stage"] for e in stage_evals]
    if len(set(stages)) != len(stages):
        raise ReportError(f"duplicate stage names in results: {stages}")
    baseline = baseline or stages[0]
    if baseline not in stages:
        raise ReportError(f"baseline stage {baseline!r} has no results (stages: {', '.join(stages)})")
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
    return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], path: PathLike) -> Path:
    """PNG: mean WER per domain (thick) and per eval set (thin, dashed) across stages."""
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
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


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
) -> Dict[str, Any]:
    """Build and write ``report.json``/``report.md`` (+ PNG, tensorboard) into ``exp_dir``; return the report."""
    exp_dir = Path(exp_dir)
    if stage_evals is None:
        stage_evals = collect_stage_evals(exp_dir)
    report = build_report(stage_evals, baseline=baseline, general_domain=general_domain)
    with atomic_write(exp_dir / "report.json") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with atomic_write(exp_dir / "report.md") as f:
        f.write(render_markdown(report))
    if plot:
        plot_report(report, exp_dir / "report.png")
    if tensorboard:
        write_tensorboard(report, exp_dir / "tensorboard-report")
    return report


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
