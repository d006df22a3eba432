"""The checkpoint format's guards: anything that is not a checkpoint, non-finite weights, and a config
that disagrees with its weights are refused with one line naming the file, before any allocation."""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import train_tokenizer  # noqa: E402

from synthasr.checkpoint import CheckpointError, checkpoint_is_loadable, load_checkpoint, save_checkpoint  # noqa: E402
from synthasr.config import ConfigError, to_dict  # noqa: E402


def _tiny_state():
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3)}


def _good(path: Path) -> Path:
    return save_checkpoint(path, _tiny_state(), {"preset": "tiny", "vocab_size": 9})


def _wav(path: Path) -> None:
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000, format="WAV")


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    _good(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")


class Payload:
    """Unpickling an arbitrary object could run code."""


def _pickle_payload(path: Path) -> None:
    torch.save({"format": "synthasr-checkpoint", "version": 1, "model": {}, "model_config": {}, "meta": Payload()},
               path)


def _nan_weights(path: Path) -> None:
    torch.save({"format": "synthasr-checkpoint", "version": 1, "model": {"w": torch.tensor([1.0, float("nan")])},
                "model_config": {}}, path)


def _not_a_mapping(path: Path) -> None:
    torch.save({"format": "synthasr-checkpoint", "version": 1, "model": [torch.zeros(1)], "model_config": {}}, path)


@pytest.mark.parametrize("make, why", [
    (_wav, "a WAV file"),
    (_random_bytes, "not a torch archive"),
    (_empty, "an empty file"),
    (_truncated, "corrupt or unreadable"),
    (_foreign_zip, "corrupt or unreadable"),
    (_pickle_payload, "non-tensor Python objects"),
    (_nan_weights, r"weights are not finite \(w has NaN/Inf\)"),
    (_not_a_mapping, "lacks 'model'"),
])
def test_anything_but_a_good_checkpoint_is_one_line_naming_the_file(tmp_path, make, why):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(CheckpointError, match=why) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "weights_only" not in msg and "\x1b" not in msg  # never torch's advice to load unsafely
    assert not checkpoint_is_loadable(path)


def test_good_checkpoint_loads_and_is_loadable(tmp_path):
    path = _good(tmp_path / "ok.pt")
    assert checkpoint_is_loadable(path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], _tiny_state()["w"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path, bad):
    path = _good(tmp_path / "checkpoint-4.pt")
    before = path.read_bytes()
    state = _tiny_state()
    state["w"][1, 2] = bad
    with pytest.raises(CheckpointError, match=r"refusing to save non-finite weights \(w has NaN/Inf\); nothing written") as e:
        save_checkpoint(path, state, {"preset": "tiny", "vocab_size": 9})
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert path.read_bytes() == before  # the good checkpoint is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4.pt"]  # no temp file left


# ----------------------------------------------------------------------------- sizes and shapes


def test_absurd_model_sizes_are_refused_before_building():
    from synthasr.model import ModelConfig, build_model

    with pytest.raises(ConfigError, match="encoder_dim: 10000000 is implausibly large"):
        build_model({"preset": "tiny", "encoder_dim": 10_000_000, "num_heads": 2, "vocab_size": 9})
    with pytest.raises(ConfigError, match="vocab_size"):
        ModelConfig(preset="tiny", vocab_size=10**9).resolved()


@pytest.fixture(scope="module")
def tiny_bundle_parts(tmp_path_factory):
    from synthasr.model import build_model

    root = tmp_path_factory.mktemp("ckpt")
    tok = train_tokenizer(["alpha bravo charlie delta"] * 20, root / "bpe", vocab_size=30)
    torch.manual_seed(0)
    model = build_model({"preset": "tiny", "vocab_size": tok.vocab_size})
    return model, tok


def test_bundle_with_huge_encoder_dim_in_its_config_is_one_line(tiny_bundle_parts, tmp_path):
    from synthasr.decode.bundle import ASRBundle

    model, tok = tiny_bundle_parts
    cfg = dict(to_dict(model.config), encoder_dim=10_000_000, subsampling_channels=None)
    path = save_checkpoint(tmp_path / "huge.pt", model.state_dict(), cfg, {}, tok.to_bytes())
    with pytest.raises(CheckpointError, match="encoder_dim: 10000000 is implausibly large") as e:
        ASRBundle.from_checkpoint(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_bundle_checks_weight_shapes_before_allocating_the_model(tiny_bundle_parts, tmp_path, monkeypatch):
    import synthasr.model
    from synthasr.decode.bundle import ASRBundle

    model, tok = tiny_bundle_parts
    built_on = []
    real_build = synthasr.model.build_model

    def spy(cfg):
        built = real_build(cfg)
        built_on.append(next(built.parameters()).device.type)
        return built

    monkeypatch.setattr(synthasr.model, "build_model", spy)
    cfg = dict(to_dict(model.config), encoder_dim=2048, ff_dim=8192, subsampling_channels=None)  # ~0.5 GB if built
    path = save_checkpoint(tmp_path / "wide.pt", model.state_dict(), cfg, {}, tok.to_bytes())
    with pytest.raises(CheckpointError, match="weights do not match model_config"):
        ASRBundle.from_checkpoint(path)
    assert built_on == ["meta"]
    good = save_checkpoint(tmp_path / "good.pt", model.state_dict(), to_dict(model.config), {}, tok.to_bytes())
    built_on.clear()
    bundle = ASRBundle.from_checkpoint(good)
    assert built_on == ["meta", "cpu"] and isinstance(bundle.transcribe(np.zeros(8000, np.float32), 16000), str)


def test_bundle_refuses_non_finite_weights(tiny_bundle_parts, tmp_path):
    from synthasr.decode.bundle import ASRBundle

    model, tok = tiny_bundle_parts
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first_float = next(k for k, v in state.items() if v.is_floating_point())
    state[first_float].view(-1)[0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"format": "synthasr-checkpoint", "version": 1, "model": state, "model_config": to_dict(model.config),
                "feature_config": {}, "tokenizer": torch.frombuffer(bytearray(tok.to_bytes()), dtype=torch.uint8)},
               path)
    with pytest.raises(CheckpointError, match="weights are not finite"):
        ASRBundle.from_checkpoint(path)
