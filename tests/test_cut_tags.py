"""Cut tags (engine, voice, ...): selection for leave-one-engine-out sources, and per-tag scoring
(``evaluate --breakdown engine``, a schedule eval set's ``breakdown:``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lhotse import CutSet, SupervisionSegment
from lhotse.cut import MonoCut
from lhotse.utils import fastcopy

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import make_tone_cuts  # noqa: E402

from synthasr.data.tags import TagError, cut_tag, select_cuts, tag_values  # noqa: E402
from synthasr.score import ScoreError, TermList, add_breakdown, compute_wer, write_results  # noqa: E402


def _cut(cut_id, engine=None, cut_custom=None):
    sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=1.0, text="a",
                             custom={"engine": engine, "voice": f"{engine}:v"} if engine else None)
    return MonoCut(id=cut_id, start=0.0, duration=1.0, channel=0, supervisions=[sup], custom=cut_custom)


def test_select_cuts_by_one_value_or_a_list_keeps_order():
    cuts = CutSet.from_cuts(_cut(f"c{i}", e) for i, e in enumerate(["espeak", "piper", "espeak", "coqui"]))
    assert [c.id for c in select_cuts(cuts, {"engine": "espeak"})] == ["c0", "c2"]
    assert [c.id for c in select_cuts(cuts, {"engine": ["piper", "coqui"]})] == ["c1", "c3"]
    assert [c.id for c in select_cuts(cuts, {"engine": "espeak", "voice": "espeak:v"})] == ["c0", "c2"]
    assert len(select_cuts(cuts, {"engine": "festival"})) == 0
    assert tag_values(cuts, "engine") == {"c0": "espeak", "c1": "piper", "c2": "espeak", "c3": "coqui"}
    assert cut_tag(_cut("x", "piper", cut_custom={"engine": "espeak"}), "engine") == "espeak"  # the cut's own wins
    with pytest.raises(TagError, match=r"cut 'z' has no 'engine'"):
        select_cuts(CutSet.from_cuts([_cut("z")]), {"engine": "espeak"})


TERMS = TermList.from_terms([("aspirin", "seen"), ("metformin", "unseen")])
PAIRS = [  # (utt, ref, hyp): espeak gets both names right, piper misses metformin and mangles a word
    ("e1", "take aspirin daily", "take aspirin daily"),
    ("e2", "metformin at night", "metformin at night"),
    ("p1", "take aspirin daily", "take aspirin today"),
    ("p2", "metformin at night", "met forming at night"),
    ("m-0", "one more", "one"),  # a cut with several supervisions: <cut>-<k> takes its cut's tag
]
GROUP_OF = {"e1": "espeak", "e2": "espeak", "p1": "piper", "p2": "piper", "m": "piper"}


def test_breakdown_partitions_errors_and_term_counts():
    result = add_breakdown(compute_wer(PAIRS, terms=TERMS), PAIRS, GROUP_OF, "engine", terms=TERMS)
    assert set(result.breakdown) == {"espeak", "piper"}
    esp, pip = result.breakdown["espeak"], result.breakdown["piper"]
    assert (esp.word.errors, esp.word.ref_words, esp.wer) == (0, 6, 0.0)
    assert (pip.word.errors, pip.word.ref_words) == (1 + 2 + 1, 8)
    assert esp.word.errors + pip.word.errors == result.word.errors  # a partition: nothing lost or doubled
    assert len(esp.utts) + len(pip.utts) == len(result.utts)
    assert esp.terms.total.recall == 100.0 and pip.terms.total.recall == 50.0
    assert pip.terms.groups["unseen"].recall == 0.0 and pip.terms.groups["seen"].recall == 100.0
    summary = result.to_dict()["breakdown"]
    assert summary["field"] == "engine" and summary["groups"]["piper"]["num_utts"] == 3
    assert summary["groups"]["piper"]["terms"]["groups"]["unseen"]["recall"] == 0.0


def test_breakdown_needs_a_value_for_every_utterance():
    with pytest.raises(ScoreError, match=r"utterance 'p2' has no 'engine' value"):
        add_breakdown(compute_wer(PAIRS), PAIRS, {k: v for k, v in GROUP_OF.items() if k != "p2"}, "engine")


def test_write_results_writes_the_per_tag_table(tmp_path):
    result = add_breakdown(compute_wer(PAIRS, terms=TERMS), PAIRS, GROUP_OF, "engine", terms=TERMS)
    paths = write_results(tmp_path, "med_test", "greedy_search", result)
    rows = [line.split("\t") for line in paths["breakdown"].read_text().splitlines()]
    assert paths["breakdown"].name == "wer-by-engine-med_test-greedy_search.txt"
    assert rows[0][:2] == ["engine", "WER"]
    assert rows[1][:3] == ["espeak", "0.00", "2"] and rows[2][:3] == ["piper", "50.00", "3"]
    assert rows[2][4] == "50.00"  # term recall
    doc = json.loads(paths["json"].read_text())
    assert doc["breakdown"]["groups"]["espeak"]["wer"] == 0.0
    plain = write_results(tmp_path, "x", "greedy_search", compute_wer(PAIRS))
    assert "breakdown" not in plain  # only when asked


# --------------------------------------------------------------------------------------------- #
# Schedule: a filtered (leave-one-engine-out) source and per-engine eval sets
# --------------------------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    from synthasr.data.features import compute_fbank

    root = tmp_path_factory.mktemp("tagged")
    cuts = compute_fbank(make_tone_cuts(root / "audio", n=8, seed=3), root / "fbank", "tones")
    engines = ["espeak", "piper"] * 4

    def tag(cut, engine):
        sups = [fastcopy(s, custom={**(s.custom or {}), "engine": engine}) for s in cut.supervisions]
        return fastcopy(cut, supervisions=sups)

    cuts = CutSet.from_cuts(tag(c, e) for c, e in zip(cuts, engines))
    from synthasr.tokenizer import train_bpe

    bpe = train_bpe([c.supervisions[0].text for c in cuts], root / "bpe", vocab_size=20, hard_vocab_limit=False)
    cuts.subset(first=4).to_file(root / "gen.jsonl.gz")
    cuts.subset(last=4).to_file(root / "med.jsonl.gz")
    return {"bpe": str(bpe), "gen": str(root / "gen.jsonl.gz"), "med": str(root / "med.jsonl.gz")}


def _schedule(c, where=None, breakdown="engine"):
    return {
        "base": {
            "bpe_model": c["bpe"],
            "train": {"model": {"preset": "tiny"}, "device": "cpu", "progress_bar": False, "valid_wer": False,
                      "checkpoint_every_n_steps": 0, "optim": {"warmup_steps": 0, "lr": 0.005},
                      "data": {"max_duration": 4.0, "bucketing": False, "spec_augment": {"enabled": False}}},
            "sources": {"general": [c["gen"]], "med": [c["med"]],
                        "med_espeak": {"cuts": [c["med"]], "where": where or {"engine": "espeak"}}},
            "eval_sets": {"test": {"cuts": c["med"], "breakdown": breakdown}},
        },
        "stages": [{"name": "base", "init": "scratch", "data": {"general": 1.0}, "max_steps": 1, "eval": []},
                   {"name": "loeo", "init": "previous", "data": {"general": 0.5, "med_espeak": 0.5}, "max_steps": 2,
                    "encoder_cache": True, "freeze": {"patterns": ["encoder"], "eval_mode": True}, "eval": ["test"]}],
    }


def test_filtered_source_reuses_the_unfiltered_cache_and_eval_is_broken_down(tagged, tmp_path):
    from synthasr.train.schedule import run_schedule

    torch.set_num_threads(1)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_schedule(tagged)))
    result = run_schedule(path, exp_dir=tmp_path / "exp")
    caches = sorted(p.parts[-3] for p in (tmp_path / "exp" / "encoder_cache").glob("*/*/cuts.jsonl.gz"))
    assert caches == ["general", "med"]  # med_espeak is a filter over med's cache, not a second cache
    counts = torch.load(result.stages[1].checkpoint, map_location="cpu", weights_only=False)["meta"]["source_counts"]
    assert set(counts) == {"general", "med_espeak"}
    test = result.stages[1].results["test"]
    groups = test["breakdown"]["groups"]
    assert test["breakdown"]["field"] == "engine" and set(groups) == {"espeak", "piper"}
    assert sum(g["num_utts"] for g in groups.values()) == test["num_utts"]
    assert sum(g["errors"] for g in groups.values()) == test["errors"]
    assert list((tmp_path / "exp" / "loeo" / "decode").glob("wer-by-engine-test-*.txt"))


@pytest.mark.parametrize("where,breakdown,message", [
    ({"engine": "festival"}, "engine", r"base\.sources\.med_espeak\.where: no cut of .* matches \{'engine': 'festival'\}"),
    ({"accent": "scottish"}, "engine", r"base\.sources\.med_espeak\.where: cut '.*' has no 'accent'"),
    (None, "accent", r"base\.eval_sets\.test\.breakdown: cut '.*' has no 'accent'"),
])
def test_bad_filters_and_breakdowns_are_one_line_errors(tagged, tmp_path, where, breakdown, message):
    from synthasr.train.schedule import ScheduleError, validate_schedule

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_schedule(tagged, where=where, breakdown=breakdown)))
    with pytest.raises(ScheduleError, match=message) as err:
        validate_schedule(path, exp_dir=tmp_path / "exp")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_select_cuts_on_a_lazy_cutset_stays_lazy(tmp_path):
    cuts = CutSet.from_cuts(_cut(f"c{i}", e) for i, e in enumerate(["espeak", "piper", "espeak"]))
    cuts.to_file(tmp_path / "c.jsonl.gz")
    lazy = CutSet.from_jsonl_lazy(tmp_path / "c.jsonl.gz")
    chosen = select_cuts(lazy, {"engine": "espeak"})
    assert chosen.is_lazy  # never materialised (a Shar source would read all its audio)
    assert [c.id for c in chosen] == ["c0", "c2"]
    import pickle

    assert [c.id for c in pickle.loads(pickle.dumps(chosen))] == ["c0", "c2"]  # DataLoader workers
