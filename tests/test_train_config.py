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


# ----------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize(
    "text, key",
    [
        ("optim: {lr: .inf}\n", "optim.lr"),
        ("optim: {lr: .nan}\n", "optim.lr"),
        ("optim: {max_grad_norm: .inf}\n", "optim.max_grad_norm"),
        ("optim: {betas: [0.9, .nan]}\n", "optim.betas[1]"),
        ("loss: {am_scale: .nan}\n", "loss.am_scale"),
        ("data: {max_duration: .inf}\n", "data.max_duration"),
        ("model: {dropout: .nan}\n", "model.dropout"),
    ],
)
def test_non_finite_values_are_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, _write(tmp_path, text))
    msg = str(e.value)
    assert f"train.yaml: {key}: must be a finite number" in msg and "\n" not in msg


def test_cli_override_lr_inf_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from synthasr.cli.train import train

    path = _write(tmp_path, "seed: 1\n")
    result = CliRunner().invoke(train, ["--config", str(path), "-o", "optim.lr=inf"])
    assert result.exit_code == 1, result.output
    assert "optim.lr: must be a finite number, got inf" in result.output
    assert result.output.strip().count("\n") == 0


def test_fit_refuses_a_non_finite_config_built_in_python(tmp_path):
    from synthasr.train.config import OptimConfig
    from synthasr.train.trainer import fit

    cfg = TrainConfig(optim=OptimConfig(lr=float("inf")))
    with pytest.raises(ConfigError, match=r"^optim\.lr: must be a finite number, got inf$"):
        fit(cfg, tmp_path / "exp", train_cuts=None, tokenizer=object())
    assert not (tmp_path / "exp").exists()


# ----------------------------------------------------------------------------- loss backend at startup


def test_fit_refuses_a_missing_loss_backend_before_any_work(tmp_path, monkeypatch):
    from synthasr.loss import LossConfig, backends
    from synthasr.train.trainer import TrainingError, fit

    monkeypatch.setattr(backends, "backend_module", lambda name: None)
    cfg = TrainConfig(loss=LossConfig(kind="full", backend="torchaudio"))
    with pytest.raises(TrainingError) as e:
        fit(cfg, tmp_path / "exp", train_cuts=None, tokenizer=object())
    msg = str(e.value)
    assert msg.startswith("loss.backend: RNN-T loss backend 'torchaudio' is not installed: `pip install torchaudio==")
    assert "\n" not in msg and not (tmp_path / "exp").exists()


def test_gpu_schedule_trains_with_torchaudio_full_loss_and_cpu_schedules_stay_pruned():
    from pathlib import Path

    from synthasr.config import from_dict, load_yaml

    conf = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "conf" / "schedule"
    expected = {"gpu": ("full", "torchaudio"), "default": ("pruned", "auto"), "smoke": ("pruned", "auto")}
    for name, (kind, backend) in expected.items():
        data = load_yaml(conf / f"{name}.yaml")
        cfg = from_dict(TrainConfig, data["base"]["train"], where=name)
        assert (cfg.loss.kind, cfg.loss.backend) == (kind, backend), name
        for stage in data["stages"]:  # no stage switches the loss back
            loss = stage.get("train", {}).get("loss", {})
            assert set(loss) <= {"warmup_steps"}, (name, stage["name"], loss)
