"""Tests for recipes/medication/local/split_cuts.py (per-engine and leave-one-engine-out splits)."""
import importlib.util
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

_SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "medication" / "local" / "split_cuts.py"
_spec = importlib.util.spec_from_file_location("split_cuts", _SCRIPT)
S = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("split_cuts", S)
_spec.loader.exec_module(S)


def make_cut(cut_id: str, engine=None, cut_custom=None, extra_engine=None):
    from lhotse import SupervisionSegment
    from lhotse.cut import MonoCut

    sups = [SupervisionSegment(id=f"{cut_id}-a", recording_id=cut_id, start=0.0, duration=1.0, text="a",
                               custom={"engine": engine} if engine else None)]
    if extra_engine:
        sups.append(SupervisionSegment(id=f"{cut_id}-b", recording_id=cut_id, start=0.0, duration=1.0, text="b",
                                       custom={"engine": extra_engine}))
    return MonoCut(id=cut_id, start=0.0, duration=1.0, channel=0, supervisions=sups, custom=cut_custom)


ENGINES = ["espeak", "piper", "espeak", "coqui", "piper", "espeak"]


def cutset():
    from lhotse import CutSet

    return CutSet.from_cuts(make_cut(f"c{i}", e) for i, e in enumerate(ENGINES))


def test_split_by_field_groups_in_first_appearance_order_and_keeps_cut_order():
    groups = S.split_by_field(cutset(), "engine")
    assert list(groups) == ["espeak", "piper", "coqui"]
    assert [c.id for c in groups["espeak"]] == ["c0", "c2", "c5"]
    assert [c.id for c in groups["piper"]] == ["c1", "c4"]
    assert [c.id for c in S.leave_one_out(groups, "piper")] == ["c0", "c2", "c5", "c3"]


def test_cut_custom_wins_and_disagreeing_or_missing_fields_are_errors():
    assert S.cut_field(make_cut("x", engine="piper", cut_custom={"engine": "espeak"}), "engine") == "espeak"
    with pytest.raises(S.SplitError, match=r"'y'.*disagree.*\['espeak', 'piper'\]"):
        S.cut_field(make_cut("y", engine="espeak", extra_engine="piper"), "engine")
    with pytest.raises(S.SplitError, match=r"cut 'z' has no 'engine'"):
        S.cut_field(make_cut("z"), "engine")
    with pytest.raises(S.SplitError, match="no cut has the value 'festival'"):
        S.leave_one_out(S.split_by_field(cutset(), "engine"), "festival")


def test_cli_writes_one_manifest_per_engine_plus_leave_one_out(tmp_path: Path):
    from lhotse import CutSet

    cutset().to_file(tmp_path / "in.jsonl.gz")
    result = CliRunner().invoke(S.main, ["--cuts", str(tmp_path / "in.jsonl.gz"), "--out-dir", str(tmp_path / "out"),
                                         "--prefix", "med_test", "--leave-out", "piper"])
    assert result.exit_code == 0, result.output
    read = lambda name: CutSet.from_file(tmp_path / "out" / name).ids  # noqa: E731
    assert list(read("med_test_engine-espeak_cuts.jsonl.gz")) == ["c0", "c2", "c5"]
    assert list(read("med_test_engine-coqui_cuts.jsonl.gz")) == ["c3"]
    assert list(read("med_test_engine-not-piper_cuts.jsonl.gz")) == ["c0", "c2", "c5", "c3"]


def test_cli_missing_field_is_one_line_error_naming_manifest_and_cut(tmp_path: Path):
    from lhotse import CutSet

    CutSet.from_cuts([make_cut("ok", "espeak"), make_cut("bad")]).to_file(tmp_path / "in.jsonl.gz")
    result = CliRunner().invoke(S.main, ["--cuts", str(tmp_path / "in.jsonl.gz"), "--out-dir", str(tmp_path / "out"),
                                         "--prefix", "p"])
    assert result.exit_code == 1
    assert "in.jsonl.gz" in result.output and "'bad'" in result.output
    assert result.output.strip().count("\n") == 0
    assert not (tmp_path / "out" / "p_engine-espeak_cuts.jsonl.gz").exists()  # nothing half-written
