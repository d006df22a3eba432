"""TrainConfig loading: unknown keys and wrong types are rejected naming the key; CLI overrides."""
from __future__ import annotations

import pytest

from synthasr.config import ConfigError, load_config
from synthasr.train.config import TrainConfig


def _write(tmp_path, text: str):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_valid_yaml_fills_nested_sections(tmp_path):
    path = _write(tmp_path, "seed: 3\nmodel: {preset: tiny}\noptim: {lr: 0.002, schedule: noam}\n"
                            "data: {max_duration: 50, spec_augment: {enabled: false}}\nmax_steps: 10\n")
    cfg = load_config(TrainConfig, path)
    assert cfg.seed == 3 and cfg.model.preset == "tiny"
    assert cfg.optim.lr == 0.002 and cfg.optim.schedule == "noam"
    assert cfg.data.max_duration == 50.0 and cfg.data.spec_augment.enabled is False
    assert cfg.max_steps == 10 and cfg.loss.kind == "pruned"


@pytest.mark.parametrize(
    "text, key",
    [
        ("optim: {lrr: 0.1}\n", "optim.lrr"),
        ("data: {spec_augment: {num_masks: 2}}\n", "data.spec_augment.num_masks"),
        ("epochs: 3\n", "epochs"),
    ],
)
def test_unknown_key_is_named(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, _write(tmp_path, text))
    msg = str(e.value)
    assert key in msg and "train.yaml" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "text, key",
    [
        ("data: {max_duration: big}\n", "data.max_duration"),
        ("num_epochs: 2.5\n", "num_epochs"),
        ("amp: float8\n", "amp"),
        ("data: {shuffle: 'yes'}\n", "data.shuffle"),
        ("optim: {betas: [0.9, x]}\n", "optim.betas"),
    ],
)
def test_wrong_type_is_named(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, _write(tmp_path, text))
    assert key in str(e.value)


def test_semantic_validation_names_key(tmp_path):
    with pytest.raises(ConfigError, match="optim.*lr"):
        load_config(TrainConfig, _write(tmp_path, "optim: {lr: -1.0}\n"))
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(TrainConfig, _write(tmp_path, "max_steps: 0\n"))


def test_cli_overrides_are_parsed_as_yaml():
    from synthasr.cli.train import parse_overrides

    parsed = parse_overrides(["optim.lr=1e-3", "data.shuffle=false", "model.preset=tiny", "max_steps=5"])
    assert parsed == {"optim.lr": 0.001, "data.shuffle": False, "model.preset": "tiny", "max_steps": 5}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["optim.lr"])


def test_cli_train_reports_bad_key_in_one_line(tmp_path):
    from click.testing import CliRunner

    from synthasr.cli.train import train

    path = _write(tmp_path, "optim: {lrr: 0.1}\n")
    result = CliRunner().invoke(train, ["--config", str(path)])
    assert result.exit_code == 1
    assert "optim.lrr" in result.output and result.output.strip().count("\n") == 0


def test_cli_train_requires_paths(tmp_path):
    from click.testing import CliRunner

    from synthasr.cli.train import train

    path = _write(tmp_path, "seed: 1\n")
    result = CliRunner().invoke(train, ["--config", str(path)])
    assert result.exit_code == 1 and "train_cuts is required" in result.output
    result = CliRunner().invoke(train, [])
    assert result.exit_code == 2 and "exactly one of --config or --schedule" in result.output
