"""The torchrun schedule (conf/schedule/gpu_ddp.yaml) loads strictly and is the one-GPU schedule scaled by its
world size: same stages, model and data, steps divided by 8 (each step sees 8 ranks' batches)."""
from __future__ import annotations

from pathlib import Path

import pytest

from synthasr.train.schedule import _stage_train_config, load_schedule

CONF = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "conf" / "schedule"


def test_ddp_schedule_is_the_gpu_schedule_over_eight_ranks():
    ddp, one = load_schedule(CONF / "gpu_ddp.yaml"), load_schedule(CONF / "gpu.yaml")
    one_stages = {s.name: s for s in one.stages}
    assert ddp.base.sources == one.base.sources and ddp.base.eval_sets == one.base.eval_sets
    for i, stage in enumerate(ddp.stages):
        ref = one_stages[stage.name]
        cfg = _stage_train_config(ddp.base.train, stage, CONF / "gpu_ddp.yaml", f"stages[{i}]")
        ref_cfg = _stage_train_config(one.base.train, ref, CONF / "gpu.yaml", f"stages[{i}]")
        assert cfg.model == ref_cfg.model and cfg.data.max_duration == ref_cfg.data.max_duration
        assert stage.data == ref.data and stage.init == ref.init and stage.regularization == ref.regularization
        assert cfg.max_steps * 8 == pytest.approx(ref_cfg.max_steps, rel=0.01)
        assert cfg.device == "cuda"
