"""lhotse Shar end to end: tts-gen --shar-dir -> compute-fbank --shar-dir -> a schedule trains 5 steps
from the Shar source; shard order per epoch; resume; a missing shard is a one-line error naming it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner
from lhotse import CutSet

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import train_tokenizer  # noqa: E402

from synthasr.cli import cli  # noqa: E402
from synthasr.data.dataset import make_sampler, set_cuts_epoch  # noqa: E402
from synthasr.data.shar import SharError, SharStream, load_shar, shar_fields  # noqa: E402
from tts_gen.generate import write_cuts_shar  # noqa: E402

LINES = [f"take {n} tablets of aspirin with water" for n in ("one", "two", "three", "four", "five", "six",
                                                               "seven", "eight", "nine", "ten", "eleven")]
VOICES = "espeak:en-us+f3:r175:p50\nespeak:en-gb-scotland+m2:r160:p40\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tts-gen (local pool, Shar shards of 4) and compute-fbank into a second Shar directory, via the CLI."""
    root = tmp_path_factory.mktemp("shar")
    (root / "in.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    (root / "voices.txt").write_text(VOICES, encoding="utf-8")
    runner = CliRunner()
    res = runner.invoke(cli, ["tts-gen", str(root / "in.txt"), str(root / "out"), "--domain", "medication",
                              "--prefix", "med", "--voices-file", str(root / "voices.txt"), "--no-progress",
                              "--shar-dir", str(root / "audio_shar"), "--shar-shard-size", "4"])
    assert res.exit_code == 0, res.output
    assert "shar " in res.output and "11 cuts" in res.output
    res = runner.invoke(cli, ["compute-fbank", "--cuts", str(root / "audio_shar"), "--shar-dir", str(root / "fbank_shar")])
    assert res.exit_code == 0, res.output
    assert "11 cuts with 80-bin fbank in 3 shards (3 written" in res.output
    return root


def test_generated_shar_holds_the_manifest_cuts_and_exact_audio(built):
    fields = shar_fields(built / "audio_shar")
    assert [Path(p).name for p in fields["recording"]] == [f"recording.{k:06d}.tar" for k in range(3)]
    manifest = CutSet.from_file(built / "out" / "med_cuts.jsonl.gz")
    shar = list(load_shar(built / "audio_shar", shuffle_shards=False))
    assert [c.id for c in shar] == [c.id for c in manifest]  # input order, shards of 4, 4, 3
    for cut, ref in zip(shar, manifest):
        assert cut.supervisions[0].text == ref.supervisions[0].text
        flac, _ = sf.read(ref.recording.sources[0].source, dtype="float32")
        assert np.array_equal(cut.load_audio()[0], flac)  # FLAC in the tar: sample-exact
    assert not [p for p in built.iterdir() if p.name.startswith(".")]  # no temp directories left


def test_rerun_keeps_complete_shards_and_rewrites_a_torn_one(built, tmp_path):
    import shutil

    shar = tmp_path / "copy"
    shutil.copytree(built / "audio_shar", shar)
    again = write_cuts_shar(built / "out" / "med_cuts.jsonl.gz", shar, 4)
    assert (again["written"], again["skipped"]) == (0, 3)
    (shar / "cuts.000001.jsonl.gz").write_bytes(b"torn")
    again = write_cuts_shar(built / "out" / "med_cuts.jsonl.gz", shar, 4)
    assert (again["written"], again["skipped"]) == (1, 2)
    assert len(load_shar(shar)) == len(LINES)


def test_shard_order_is_a_function_of_the_epoch_even_under_wrappers(built):
    from lhotse.lazy import LazyMapper

    def ids(cuts):
        return [c.id for c in cuts]

    cuts = load_shar(built / "fbank_shar", seed=3)
    orders = []
    for epoch in range(4):
        cuts.data.set_epoch(epoch)
        orders.append(ids(cuts))
        assert sorted(orders[-1]) == sorted(ids(load_shar(built / "fbank_shar", shuffle_shards=False)))
    fresh = load_shar(built / "fbank_shar", seed=3)
    fresh.data.set_epoch(2)
    assert ids(fresh) == ids(fresh) == orders[2]  # re-iterating does not advance the epoch
    # the trainer's sampler reaches the Shar stream through lhotse maps (domain / source tagging)
    wrapped = CutSet(LazyMapper(CutSet(LazyMapper(fresh.data, fn=_identity)), fn=_identity))
    sampler = make_sampler(wrapped, max_duration=100.0, shuffle=False, seed=0, bucketing=False)
    set_cuts_epoch(sampler, 1)
    assert fresh.data.epoch == 1 and ids(wrapped) == orders[1]


def _identity(cut):
    return cut


def test_features_in_shar_match_the_directory_layout(built, tmp_path):
    from synthasr.data.features import compute_fbank

    shar = {c.id: c for c in load_shar(built / "fbank_shar", shuffle_shards=False)}
    assert all(c.has_features and not c.has_recording for c in shar.values())  # audio stays in its own Shar
    ref = compute_fbank(CutSet.from_file(built / "out" / "med_cuts.jsonl.gz"), tmp_path / "fb", "med")
    for cut in ref:
        np.testing.assert_allclose(shar[cut.id].load_features(), cut.load_features(), atol=0.04)  # lilcom grid


def test_schedule_trains_five_steps_from_a_shar_source(built, tmp_path):
    from synthasr.train.schedule import run_schedule

    tok = train_tokenizer(LINES, tmp_path / "bpe", vocab_size=30)
    schedule = {
        "base": {
            "bpe_model": str(tmp_path / "bpe" / "bpe.model"),
            "train": {"model": {"preset": "tiny"}, "device": "cpu", "progress_bar": False,
                      "checkpoint_every_n_steps": 0, "optim": {"warmup_steps": 0, "lr": 0.005},
                      "data": {"max_duration": 6.0, "spec_augment": {"enabled": False}, "num_buckets": 2}},
            "sources": {"synth": {"cuts": [str(built / "fbank_shar")], "domain": "medication"}},
            "eval_sets": {"med": str(built / "out" / "med_cuts.jsonl.gz")},
        },
        "stages": [{"name": "shar", "init": "scratch", "data": {"synth": 1.0}, "max_steps": 5, "eval": []}],
    }
    assert tok.vocab_size > 0 and (tmp_path / "bpe" / "bpe.model").is_file()
    path = tmp_path / "sched.yaml"
    path.write_text(yaml.safe_dump(schedule))
    result = run_schedule(path, exp_dir=tmp_path / "exp")
    ckpt = __import__("torch").load(result.stages[0].checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["meta"]["step"] == 5 and sum(ckpt["meta"]["source_counts"].values()) > 0


def test_missing_shard_is_one_line_naming_it(built, tmp_path):
    import shutil

    from synthasr.train.schedule import ScheduleError, validate_schedule

    broken = tmp_path / "broken"
    shutil.copytree(built / "audio_shar", broken)
    (broken / "recording.000001.tar").unlink()
    with pytest.raises(SharError) as err:
        load_shar(broken)
    assert "missing shard recording.000001.tar" in str(err.value) and "\n" not in str(err.value)
    res = CliRunner().invoke(cli, ["compute-fbank", "--cuts", str(broken), "--shar-dir", str(tmp_path / "fb")])
    assert res.exit_code == 1 and "missing shard recording.000001.tar" in res.output
    (broken / "cuts.000001.jsonl.gz").unlink()
    (broken / "recording.000002.tar").unlink()
    with pytest.raises(SharError, match=r"missing shard cuts\.000001\.jsonl\.gz"):
        load_shar(broken)
    train_tokenizer(LINES, tmp_path / "bpe", vocab_size=30)
    sched = tmp_path / "s.yaml"
    sched.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "e"), "base": {
        "bpe_model": str(tmp_path / "bpe" / "bpe.model"), "sources": {"synth": [str(broken)]}},
        "stages": [{"name": "a", "init": "scratch", "data": {"synth": 1.0}}]}))
    with pytest.raises(ScheduleError) as err:
        validate_schedule(sched)
    assert "base.sources.synth" in str(err.value) and "cuts.000001.jsonl.gz" in str(err.value)
    assert "\n" not in str(err.value)


def test_shar_stream_pickles_without_its_data(built):
    import pickle

    stream = load_shar(built / "fbank_shar").data
    assert isinstance(stream, SharStream)
    clone = pickle.loads(pickle.dumps(stream))
    assert json.dumps(clone.fields) == json.dumps(stream.fields) and len(clone) == len(LINES)


def test_sharded_runs_combine_into_shar_and_single_stage_training_reads_it(built, tmp_path):
    from synthasr.cli.train import _train_cuts
    from synthasr.config import ConfigError

    runner = CliRunner()
    args = [str(built / "in.txt"), str(tmp_path / "out"), "--domain", "medication", "--prefix", "med",
            "--voices-file", str(built / "voices.txt"), "--no-progress"]
    res = runner.invoke(cli, ["tts-gen", *args, "--shard", "1/2", "--shar-dir", str(tmp_path / "x")])
    assert res.exit_code == 1 and "combine the shards first" in res.output
    for k in (1, 2):
        assert runner.invoke(cli, ["tts-gen", *args, "--shard", f"{k}/2"]).exit_code == 0
    res = runner.invoke(cli, ["tts-combine", str(tmp_path / "out"), "--prefix", "med", "--shar-dir",
                              str(tmp_path / "shar"), "--shar-shard-size", "4"])
    assert res.exit_code == 0 and "11 cuts in 3 shards (3 written" in res.output, res.output
    lazy = _train_cuts(str(tmp_path / "shar"), "train.yaml")
    # (utterance ids: cut ids of combined shards differ from an unsharded run's, see tts_gen.combine_shards)
    utts = sorted(c.supervisions[0].id for c in load_shar(built / "audio_shar"))
    assert lazy.is_lazy and sorted(c.supervisions[0].id for c in lazy) == utts
    (tmp_path / "shar" / "cuts.000002.jsonl.gz").unlink()
    with pytest.raises(ConfigError, match=r"train.yaml: train_cuts: .*missing shard cuts\.000002\.jsonl\.gz"):
        _train_cuts(str(tmp_path / "shar"), "train.yaml")

