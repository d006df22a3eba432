"""``synthasr report``: regenerate the forgetting report (and ablation tables) from saved stage evals."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import click

from synthasr.report import ReportError, write_ablation_table, write_report


def _parse_ablation(spec: str) -> Tuple[str, str]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise click.BadParameter(f"expected LABEL=EXP_DIR, got {spec!r}", param_hint="--ablation")
    return label, path


@click.command("report")
@click.option("--exp-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Schedule experiment dir holding <stage>/eval.json; report.{json,md,png,html} are written here.")
@click.option("--baseline", default=None, help="Stage to compare against (default: the first stage).")
@click.option("--final-stage", default=None,
              help="Stage whose worst names and hypotheses the report shows next to the baseline (default: the last).")
@click.option("--general-domain", default="general", show_default=True, help="Domain used for backward transfer.")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write report.png.")
@click.option("--tensorboard/--no-tensorboard", default=True, show_default=True, help="Write tensorboard scalars.")
@click.option("--html/--no-html", "html_page", default=True, show_default=True,
              help="Write report.html (tables, plot, utterances with audio; self-contained).")
@click.option("--html-audio", type=click.Choice(["embed", "link", "none"]), default="embed", show_default=True,
              help="Audio in report.html: embedded FLAC, links relative to EXP_DIR, or none.")
@click.option("--utts-per-voice", type=click.IntRange(min=1), default=2, show_default=True,
              help="report.html: utterances shown per voice and test set.")
@click.option("--max-voices", type=click.IntRange(min=1), default=8, show_default=True,
              help="report.html: voices shown per test set (engines in turn).")
@click.option("--ablation", "ablations", multiple=True, metavar="LABEL=EXP_DIR",
              help="Add a row to a paper-style ablation table (repeatable; first row is the reference).")
@click.option("--ablation-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the ablation table (default: print it).")
def report(exp_dir: Optional[Path], baseline: Optional[str], final_stage: Optional[str], general_domain: str,
           plot: bool, tensorboard: bool, html_page: bool, html_audio: str, utts_per_voice: int, max_voices: int,
           ablations: Tuple[str, ...], ablation_out: Optional[Path]) -> None:
    """Rebuild report.json / report.md / report.png / report.html from EXP_DIR/*/eval.json."""
    if exp_dir is None and not ablations:
        raise click.UsageError("give --exp-dir and/or at least one --ablation LABEL=EXP_DIR")
    try:
        if exp_dir is not None:
            rep = write_report(exp_dir, baseline=baseline, plot=plot, tensorboard=tensorboard,
                               general_domain=general_domain, final_stage=final_stage, html_page=html_page,
                               audio=html_audio, utts_per_voice=utts_per_voice, max_voices=max_voices)
            page = f" and {exp_dir / 'report.html'}" if html_page else ""
            click.echo(f"wrote {exp_dir / 'report.md'}{page} ({len(rep['stages'])} stages, baseline {rep['baseline']})")
        if ablations:
            rows = dict(_parse_ablation(a) for a in ablations)
            if ablation_out is not None:
                write_ablation_table(ablation_out, rows)
                click.echo(f"wrote {ablation_out}")
            else:
                from synthasr.report import ablation_table

                click.echo(ablation_table(rows), nl=False)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
