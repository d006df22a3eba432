"""compute_fbank: lilcom archives + atomic, resumable manifest; the compute-fbank CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts  # noqa: E402

from synthasr.data.features import FeatureConfig, compute_fbank, fbank_manifest_path, make_extractor  # noqa: E402


@pytest.fixture(scope="module")
def cuts(tmp_path_factory):
    return make_tone_cuts(tmp_path_factory.mktemp("audio"), n=4)


def test_features_match_on_the_fly_extraction(cuts, tmp_path):
    out = compute_fbank(cuts, tmp_path, "train")
    manifest = fbank_manifest_path(tmp_path, "train")
    assert manifest.is_file() and (tmp_path / "train_feats.lca").is_file()
    assert [c.id for c in out] == [c.id for c in cuts]
    extractor = make_extractor(FeatureConfig())
    for stored, raw in zip(out, cuts):
        feats = stored.load_features()
        direct = extractor.extract(raw.load_audio(), 16000)
        assert feats.shape == direct.shape and feats.shape[1] == 80
        assert np.abs(feats - direct).max() < 0.05  # lilcom is lossy but close
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temp file


def test_rerun_is_skipped_when_complete(cuts, tmp_path):
    compute_fbank(cuts, tmp_path, "dev")
    archive = tmp_path / "dev_feats.lca"
    stamp = archive.stat().st_mtime_ns
    again = compute_fbank(cuts, tmp_path, "dev")
    assert archive.stat().st_mtime_ns == stamp and len(again) == len(cuts)


def test_incomplete_or_stale_output_is_recomputed(cuts, tmp_path):
    compute_fbank(cuts.subset(first=2), tmp_path, "part")  # manifest for fewer cuts
    out = compute_fbank(cuts, tmp_path, "part")
    assert len(out) == 4
    # Different mel bins: the stored 80-bin features are stale.
    out40 = compute_fbank(cuts, tmp_path, "part", feature_config=FeatureConfig(num_mel_bins=40))
    assert out40[0].num_features == 40


def test_cli_compute_fbank(cuts, tmp_path):
    from click.testing import CliRunner

    from synthasr.cli.data import compute_fbank_cmd

    src = tmp_path / "in_cuts.jsonl.gz"
    cuts.to_file(src)
    conf = tmp_path / "f.yaml"
    conf.write_text("features: {num_mel_bins: 64}\nseed: 1\n")
    res = CliRunner().invoke(compute_fbank_cmd, ["--cuts", str(src), "--out-dir", str(tmp_path / "fb"),
                                                 "--prefix", "x", "--feature-config", str(conf)])
    assert res.exit_code == 0, res.output
    from lhotse import CutSet

    got = CutSet.from_file(tmp_path / "fb" / "x_cuts_fbank.jsonl.gz")
    assert got[0].num_features == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_mel_binz: 3\n")
    res = CliRunner().invoke(compute_fbank_cmd, ["--cuts", str(src), "--out-dir", str(tmp_path / "fb"),
                                                 "--prefix", "y", "--feature-config", str(bad)])
    assert res.exit_code == 1 and "num_mel_binz" in res.output
