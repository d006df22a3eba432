"""``synthasr compute-fbank``: precompute lilcom-compressed fbank features for a cut manifest."""
from __future__ import annotations

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
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Input cut manifest (jsonl.gz).")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Where features go.")
@click.option("--prefix", required=True, help="Writes <out-dir>/<prefix>_cuts_fbank.jsonl.gz.")
@click.option("--num-jobs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--feature-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML with FeatureConfig keys (or a train config; its 'features' section is used).")
def compute_fbank_cmd(cuts_path: str, out_dir: str, prefix: str, num_jobs: int, feature_config: Optional[str]) -> None:
    """Compute fbank features (resumable: a complete output is left as is)."""
    from lhotse import CutSet

    from synthasr.config import ConfigError
    from synthasr.data.features import FeatureComputationError, compute_fbank, fbank_manifest_path

    try:
        cfg = _feature_config(feature_config)
        cuts = CutSet.from_file(cuts_path)
        out = compute_fbank(cuts, out_dir, prefix, num_jobs=num_jobs, feature_config=cfg)
    except (ConfigError, FeatureComputationError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{fbank_manifest_path(out_dir, prefix)}: {len(out)} cuts with {cfg.num_mel_bins}-bin fbank")
