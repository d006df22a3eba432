"""``synthasr train`` (one stage from a YAML, or a multi-stage schedule) and ``synthasr average``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import click


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["optim.lr=1e-3", "data.shuffle=false"]`` -> ``{"optim.lr": 0.001, "data.shuffle": False}``.

    Values are parsed as YAML; numbers YAML 1.1 leaves as strings (``1e-3``) become floats.
    """
    import yaml

    from synthasr.config import ConfigError

    out: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--override {item!r}: expected key=value")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def _run_single_stage(config: str, exp_dir: Optional[str], overrides: Dict[str, Any]) -> Path:
    from lhotse import CutSet

    from synthasr.config import ConfigError, load_config
    from synthasr.tokenizer import Tokenizer
    from synthasr.train.config import TrainConfig
    from synthasr.train.trainer import fit

    cfg = load_config(TrainConfig, config, overrides)
    exp = exp_dir or cfg.exp_dir
    for name, value in (("train_cuts", cfg.train_cuts), ("bpe_model", cfg.bpe_model), ("exp_dir", exp)):
        if not value:
            raise ConfigError(f"{config}: {name} is required for single-stage training")
    for name in ("train_cuts", "bpe_model", "dev_cuts"):
        value = getattr(cfg, name)
        if name == "train_cuts" and Path(value).is_dir():  # lhotse Shar shards, checked when loaded
            continue
        if value and not Path(value).is_file():
            raise ConfigError(f"{config}: {name}: file not found: {value}")
    train_cuts = _train_cuts(cfg.train_cuts, config)
    dev_cuts = CutSet.from_file(cfg.dev_cuts) if cfg.dev_cuts else None
    tokenizer = Tokenizer.load(cfg.bpe_model)
    return fit(cfg, exp, train_cuts, dev_cuts, tokenizer)


def _train_cuts(train_cuts: str, config: str):
    """Lazy training cuts: a manifest, or a Shar directory (shards shuffled per epoch, streamed)."""
    from lhotse import load_manifest_lazy

    from synthasr.config import ConfigError
    from synthasr.data.shar import SharError, load_shar

    if not Path(train_cuts).is_dir():
        return load_manifest_lazy(train_cuts)
    try:
        return load_shar(train_cuts)
    except SharError as e:
        raise ConfigError(f"{config}: train_cuts: {e}") from None


def _run_schedule(schedule: str, exp_dir: Optional[str], overrides: Dict[str, Any], stages: Sequence[str]):
    from synthasr.train.schedule import run_schedule

    if overrides:
        raise click.UsageError("--override applies to --config; edit the schedule's base.train or a stage instead")
    return run_schedule(schedule, exp_dir=exp_dir, stages=list(stages) or None)


def _console_logging() -> None:
    """INFO progress on the console for rank 0 (other torchrun ranks only warn)."""
    import logging
    import os

    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")


@click.command("train")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="Single-stage TrainConfig YAML.")
@click.option("--schedule", type=click.Path(exists=True, dir_okay=False), help="Multi-stage schedule YAML.")
@click.option("--exp-dir", type=click.Path(file_okay=False), default=None, help="Overrides exp_dir of the YAML.")
@click.option("--override", "-o", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted config override, e.g. -o optim.lr=0.002 (repeatable).")
@click.option("--stage", "stages", multiple=True, help="With --schedule: run only these stages (repeatable).")
def train(config: Optional[str], schedule: Optional[str], exp_dir: Optional[str], overrides: Sequence[str],
          stages: Sequence[str]) -> None:
    """Train an RNN-T model; resumes automatically from the newest checkpoint in the exp dir.

    Multi-GPU/CPU DDP: ``torchrun --nproc_per_node N -m synthasr train --config ...``.
    """
    import torch

    # Before any torch work, so that the OpenMP workers started by the first parallel op inherit it
    # (see synthasr.train.trainer.flushes_subnormals): subnormals slow CPU training down severalfold.
    torch.set_flush_denormal(True)
    from synthasr.checkpoint import CheckpointError
    from synthasr.config import ConfigError
    from synthasr.data.dataset import DatasetError
    from synthasr.loss import LossBackendError
    from synthasr.train.schedule import ScheduleError
    from synthasr.train.trainer import TrainingError

    if (config is None) == (schedule is None):
        raise click.UsageError("give exactly one of --config or --schedule")
    _console_logging()
    if stages and schedule is None:
        raise click.UsageError("--stage needs --schedule")
    try:
        parsed = parse_overrides(overrides)
        if config is not None:
            final = _run_single_stage(config, exp_dir, parsed)
            click.echo(f"final model: {final}")
        else:
            result = _run_schedule(schedule, exp_dir, parsed, stages)
            for stage in result.stages:
                wers = ", ".join(f"{name} {r['wer']:.2f}" for name, r in stage.results.items())
                done = "skipped, finished earlier" if stage.skipped else "trained"
                click.echo(f"stage {stage.name} ({done}): {stage.checkpoint}; WER % {wers}")
            if result.report is not None:
                click.echo(f"report: {result.exp_dir / 'report.md'}")
    except (ConfigError, ScheduleError, TrainingError, CheckpointError, DatasetError, LossBackendError) as e:
        raise click.ClickException(str(e)) from None


@click.command("average")
@click.option("--exp-dir", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--epoch", type=int, default=None, help="Last epoch to include (epoch-E.pt).")
@click.option("--iter", "iteration", type=int, default=None,
              help="Last training step to include (checkpoint-N.pt); instead of --epoch.")
@click.option("--avg", default=1, show_default=True, type=int, help="Number of checkpoints to average.")
@click.option("--model", "models", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Average these model files instead (repeatable), e.g. a base model and its adapted version.")
@click.option("--weight", "weights", multiple=True, type=float,
              help="With --model: one weight per model (normalised to sum 1) [default: equal].")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: <exp-dir>/pretrained-epoch-E-avg-K.pt or pretrained-iter-N-avg-K.pt].")
def average(exp_dir: Optional[str], epoch: Optional[int], iteration: Optional[int], avg: int,
            models: Tuple[str, ...], weights: Tuple[float, ...], out: Optional[str]) -> None:
    """Average checkpoints into a pretrained-style model file (no optimizer state).

    ``--epoch E --avg K``: epoch-(E-K+1).pt .. epoch-E.pt. ``--iter N --avg K``: the K newest
    checkpoint-STEP.pt with STEP <= N (icefall's convention; what recipe stages bounded by max_steps write).
    ``--model A --model B [--weight 0.3 --weight 0.7] --out C``: a weighted average of whole models of one
    architecture, e.g. the general-domain model and its adaptation (weight averaging against forgetting).
    """
    from synthasr.checkpoint import CheckpointError
    from synthasr.train.average import AverageError, find_checkpoints, find_step_checkpoints, write_averaged

    if models:
        if exp_dir or epoch is not None or iteration is not None or not out:
            raise click.UsageError("--model needs --out and excludes --exp-dir/--epoch/--iter")
        try:
            write_averaged(models, out, list(weights) if weights else None)
        except (AverageError, CheckpointError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"{out}: average of {', '.join(models)}" + (f" with weights {list(weights)}" if weights else ""))
        return
    if weights:
        raise click.UsageError("--weight needs --model")
    if exp_dir is None:
        raise click.UsageError("give --exp-dir with --epoch or --iter, or --model files")
    if (epoch is None) == (iteration is None):
        raise click.UsageError("give exactly one of --epoch or --iter")
    name = f"epoch-{epoch}" if epoch is not None else f"iter-{iteration}"
    target = Path(out) if out else Path(exp_dir) / f"pretrained-{name}-avg-{avg}.pt"
    try:
        if epoch is not None:
            paths = find_checkpoints(exp_dir, epoch, avg)
        else:
            paths = find_step_checkpoints(exp_dir, iteration, avg)
        write_averaged(paths, target)
    except (AverageError, CheckpointError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{target}: average of {', '.join(p.name for p in paths)}")
