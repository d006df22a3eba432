"""Checkpoint averaging: elementwise mean, icefall epoch selection, pretrained-style output."""
from __future__ import annotations

import pytest
import torch

from synthasr.checkpoint import load_checkpoint, save_checkpoint, tokenizer_proto
from synthasr.train.average import AverageError, average_checkpoints, average_state_dicts, find_checkpoints


def _state(seed: int, steps: int):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b": torch.randn(4, generator=g).to(torch.float16),
        "bn.num_batches_tracked": torch.tensor(steps),
    }


def _save(path, state, epoch):
    save_checkpoint(path, state, {"preset": "tiny", "vocab_size": 9}, {"num_mel_bins": 80}, b"proto",
                    train_state={"step": epoch}, meta={"epoch": epoch})


def test_average_of_two_is_elementwise_mean_and_ints_from_last(tmp_path):
    a, b = _state(0, 10), _state(1, 20)
    _save(tmp_path / "epoch-1.pt", a, 1)
    _save(tmp_path / "epoch-2.pt", b, 2)
    avg = average_checkpoints([tmp_path / "epoch-1.pt", tmp_path / "epoch-2.pt"])
    assert torch.allclose(avg["w"], (a["w"] + b["w"]) / 2, atol=1e-7)
    assert avg["b"].dtype == torch.float16
    assert torch.allclose(avg["b"].float(), ((a["b"].double() + b["b"].double()) / 2).half().float())
    assert avg["bn.num_batches_tracked"].item() == 20


def test_average_rejects_mismatched_checkpoints():
    a, b = _state(0, 1), _state(1, 1)
    b["w"] = torch.zeros(2, 2)
    with pytest.raises(AverageError, match="w has shape"):
        average_state_dicts([a, b], ["x.pt", "y.pt"])
    c = dict(_state(2, 1))
    c["extra"] = torch.zeros(1)
    with pytest.raises(AverageError, match="parameter names differ"):
        average_state_dicts([a, c], ["x.pt", "z.pt"])


def test_find_checkpoints_icefall_convention(tmp_path):
    for e in (1, 2, 3, 4):
        _save(tmp_path / f"epoch-{e}.pt", _state(e, e), e)
    assert [p.name for p in find_checkpoints(tmp_path, 4, 3)] == ["epoch-2.pt", "epoch-3.pt", "epoch-4.pt"]
    assert [p.name for p in find_checkpoints(tmp_path, 2, 1)] == ["epoch-2.pt"]
    with pytest.raises(AverageError, match="epoch-5.pt"):
        find_checkpoints(tmp_path, 5, 2)
    with pytest.raises(AverageError, match="epochs start at 1"):
        find_checkpoints(tmp_path, 2, 3)


def test_average_cli_writes_pretrained_without_train_state(tmp_path):
    from click.testing import CliRunner

    from synthasr.cli.train import average

    states = [_state(e, e) for e in (1, 2, 3)]
    for e, s in zip((1, 2, 3), states):
        _save(tmp_path / f"epoch-{e}.pt", s, e)
    out = tmp_path / "pretrained.pt"
    result = CliRunner().invoke(average, ["--exp-dir", str(tmp_path), "--epoch", "3", "--avg", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert "train_state" not in ckpt
    assert torch.allclose(ckpt["model"]["w"], (states[1]["w"] + states[2]["w"]) / 2, atol=1e-7)
    assert ckpt["model_config"]["vocab_size"] == 9 and tokenizer_proto(ckpt) == b"proto"
    assert ckpt["meta"]["averaged_from"] == ["epoch-2.pt", "epoch-3.pt"]
    missing = CliRunner().invoke(average, ["--exp-dir", str(tmp_path), "--epoch", "5", "--avg", "1"])
    assert missing.exit_code == 1 and "epoch-5.pt" in missing.output


def test_find_step_checkpoints_icefall_iter_convention(tmp_path):
    from synthasr.train.average import find_step_checkpoints

    for step in (100, 200, 300, 400):
        _save(tmp_path / f"checkpoint-{step}.pt", _state(step, step), step)
    (tmp_path / "checkpoint-latest.pt").write_bytes(b"")  # not a step file: ignored
    assert [p.name for p in find_step_checkpoints(tmp_path, 300, 2)] == ["checkpoint-200.pt", "checkpoint-300.pt"]
    assert [p.name for p in find_step_checkpoints(tmp_path, 400, 1)] == ["checkpoint-400.pt"]
    with pytest.raises(AverageError, match=r"checkpoint-250\.pt: checkpoint not found \(needed for --iter 250"):
        find_step_checkpoints(tmp_path, 250, 2)
    with pytest.raises(AverageError, match=r"needs 4 checkpoint-STEP\.pt with STEP <= 300, found 3"):
        find_step_checkpoints(tmp_path, 300, 4)


def test_average_cli_iter_averages_step_checkpoints(tmp_path):
    from click.testing import CliRunner

    from synthasr.cli.train import average

    states = {step: _state(step, step) for step in (100, 200, 300)}
    for step, s in states.items():
        _save(tmp_path / f"checkpoint-{step}.pt", s, step)
    result = CliRunner().invoke(average, ["--exp-dir", str(tmp_path), "--iter", "300", "--avg", "2"])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "pretrained-iter-300-avg-2.pt")
    assert torch.allclose(ckpt["model"]["w"], (states[200]["w"] + states[300]["w"]) / 2, atol=1e-7)
    assert ckpt["meta"]["averaged_from"] == ["checkpoint-200.pt", "checkpoint-300.pt"]
    both = CliRunner().invoke(average, ["--exp-dir", str(tmp_path), "--iter", "300", "--epoch", "1"])
    assert both.exit_code == 2 and "exactly one of --epoch or --iter" in both.output
    short = CliRunner().invoke(average, ["--exp-dir", str(tmp_path), "--iter", "300", "--avg", "5"])
    assert short.exit_code == 1 and "found 3" in short.output and short.output.strip().count("\n") == 0


def test_weighted_average_of_two_models_interpolates(tmp_path):
    """--model A --model B --weight wa --weight wb: every float weight is (wa*A + wb*B)/(wa+wb);
    bad weights are one clear error."""
    from click.testing import CliRunner

    from synthasr.checkpoint import load_checkpoint, save_checkpoint
    from synthasr.cli import cli
    from synthasr.config import to_dict
    from synthasr.model import build_model

    paths = []
    for seed, name in ((0, "base"), (1, "adapted")):
        torch.manual_seed(seed)
        model = build_model({"preset": "tiny", "vocab_size": 20})
        (tmp_path / name).mkdir()
        paths.append(save_checkpoint(tmp_path / name / "final.pt", model.state_dict(), to_dict(model.config),
                                     {"num_mel_bins": 80}, b"tok"))
    result = CliRunner().invoke(cli, ["average", "--model", str(paths[0]), "--model", str(paths[1]),
                                      "--weight", "1", "--weight", "3", "--out", str(tmp_path / "mix.pt")])
    assert result.exit_code == 0, result.output
    a, b, mix = (load_checkpoint(p)["model"] for p in (*paths, tmp_path / "mix.pt"))
    for key, value in mix.items():
        if torch.is_floating_point(value):
            assert torch.allclose(value, 0.25 * a[key] + 0.75 * b[key], atol=1e-6), key
    assert load_checkpoint(tmp_path / "mix.pt")["meta"]["average_weights"] == [0.25, 0.75]
    for bad, message in ((["--weight", "1"], "1 weights for 2 checkpoints"),
                         (["--weight", "-1", "--weight", "2"], "weights must be >= 0")):
        result = CliRunner().invoke(cli, ["average", "--model", str(paths[0]), "--model", str(paths[1]), *bad,
                                          "--out", str(tmp_path / "bad.pt")])
        assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "bad.pt").exists()
