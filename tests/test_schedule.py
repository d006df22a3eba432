"""Schedule: strict loading, every validation error before training, and a tiny end-to-end run."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.utils import fastcopy

from synthasr.train.schedule import ScheduleError, load_schedule, run_schedule, validate_schedule

GENERAL = ["the weather is nice today", "call me in the morning", "we walked to the station", "open the door please"]
MEDICAL = ["take aspirin twice daily", "ibuprofen after meals", "one tablet of metformin", "aspirin with water"]


def _cuts(tmp, prefix, texts, domain, copies=2):
    rng = np.random.default_rng(abs(hash(prefix)) % 2**32)
    cuts = []
    for i, text in enumerate(texts * copies):
        audio = (0.05 * rng.standard_normal(12000 + 1600 * (i % 4))).astype(np.float32)
        path = tmp / f"{prefix}{i}.flac"
        sf.write(str(path), audio, 16000)
        rec = Recording.from_file(path, recording_id=f"{prefix}{i}")
        sup = SupervisionSegment(f"{prefix}{i}", rec.id, 0.0, rec.duration, text=text, custom={"domain": domain})
        cuts.append(fastcopy(rec.to_cut(), id=f"{prefix}{i}", supervisions=[sup]))
    out = tmp / f"{prefix}_cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(out)
    return str(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from synthasr.tokenizer import train_bpe

    tmp = tmp_path_factory.mktemp("corpus")
    bpe = train_bpe(GENERAL + MEDICAL, tmp / "lang", vocab_size=60, hard_vocab_limit=False)
    empty = tmp / "empty_cuts.jsonl.gz"
    CutSet.from_cuts([]).to_file(empty)
    return {
        "bpe": str(bpe),
        "general": _cuts(tmp, "gen", GENERAL, "general"),
        "med": _cuts(tmp, "med", MEDICAL, "medication"),
        "general_test": _cuts(tmp, "gtest", GENERAL[:2], "general", copies=1),
        "med_test": _cuts(tmp, "mtest", MEDICAL[:2], "medication", copies=1),
        "empty": str(empty),
    }


def _schedule(corpus):
    return {
        "baseline": "general",
        "base": {
            "bpe_model": corpus["bpe"],
            "train": {
                "model": {"preset": "tiny"},
                "device": "cpu",
                "progress_bar": False,
                "checkpoint_every_n_steps": 0,
                "optim": {"warmup_steps": 0, "lr": 0.005},
                "data": {"max_duration": 6.0, "bucketing": False, "spec_augment": {"enabled": False}},
            },
            "sources": {
                "general": {"cuts": [corpus["general"]], "domain": "general"},
                "medication_synth": [corpus["med"]],
            },
            "eval_sets": {
                "general_test": {"cuts": corpus["general_test"], "domain": "general"},
                "medication_test": corpus["med_test"],
            },
            "assets": {"num_noises": 3, "noise_duration": 2.0, "real_noise": False, "num_rirs": 2},
        },
        "stages": [
            {"name": "general", "init": "scratch", "data": {"general": 1.0}, "max_steps": 2},
            {
                "name": "adapt",
                "init": "previous",
                "data": {"general": 0.5, "medication_synth": 0.5},
                "num_cuts": 12,
                "augment": {"medication_synth": {"speed": [0.9, 1.1], "noise_prob": 0.5, "reverb_prob": 0.5}},
                "freeze": {"patterns": ["encoder"], "eval_mode": True},
                "regularization": {"type": "ewc", "lambda": {"joiner": 10.0}, "fisher_source": "general",
                                   "fisher_batches": 2},
                "max_steps": 2,
                "eval": ["general_test", "medication_test"],
            },
        ],
    }


def _write(tmp_path, data, name="sched.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_schedule_loads_and_validates(tmp_path, corpus):
    path = _write(tmp_path, _schedule(corpus))
    cfg = load_schedule(path)
    assert cfg.stages[1].regularization.lambda_ == {"joiner": 10.0}
    assert cfg.stages[1].augment["medication_synth"].speed == [0.9, 1.1]
    plan = validate_schedule(path, exp_dir=tmp_path / "exp")
    assert plan.eval_domains == {"general_test": "general", "medication_test": "medication"}
    assert plan.train_cfgs["adapt"].max_steps == 2 and plan.train_cfgs["adapt"].model.preset == "tiny"
    assert len(plan.sources["medication_synth"]) == 8


def _bad(corpus, mutate):
    data = copy.deepcopy(_schedule(corpus))
    mutate(data)
    return data


BAD_CASES = {
    "zero_weights": (lambda d: d["stages"][1].update(data={"general": 0.0, "medication_synth": 0.0}),
                     r"stages\[1\] \(adapt\)\.data: weights must sum to > 0"),
    "negative_weight": (lambda d: d["stages"][1]["data"].update(general=-1.0),
                        r"source 'general': weight must be a non-negative"),
    "unknown_source": (lambda d: d["stages"][1]["data"].update(radio=0.2), r"unknown source 'radio'"),
    "empty_source": (lambda d: d["base"]["sources"].update(medication_synth=["EMPTY"]),
                     r"base\.sources\.medication_synth: has no cuts"),
    "missing_manifest": (lambda d: d["base"]["sources"].update(general=["/nope/cuts.jsonl.gz"]),
                         r"base\.sources\.general: cut manifest /nope/cuts.jsonl.gz not found"),
    "bad_freeze": (lambda d: d["stages"][1]["freeze"].update(patterns=["encoder.layers.0-7"]),
                   r"stages\[1\] \(adapt\)\.freeze: freeze pattern 'encoder.layers.0-7' .*valid module names: .*encoder\.layers\.0-1"),
    "ewc_without_fisher_source": (lambda d: d["stages"][1]["regularization"].pop("fisher_source"),
                                  r"ewc needs fisher_source"),
    "ewc_unknown_fisher_source": (lambda d: d["stages"][1]["regularization"].update(fisher_source="radio"),
                                  r"fisher_source: unknown source 'radio'"),
    "ewc_from_scratch": (lambda d: d["stages"][1].update(init="scratch"), r"needs previous weights, but init is 'scratch'"),
    "bad_lambda_prefix": (lambda d: d["stages"][1]["regularization"].update({"lambda": {"encodr": 1.0}}),
                          r"lambda prefix 'encodr' matches no parameter"),
    "missing_init": (lambda d: d["stages"][1].update(init="/nope/final.pt"), r"init: checkpoint /nope/final.pt not found"),
    "previous_first": (lambda d: d["stages"][0].update(init="previous"), r"stages\[0\] \(general\)\.init: 'previous' but this is the first stage"),
    "unknown_eval_set": (lambda d: d["stages"][1].update(eval=["general_test", "radio_test"]),
                         r"\.eval: unknown eval set 'radio_test'"),
    "missing_eval_manifest": (lambda d: d["base"]["eval_sets"].update(medication_test="/nope/t.jsonl.gz"),
                              r"base\.eval_sets\.medication_test: cut manifest /nope/t.jsonl.gz not found"),
    "augment_unused_source": (lambda d: d["stages"][0].update(augment={"medication_synth": {"speed": [1.1]}}),
                              r"augmentation for 'medication_synth', which is not in this stage's data"),
    "bad_augment_value": (lambda d: d["stages"][1]["augment"]["medication_synth"].update(noise_prob=2.0),
                          r"stages\[1\]\.augment\.medication_synth\.noise_prob: must be a probability"),
    "unknown_key": (lambda d: d["stages"][1].update(lamda=1.0), r"unknown key stages\[1\]\.lamda"),
    "bad_train_override": (lambda d: d["stages"][1].update(train={"optim": {"lr": "fast"}}), r"train\.optim\.lr: expected float"),
    "duplicate_stage": (lambda d: d["stages"][1].update(name="general"), r"duplicate stage name 'general'"),
    "bad_baseline": (lambda d: d.update(baseline="nope"), r"baseline: 'nope' is not a stage"),
    "missing_bpe": (lambda d: d["base"].update(bpe_model="/nope/bpe.model"), r"base\.bpe_model: /nope/bpe.model not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_schedules_fail_before_training_with_one_line_errors(tmp_path, corpus, case, monkeypatch):
    mutate, pattern = BAD_CASES[case]
    data = _bad(corpus, mutate)
    text = yaml.safe_dump(data).replace("EMPTY", corpus["empty"])
    path = tmp_path / "sched.yaml"
    path.write_text(text)
    import synthasr.train.trainer as trainer

    monkeypatch.setattr(trainer, "fit", lambda *a, **k: pytest.fail("training started despite a bad schedule"))
    with pytest.raises((ScheduleError, ValueError), match=pattern) as e:
        run_schedule(path, exp_dir=tmp_path / "exp")
    assert "\n" not in str(e.value)
    assert str(path) in str(e.value)
    assert not (tmp_path / "exp").exists()


def test_running_a_later_stage_alone_needs_the_previous_checkpoint(tmp_path, corpus):
    path = _write(tmp_path, _schedule(corpus))
    with pytest.raises(ScheduleError, match=r"stage 'general' is not being run and .*final.pt is missing"):
        run_schedule(path, exp_dir=tmp_path / "exp", stages=["adapt"])
    with pytest.raises(ScheduleError, match=r"unknown stage 'nope'"):
        run_schedule(path, exp_dir=tmp_path / "exp", stages=["nope"])


def test_end_to_end_two_stage_schedule(tmp_path, corpus):
    torch.set_num_threads(1)
    path = _write(tmp_path, _schedule(corpus))
    exp = tmp_path / "exp"
    result = run_schedule(path, exp_dir=exp)
    assert [s.name for s in result.stages] == ["general", "adapt"]
    assert not any(s.skipped for s in result.stages)
    for stage in ("general", "adapt"):
        assert (exp / stage / "final.pt").is_file()
        ev = json.loads((exp / stage / "eval.json").read_text())
        assert set(ev["results"]) == {"general_test", "medication_test"}
        assert ev["results"]["medication_test"]["domain"] == "medication"
        assert ev["results"]["general_test"]["ref_words"] == 5 + 5  # "the weather is nice today" + "call me in the morning"
        assert list((exp / stage / "decode").glob("wer-summary-general_test*.txt"))
    assert (exp / "general" / "fisher.pt").is_file()  # Fisher of stage-1 weights, next to its checkpoint
    from synthasr.checkpoint import load_checkpoint

    s1 = load_checkpoint(exp / "general" / "final.pt")
    s2 = load_checkpoint(exp / "adapt" / "final.pt")
    for name, value in s1["model"].items():
        if name.startswith("encoder."):
            assert torch.equal(value, s2["model"][name]), name  # frozen encoder bit-identical
    assert not torch.equal(s1["model"]["joiner.output_linear.weight"], s2["model"]["joiner.output_linear.weight"])
    counts = s2["meta"]["source_counts"]
    assert set(counts) == {"general", "medication_synth"}
    report = json.loads((exp / "report.json").read_text())
    assert report["stages"] == ["general", "adapt"] and report["baseline"] == "general"
    assert report["relative_wer"]["general"]["general_test"] in (0.0, None)
    assert (exp / "report.md").is_file() and (exp / "report.png").is_file()
    assert list((exp / "assets" / "rirs").glob("*.flac")) and list((exp / "assets" / "noise").glob("*.flac"))

    again = run_schedule(path, exp_dir=exp)  # finished stages are skipped
    assert all(s.skipped for s in again.stages)
    assert again.stages[1].results == result.stages[1].results


def _augmentation_by_copy(batches):
    """``{cut id with its _rep<k> copy index: its augmentation suffixes}`` over one epoch's batches."""
    out = {}
    for _, _, cuts in batches:
        for cut in cuts:
            if cut.supervisions[0].custom["mix_source"] != "medication_synth":
                continue
            parts = cut.id.split("_")
            copy = parts[0] + next(("_" + p for p in parts if p.startswith("rep")), "_rep0")
            out[copy] = tuple(sorted(p for p in parts[1:] if not p.startswith("rep")))
    return out


def test_two_epochs_of_an_augmented_stage_see_different_augmentations(tmp_path, corpus):
    """Through the trainer's own sampler path (make_sampler + EpochBatches): each epoch draws fresh
    speed/noise/room per cut copy, and replaying an epoch (a resume) draws exactly the same."""
    from synthasr.data.dataset import EpochBatches, make_sampler
    from synthasr.train.schedule import _stage_cuts

    data = _schedule(corpus)
    data["stages"][1]["num_cuts"] = 400  # 200 synthetic slots: each of the 8 cuts 25 times per epoch
    plan = validate_schedule(_write(tmp_path, data), exp_dir=tmp_path / "exp")
    stage = plan.cfg.stages[1]
    cuts = _stage_cuts(plan, stage, seed=3)
    sampler = make_sampler(cuts, max_duration=6.0, shuffle=True, seed=3, bucketing=False)
    epoch1, epoch2 = (_augmentation_by_copy(EpochBatches(sampler, e)) for e in (1, 2))
    assert _augmentation_by_copy(EpochBatches(sampler, 1)) == epoch1
    common = sorted(set(epoch1) & set(epoch2))
    assert len(common) == 200
    same = sum(epoch1[c] == epoch2[c] for c in common)
    # Independent draws: P(same) = P(same speed of 2) * P(same noise on/off) * P(same reverb on/off).
    p = 0.5 * (0.5**2 + 0.5**2) * (0.5**2 + 0.5**2)
    n = len(common)
    assert abs(same - n * p) <= 5 * (n * p * (1 - p)) ** 0.5, (same, n * p)  # one shared draw: same == n


def test_fisher_cache_is_keyed_by_content_not_file_name(tmp_path, corpus, monkeypatch):
    """Retraining the init stage rewrites final.pt under the same name: its Fisher must be recomputed."""
    import synthasr.train.schedule as schedule
    from synthasr.model import build_model

    plan = validate_schedule(_write(tmp_path, _schedule(corpus)), exp_dir=tmp_path / "exp")
    stage = plan.cfg.stages[1]
    ckpt = tmp_path / "exp" / "general" / "final.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights of the first training")
    model = build_model(dataclasses.replace(plan.train_cfgs["adapt"].model, vocab_size=plan.tokenizer.vocab_size))
    computed = []

    def fake_compute(plan, reg, model, train_cfg, local_rank=0):
        computed.append(reg.fisher_seed)
        return {"w": torch.full((2,), float(len(computed)))}

    monkeypatch.setattr(schedule, "_compute_fisher", fake_compute)

    def fisher():
        return schedule._stage_fisher(plan, stage, 1, model, ckpt, plan.train_cfgs["adapt"], 0)["w"][0].item()

    assert fisher() == 1.0 and fisher() == 1.0 and len(computed) == 1  # cached
    ckpt.write_bytes(b"weights of a retrained stage")  # same file name, new content
    assert fisher() == 2.0 and len(computed) == 2
    stage.regularization.fisher_seed = 1  # another sample
    assert fisher() == 3.0 and computed == [0, 0, 1]
    assert [p.name for p in ckpt.parent.glob("*fisher*")] == ["fisher.pt"]


def test_fisher_sample_is_a_seeded_shuffle_of_the_source(tmp_path, corpus):
    from synthasr.data.dataset import sample_loader
    from synthasr.data.features import FeatureConfig

    cuts = CutSet.from_file(corpus["general"])

    def ids(seed):
        return [i for b in sample_loader(cuts, FeatureConfig(), max_duration=3.0, seed=seed) for i in b["cut_ids"]]

    assert sorted(ids(0)) == sorted(c.id for c in cuts)
    assert ids(0) == ids(0) and ids(0) != ids(1)
    assert ids(0) != [c.id for c in cuts]
