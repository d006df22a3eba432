"""Encoder-output cache (frozen-encoder phase): training from it equals training from features, resume,
stale-key refusal, schedule validation, and top-N-layer freezing."""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lhotse import CutSet
from lhotse.utils import fastcopy

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts, tiny_train_config, train_tokenizer  # noqa: E402

from synthasr.checkpoint import load_checkpoint  # noqa: E402
from synthasr.data.encoder_cache import (  # noqa: E402
    KEY_FILE, MANIFEST_FILE, PROGRESS_FILE, EncoderCacheError, build_encoder_cache, load_encoder_out,
)
from synthasr.data.features import FeatureConfig, compute_fbank  # noqa: E402
from synthasr.model import build_model  # noqa: E402
from synthasr.train.freeze import FreezeError, freeze, resolve_freeze_patterns  # noqa: E402
from synthasr.train.trainer import TrainingError, fit  # noqa: E402

torch.set_num_threads(1)
# float16 keeps 11 significant bits: a relative error of 2**-11 = 4.9e-4 per stored value. A per-frame
# loss computed from such inputs may deviate by a few times that; 1e-3 is two float16 ulps.
FP16_LOSS_RTOL = 1e-3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_corpus")
    cuts = make_tone_cuts(root / "audio", n=8, seed=1)
    tok = train_tokenizer([c.supervisions[0].text for c in cuts], root / "bpe", vocab_size=20)
    return compute_fbank(cuts, root / "fbank", "tones"), tok


def _frozen_model(tok, seed=0, **overrides):
    torch.manual_seed(seed)
    model = build_model({"preset": "tiny", "vocab_size": tok.vocab_size, **overrides})
    freeze(model, ["encoder"], eval_mode=True)
    return model


def _losses(exp_dir: Path):
    text = "\n".join(p.read_text() for p in sorted((exp_dir / "log").glob("log-train-*.txt")))
    return [float(x) for x in re.findall(r"step \d+: loss=([0-9.eE+-]+)", text)]


def _ledger_ids(cache_dir: Path):
    ids = []
    for line in (cache_dir / PROGRESS_FILE).read_text().splitlines():
        try:
            ids.append(json.loads(line)["id"])
        except ValueError:
            pass
    return ids


def test_training_from_cache_equals_training_from_features(corpus, tmp_path):
    cuts, tok = corpus
    model = _frozen_model(tok)
    cached = build_encoder_cache(model, cuts, tmp_path / "cache", max_duration=3.0)
    assert [c.id for c in cached] == [c.id for c in cuts]
    with torch.no_grad():  # stored = the encoder's own output, exact length, float16-rounded
        cut = cuts[0]
        feats = torch.from_numpy(cut.load_features()).unsqueeze(0)
        ref, ref_len = model.encoder.eval()(feats, torch.tensor([feats.shape[1]]))
    stored = load_encoder_out(cached[0])
    assert stored.shape == (int(ref_len[0]), 64)
    np.testing.assert_allclose(stored, ref[0].numpy(), rtol=2**-10, atol=1e-6)

    cfg = tiny_train_config(max_steps=5, log_every_n_steps=1, checkpoint_every_n_steps=0)
    fit(cfg, tmp_path / "cached", cached, None, tok, model=copy.deepcopy(model), eval_mode_modules=["encoder"],
        inputs="encoder_out")
    fit(cfg, tmp_path / "feats", cuts, None, tok, model=copy.deepcopy(model), eval_mode_modules=["encoder"])
    from_cache, from_feats = _losses(tmp_path / "cached"), _losses(tmp_path / "feats")
    assert len(from_cache) == len(from_feats) == 5
    np.testing.assert_allclose(from_cache, from_feats, rtol=FP16_LOSS_RTOL)
    assert max(from_cache) - min(from_cache) > 10 * FP16_LOSS_RTOL * max(from_cache)  # the tolerance is tight
    # The checkpoint holds the whole model; the encoder is exactly the one the cache was built from.
    trained = load_checkpoint(tmp_path / "cached" / "final.pt")["model"]
    assert set(trained) == set(model.state_dict())
    for name, value in model.state_dict().items():
        if name.startswith("encoder."):
            assert torch.equal(trained[name], value), name
    assert any(not torch.equal(trained[n], model.state_dict()[n]) for n in trained if n.startswith("joiner."))


def test_encoder_out_inputs_need_a_frozen_encoder_and_no_spec_augment(corpus, tmp_path):
    cuts, tok = corpus
    model = _frozen_model(tok)
    cached = build_encoder_cache(model, cuts, tmp_path / "cache", max_duration=3.0)
    cfg = tiny_train_config(max_steps=1)
    trainable = build_model({"preset": "tiny", "vocab_size": tok.vocab_size})
    with pytest.raises(TrainingError, match="encoder is frozen"):
        fit(cfg, tmp_path / "a", cached, None, tok, model=trainable, inputs="encoder_out")
    with pytest.raises(TrainingError, match="data.spec_augment"):
        fit(tiny_train_config(max_steps=1, **{"data.spec_augment.enabled": True}), tmp_path / "b", cached, None,
            tok, model=model, inputs="encoder_out")


def test_interrupted_cache_build_resumes_without_recomputing(corpus, tmp_path):
    cuts, tok = corpus
    model = _frozen_model(tok)
    out = tmp_path / "cache"
    real_forward = model.encoder.forward
    calls = {"n": 0}

    def dies_on_second_batch(x, x_lens):
        calls["n"] += 1  # call 1 measures the frame rate, call 2 is the first batch
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_forward(x, x_lens)

    model.encoder.forward = dies_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        build_encoder_cache(model, cuts, out, max_duration=2.0)
    del model.encoder.forward
    first = _ledger_ids(out)
    assert 0 < len(first) < len(cuts)
    assert not (out / MANIFEST_FILE).exists()  # the manifest appears only when complete
    with open(out / PROGRESS_FILE, "a") as f:
        f.write('{"id": "tone0')  # a torn line from a kill mid-append is ignored

    resumed = build_encoder_cache(model, cuts, out, max_duration=2.0)
    ids = _ledger_ids(out)
    assert ids[: len(first)] == first and sorted(ids) == sorted(c.id for c in cuts)  # nothing computed twice
    assert (out / MANIFEST_FILE).is_file()
    fresh = build_encoder_cache(model, cuts, tmp_path / "fresh", max_duration=100.0)
    for a, b in zip(resumed, fresh):
        np.testing.assert_allclose(load_encoder_out(a), load_encoder_out(b), rtol=2**-10, atol=1e-6)
    build_encoder_cache(model, cuts, out, max_duration=2.0)
    assert len(_ledger_ids(out)) == len(cuts)  # a finished cache computes nothing


def test_changed_encoder_or_features_refuse_the_cache(corpus, tmp_path):
    cuts, tok = corpus
    model = _frozen_model(tok)
    out = tmp_path / "cache"
    build_encoder_cache(model, cuts.subset(first=3), out, max_duration=3.0)
    assert json.loads((out / KEY_FILE).read_text())["frame_shift"] == pytest.approx(0.04)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.encoder.parameters()).view(-1)[0] += 1e-3
    with pytest.raises(EncoderCacheError) as err:
        build_encoder_cache(changed, cuts.subset(first=3), out)
    assert "another encoder or feature config" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EncoderCacheError, match="another encoder"):
        build_encoder_cache(model, cuts.subset(first=3), out, feature_config=FeatureConfig(dither=0.1))
    # The decoder/joiner do not change encoder outputs: same key, nothing recomputed.
    head_changed = copy.deepcopy(model)
    with torch.no_grad():
        next(head_changed.joiner.parameters()).add_(1.0)
    build_encoder_cache(head_changed, cuts.subset(first=3), out)
    assert len(_ledger_ids(out)) == 3


def _whisper(layers: int, **extra):
    dims = {"n_mels": 80, "n_state": 64, "n_head": 2, "n_layer": layers, "n_ctx": 200}
    return {"encoder": "whisper", "whisper": {"dims": dims, **extra}}


def test_cache_works_for_the_whisper_encoder(corpus, tmp_path):
    cuts, tok = corpus
    cuts = cuts.subset(first=3)
    torch.manual_seed(0)
    model = build_model({**_whisper(2), "vocab_size": tok.vocab_size})
    freeze(model, ["encoder"])
    cached = build_encoder_cache(model, cuts, tmp_path / "cache", max_duration=3.0)
    assert json.loads((tmp_path / "cache" / KEY_FILE).read_text())["frame_shift"] == pytest.approx(0.02)
    for cut, with_out in zip(cuts, cached):
        feats = torch.from_numpy(cut.load_features()).unsqueeze(0)
        with torch.no_grad():
            ref, ref_len = model.encoder(feats, torch.tensor([feats.shape[1]]))
        np.testing.assert_allclose(load_encoder_out(with_out), ref[0, : int(ref_len[0])].numpy(), rtol=2**-10,
                                   atol=1e-6)


@pytest.mark.parametrize("family,layers,trainable", [("conformer", 2, 1), ("conformer", 4, 2), ("conformer", 4, 0),
                                                     ("conformer", 4, 4), ("whisper", 3, 1), ("whisper_x2", 3, 2)])
def test_top_n_encoder_layers_trainable(corpus, family, layers, trainable):
    _, tok = corpus
    torch.manual_seed(0)
    config = {"preset": "tiny", "num_encoder_layers": layers} if family == "conformer" else (
        _whisper(layers, extra_subsampling=2 if family == "whisper_x2" else 1))
    model = build_model({**config, "vocab_size": tok.vocab_size})
    patterns = resolve_freeze_patterns(model, ["decoder"], encoder_layers_trainable=trainable)
    freeze(model, patterns)
    top = {f"encoder.layers.{i}." for i in range(layers - trainable, layers)}
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("encoder.final_norm.", "encoder.frame_merge.", "joiner.", "simple_"))
                or any(n.startswith(t) for t in top)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def test_top_n_layers_validated_against_the_model(corpus):
    _, tok = corpus
    model = build_model({"preset": "tiny", "vocab_size": tok.vocab_size})
    with pytest.raises(FreezeError, match=r"3 is not in 0\.\.2 \(the encoder has 2 layers\)"):
        resolve_freeze_patterns(model, [], encoder_layers_trainable=3)
    clash = r"'encoder' freezes encoder\.\S+, which encoder_layers_trainable: 1 leaves trainable"
    with pytest.raises(FreezeError, match=clash):
        resolve_freeze_patterns(model, ["encoder"], encoder_layers_trainable=1)
    assert resolve_freeze_patterns(model, ["joiner"]) == ["joiner"]


# --------------------------------------------------------------------------------------------- #
# Schedule stages
# --------------------------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def schedule_corpus(tmp_path_factory, corpus):
    cuts, _ = corpus
    root = tmp_path_factory.mktemp("sched")
    from synthasr.tokenizer import train_bpe

    bpe = train_bpe([c.supervisions[0].text for c in cuts], root / "lang", vocab_size=20, hard_vocab_limit=False)
    gen, med = cuts.subset(first=5), cuts.subset(last=3)
    gen.to_file(root / "gen.jsonl.gz")
    med.to_file(root / "med.jsonl.gz")
    return {"bpe": str(bpe), "gen": str(root / "gen.jsonl.gz"), "med": str(root / "med.jsonl.gz")}


def _schedule(c, **adapt):
    stage = {"name": "adapt", "init": "previous", "data": {"general": 0.5, "med": 0.5}, "max_steps": 2,
             "encoder_cache": True, "freeze": {"patterns": ["encoder"], "eval_mode": True}, "eval": ["test"]}
    stage.update(adapt)
    return {
        "base": {
            "bpe_model": c["bpe"],
            "train": {"model": {"preset": "tiny"}, "device": "cpu", "progress_bar": False, "valid_wer": False,
                      "checkpoint_every_n_steps": 0, "optim": {"warmup_steps": 0, "lr": 0.005},
                      "data": {"max_duration": 4.0, "bucketing": False, "spec_augment": {"enabled": False}}},
            "sources": {"general": [c["gen"]], "med": [c["med"]]},
            "eval_sets": {"test": c["med"]},
        },
        "stages": [{"name": "base", "init": "scratch", "data": {"general": 1.0}, "max_steps": 2, "eval": ["test"]},
                   stage],
    }


BAD_STAGES = {
    "partly_frozen": ({"freeze": {"patterns": ["encoder.layers.0-1"]}},
                      r"stages\[1\] \(adapt\)\.encoder_cache: needs the whole encoder frozen .* encoder\.embed"),
    "train_mode": ({"freeze": {"patterns": ["encoder"], "eval_mode": False}},
                   r"stages\[1\] \(adapt\)\.encoder_cache: needs freeze\.eval_mode: true"),
    "top_layers": ({"freeze": {"encoder_layers_trainable": 1}},
                   r"stages\[1\] \(adapt\)\.encoder_cache: needs the whole encoder frozen .* encoder\.layers\.1"),
    "augmented": ({"augment": {"med": {"speed": [0.9, 1.1]}}},
                  r"stages\[1\] \(adapt\)\.augment\.med: audio augmentation cannot be drawn per epoch .*"
                  r"\(augment_copies: N\)"),
    "copies_without_cache": ({"encoder_cache": False, "augment_copies": 2, "augment": {"med": {"speed": [0.9, 1.1]}},
                              "freeze": {"encoder_layers_trainable": 1}},
                             r"stages\[1\] \(adapt\)\.augment_copies: needs encoder_cache: true"),
    "copies_of_nothing": ({"augment_copies": 2},
                          r"stages\[1\] \(adapt\)\.augment_copies: no source of this stage has an augmentation"),
    "negative_copies": ({"augment_copies": -1}, r"stages\[1\] \(adapt\)\.augment_copies: must be >= 0, got -1"),
    "spec_augment": ({"train": {"data": {"spec_augment": {"enabled": True}}}},
                     r"stages\[1\] \(adapt\)\.train\.data\.spec_augment: SpecAugment cannot apply"),
    "too_many_layers": ({"encoder_cache": False, "freeze": {"encoder_layers_trainable": 5}},
                        r"stages\[1\] \(adapt\)\.freeze: encoder_layers_trainable: 5 is not in 0\.\.2"),
}


@pytest.mark.parametrize("case", sorted(BAD_STAGES))
def test_stage_validation_errors(schedule_corpus, tmp_path, case):
    from synthasr.train.schedule import ScheduleError, validate_schedule

    change, message = BAD_STAGES[case]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_schedule(schedule_corpus, **change)))
    with pytest.raises(ScheduleError, match=message) as err:
        validate_schedule(path, exp_dir=tmp_path / "exp")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_schedule_stage_trains_from_the_cache_and_keeps_the_encoder(schedule_corpus, tmp_path):
    from synthasr.train.schedule import run_schedule

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_schedule(schedule_corpus)))
    result = run_schedule(path, exp_dir=tmp_path / "exp")
    base, adapt = (load_checkpoint(s.checkpoint)["model"] for s in result.stages)
    assert set(base) == set(adapt)
    assert all(torch.equal(base[n], adapt[n]) for n in base if n.startswith("encoder."))
    assert any(not torch.equal(base[n], adapt[n]) for n in base if n.startswith("joiner."))
    caches = sorted((tmp_path / "exp" / "encoder_cache").glob("*/*/" + MANIFEST_FILE))
    assert [p.parts[-3] for p in caches] == ["general", "med"]
    assert np.isfinite(result.stages[1].results["test"]["wer"])  # evaluated with the full model from features


class _Louder:
    """An encode view: the cut played louder (a transform, so features are computed on the fly)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, cut):
        return cut.perturb_volume(self.factor)


def test_encode_view_stores_what_the_encoder_hears_under_the_cuts_own_id(corpus, tmp_path):
    cuts, tok = corpus
    model = _frozen_model(tok)
    clean = build_encoder_cache(model, cuts, tmp_path / "clean", on_the_fly_features=True)
    louder = build_encoder_cache(model, cuts, tmp_path / "view", encode_view=_Louder(3.0))
    assert [c.id for c in louder] == [c.id for c in cuts]
    assert [c.supervisions[0].text for c in louder] == [c.supervisions[0].text for c in cuts]
    heard = CutSet.from_cuts(c.perturb_volume(3.0) for c in cuts)
    direct = build_encoder_cache(model, heard, tmp_path / "direct", on_the_fly_features=True)
    for a, b, c in zip(louder, direct, clean):
        np.testing.assert_array_equal(load_encoder_out(a), load_encoder_out(b))
        assert not np.allclose(load_encoder_out(a), load_encoder_out(c), atol=1e-3)
    build_encoder_cache(model, cuts, tmp_path / "view", encode_view=_Louder(3.0))
    assert len(_ledger_ids(tmp_path / "view")) == len(cuts)  # same view: resumed, nothing recomputed
    loaded = CutSet.from_cuts(fastcopy(c, custom=None) for c in cuts)  # as read again from a manifest
    build_encoder_cache(model, loaded, tmp_path / "view", encode_view=_Louder(3.0))
    assert len(_ledger_ids(tmp_path / "view")) == len(cuts)  # data loading's marks on the cuts: not the audio
    changed = build_encoder_cache(model, cuts, tmp_path / "view", encode_view=_Louder(0.5))
    assert len(_ledger_ids(tmp_path / "view")) == 2 * len(cuts)  # another view: every cut recomputed
    quieter = build_encoder_cache(model, CutSet.from_cuts(c.perturb_volume(0.5) for c in cuts), tmp_path / "q",
                                  on_the_fly_features=True)
    for a, b in zip(changed, quieter):
        np.testing.assert_array_equal(load_encoder_out(a), load_encoder_out(b))


def test_augmentation_digest_names_the_config_and_seed_not_the_copy_count():
    from synthasr.augment.config import AugmentConfig
    from synthasr.train.schedule import augmentation_digest

    vtlp = AugmentConfig(vtlp_prob=0.5)
    assert augmentation_digest(vtlp, 42) == augmentation_digest(AugmentConfig(vtlp_prob=0.5), 42)
    assert augmentation_digest(vtlp, 42) != augmentation_digest(AugmentConfig(vtlp_prob=0.4), 42)
    assert augmentation_digest(vtlp, 42) != augmentation_digest(vtlp, 43)


def test_stages_augmenting_one_source_differently_keep_separate_copies(schedule_corpus, tmp_path):
    from synthasr.train.schedule import run_schedule

    cfg = _schedule(schedule_corpus, augment={"med": {"vtlp_prob": 1.0}}, augment_copies=1)
    other = dict(cfg["stages"][1], name="adapt_pitch", init="stage:base", augment={"med": {"pitch_prob": 1.0}})
    cfg["stages"].append(other)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_schedule(path, exp_dir=tmp_path / "exp")
    manifests = sorted((tmp_path / "exp" / "encoder_cache").glob("med.augmented-*/*/" + MANIFEST_FILE))
    assert len(manifests) == 2
    first = [load_encoder_out(c) for c in CutSet.from_file(manifests[0])]
    second = [load_encoder_out(c) for c in CutSet.from_file(manifests[1])]
    assert any(a.shape != b.shape or not np.allclose(a, b, atol=1e-3) for a, b in zip(first, second))


def test_schedule_stage_trains_on_stored_augmented_copies(schedule_corpus, tmp_path):
    from synthasr.augment.config import AugmentConfig
    from synthasr.train.schedule import augmentation_digest, run_schedule

    aug = {"vtlp_prob": 1.0, "speed": [0.9, 1.1]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_schedule(schedule_corpus, augment={"med": aug}, augment_copies=2)))
    result = run_schedule(path, exp_dir=tmp_path / "exp")
    cache = tmp_path / "exp" / "encoder_cache"
    med = [c.id for c in CutSet.from_file(schedule_corpus["med"])]
    folders = list(cache.glob("med.augmented-*"))
    assert [f.name for f in folders] == [f"med.augmented-{augmentation_digest(AugmentConfig(**aug), 42)}"]
    copies = CutSet.from_file(next(folders[0].glob("*/" + MANIFEST_FILE))).to_eager()
    assert sorted(c.id for c in copies) == sorted(f"{i}_aug{k}" for i in med for k in (1, 2))
    clean = CutSet.from_file(next((cache / "med").glob("*/" + MANIFEST_FILE)))
    by_id = {c.id: load_encoder_out(c) for c in clean}
    for c in copies:  # each copy is a different draw: never the clean output, never its sibling's
        out, original = load_encoder_out(c), by_id[c.id.rsplit("_aug", 1)[0]]
        assert out.shape != original.shape or not np.allclose(out, original, atol=1e-3)
    pairs = [(load_encoder_out(copies[f"{i}_aug1"]), load_encoder_out(copies[f"{i}_aug2"])) for i in med]
    assert any(a.shape != b.shape or not np.allclose(a, b, atol=1e-3) for a, b in pairs)
    base, adapt = (load_checkpoint(s.checkpoint)["model"] for s in result.stages)
    assert all(torch.equal(base[n], adapt[n]) for n in base if n.startswith("encoder."))
    assert np.isfinite(result.stages[1].results["test"]["wer"])
