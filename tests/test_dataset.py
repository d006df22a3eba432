"""Training batches: shapes, feature paths, seeded SpecAugment, exact fast-forward, rank sharding."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts  # noqa: E402

from synthasr.data.dataset import (  # noqa: E402
    AsrDataset,
    DatasetError,
    EpochBatches,
    make_loader,
    make_sampler,
    make_spec_augment,
)
from synthasr.data.features import FeatureConfig, compute_fbank, make_extractor  # noqa: E402
from synthasr.train.config import SpecAugmentConfig  # noqa: E402


@pytest.fixture(scope="module")
def cuts(tmp_path_factory):
    return make_tone_cuts(tmp_path_factory.mktemp("audio"), n=10, seed=3)


@pytest.fixture(scope="module")
def fbank_cuts(cuts, tmp_path_factory):
    return compute_fbank(cuts, tmp_path_factory.mktemp("fbank"), "t")


def test_batch_fields_and_order(cuts):
    ds = AsrDataset(FeatureConfig())
    batch = ds[cuts.subset(first=4)]
    feats, lens = batch["features"], batch["feature_lens"]
    assert feats.shape[0] == 4 and feats.shape[2] == 80 and feats.dtype == torch.float32
    assert lens.dtype == torch.int64 and int(lens.max()) == feats.shape[1]
    assert lens.tolist() == sorted(lens.tolist(), reverse=True)
    by_id = {c.id: c for c in cuts}
    for cid, text, src, n in zip(batch["cut_ids"], batch["texts"], batch["sources"], lens.tolist()):
        assert text == by_id[cid].supervisions[0].text
        assert src == by_id[cid].supervisions[0].custom["domain"]
        assert n == by_id[cid].num_frames or abs(n - round(by_id[cid].duration * 100)) <= 1


def test_precomputed_and_on_the_fly_paths(cuts, fbank_cuts):
    sub = fbank_cuts.subset(first=3)
    stored = AsrDataset(FeatureConfig())[sub]
    forced = AsrDataset(FeatureConfig(), on_the_fly_features=True)[sub]
    assert stored["cut_ids"] == forced["cut_ids"]
    # Forced on-the-fly equals the extractor exactly; stored differs only by lilcom rounding.
    extractor = make_extractor(FeatureConfig())
    cut = next(c for c in cuts if c.id == forced["cut_ids"][0])
    direct = torch.from_numpy(extractor.extract(cut.load_audio(), 16000))
    assert torch.equal(forced["features"][0, : direct.shape[0]], direct)
    assert not torch.equal(stored["features"], forced["features"])
    assert torch.allclose(stored["features"], forced["features"], atol=0.05)


def test_feature_dim_mismatch_is_reported(fbank_cuts):
    with pytest.raises(DatasetError, match="stored features have 80 bins, config expects 40"):
        AsrDataset(FeatureConfig(num_mel_bins=40))[fbank_cuts.subset(first=2)]


def test_missing_text_is_reported(cuts):
    cut = cuts[0]
    bad = cut.with_id("notext")
    bad.supervisions = [s.with_alignment("word", []) for s in bad.supervisions]
    for s in bad.supervisions:
        s.text = ""
    from lhotse import CutSet

    with pytest.raises(DatasetError, match="cut notext: no supervision text"):
        AsrDataset(FeatureConfig())[CutSet.from_cuts([bad])]


def test_spec_augment_is_seeded_by_position_and_leaves_global_rng_alone(fbank_cuts):
    spec = make_spec_augment(SpecAugmentConfig(time_warp_factor=10, frames_mask_size=20, p=1.0))
    ds = AsrDataset(FeatureConfig(), spec_augment=spec, seed=11)
    plain = AsrDataset(FeatureConfig())
    sub = fbank_cuts.subset(first=3)
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    a = ds[(1, 4, sub)]
    after = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    expected = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
    b = ds[(1, 4, sub)]
    c = ds[(1, 5, sub)]
    assert a["position"] == (1, 4)
    assert torch.equal(a["features"], b["features"])
    assert not torch.equal(a["features"], c["features"])
    assert not torch.equal(a["features"], plain[sub]["features"])


def test_epoch_batches_fast_forward_is_exact(cuts):
    sampler = make_sampler(cuts, max_duration=3.0, shuffle=True, seed=9, num_buckets=2)
    full = [(e, i, sorted(c.id for c in cs)) for e, i, cs in EpochBatches(sampler, epoch=2)]
    assert len(full) >= 4
    rest = [(e, i, sorted(c.id for c in cs)) for e, i, cs in EpochBatches(sampler, epoch=2, skip=2)]
    assert rest == full[2:]
    other_epoch = [sorted(c.id for c in cs) for _, _, cs in EpochBatches(sampler, epoch=3)]
    assert other_epoch != [ids for _, _, ids in full]  # reshuffled per epoch
    assert sorted(i for b in other_epoch for i in b) == sorted(c.id for c in cuts)


def test_loader_yields_positions_through_workers(fbank_cuts):
    sampler = make_sampler(fbank_cuts, max_duration=3.0, shuffle=False, seed=0, bucketing=False)
    ds = AsrDataset(FeatureConfig(), spec_augment=make_spec_augment(SpecAugmentConfig(time_warp_factor=10, p=1.0)))
    in_proc = list(make_loader(ds, EpochBatches(sampler, 1), num_workers=0))
    workers = list(make_loader(ds, EpochBatches(sampler, 1), num_workers=2))
    assert [b["position"] for b in in_proc] == [b["position"] for b in workers]
    for x, y in zip(in_proc, workers):
        assert torch.equal(x["features"], y["features"])  # same augmentation whoever builds the batch


def test_rank_sharding_is_disjoint_and_complete(cuts):
    shards = []
    for rank in (0, 1):
        sampler = make_sampler(cuts, max_duration=2.5, shuffle=True, seed=4, num_buckets=2, world_size=2, rank=rank)
        shards.append([c.id for _, _, cs in EpochBatches(sampler, 1) for c in cs])
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == {c.id for c in cuts}
