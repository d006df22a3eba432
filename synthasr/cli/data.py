"""``synthasr compute-fbank``: precompute lilcom-compressed fbank features for a cut manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click


def _feature_config(path: Optional[str]):
    """FeatureConfig from a YAML that is either a bare FeatureConfig or a train config's ``features``."""
    from synthasr.config import from_dict, load_yaml
    from synthasr.data.features import FeatureConfig

    if path is None:
        return FeatureConfig()
    data = load_yaml(path)
    if isinstance(data.get("features"), dict):
        return from_dict(FeatureConfig, data["features"], where=path, key="features")
    return from_dict(FeatureConfig, data, where=path)


@click.command("compute-fbank")
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True),
              help="Input cut manifest (jsonl.gz), or a Shar directory (with --shar-dir).")
@click.option("--out-dir", type=click.Path(file_okay=False), help="Where features go (directory layout).")
@click.option("--prefix", help="Writes <out-dir>/<prefix>_cuts_fbank.jsonl.gz.")
@click.option("--num-jobs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--feature-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML with FeatureConfig keys (or a train config; its 'features' section is used).")
@click.option("--shar-dir", type=click.Path(file_okay=False), default=None,
              help="Write cuts + features as lhotse Shar shards here instead (one task per shard; resumable).")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Cuts per Shar shard (a Shar input keeps its own shards).")
@click.option("--executor", "executor_kind", type=click.Choice(["local", "dask", "ray"]), default="local",
              show_default=True, help="With --shar-dir: where the shard tasks run (as tts-gen --executor).")
@click.option("--scheduler", default=None, help="With --executor dask/ray: the cluster address.")
def compute_fbank_cmd(cuts_path: str, out_dir: Optional[str], prefix: Optional[str], num_jobs: int,
                      feature_config: Optional[str], shar_dir: Optional[str], shard_size: int, executor_kind: str,
                      scheduler: Optional[str]) -> None:
    """Compute fbank features (resumable: a complete output is left as is)."""
    from lhotse import CutSet

    from synthasr.config import ConfigError
    from synthasr.data.features import FeatureComputationError, compute_fbank, fbank_manifest_path

    if shar_dir:
        return _compute_fbank_shar(cuts_path, shar_dir, num_jobs, feature_config, shard_size, executor_kind, scheduler)
    if not out_dir or not prefix or Path(cuts_path).is_dir() or executor_kind != "local":
        raise click.UsageError("give --out-dir and --prefix with a --cuts manifest (a Shar input, and --executor, "
                               "need --shar-dir)")
    try:
        cfg = _feature_config(feature_config)
        cuts = CutSet.from_file(cuts_path)
        out = compute_fbank(cuts, out_dir, prefix, num_jobs=num_jobs, feature_config=cfg)
    except (ConfigError, FeatureComputationError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{fbank_manifest_path(out_dir, prefix)}: {len(out)} cuts with {cfg.num_mel_bins}-bin fbank")


def _compute_fbank_shar(cuts_path: str, shar_dir: str, num_jobs: int, feature_config: Optional[str],
                        shard_size: int, executor_kind: str, scheduler: Optional[str]) -> None:
    """``compute-fbank --shar-dir``: features into Shar shards, from a manifest or a Shar directory."""
    from lhotse import CutSet

    from synthasr.config import ConfigError
    from synthasr.data.features import compute_fbank_shar
    from synthasr.data.shar import SharError
    from tts_gen.executors import ExecutorError, make_executor

    try:
        cfg = _feature_config(feature_config)
        source = cuts_path if Path(cuts_path).is_dir() else CutSet.from_file(cuts_path)
        with make_executor(executor_kind, num_jobs, scheduler) as executor:
            result = compute_fbank_shar(source, shar_dir, cfg, shard_size=shard_size, num_jobs=num_jobs,
                                        executor=executor)
    except (ConfigError, SharError, ExecutorError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"shar {shar_dir}: {result['cuts']} cuts with {cfg.num_mel_bins}-bin fbank in {result['shards']} shards "
               f"({result['written']} written, {result['skipped']} complete from an earlier run)")
