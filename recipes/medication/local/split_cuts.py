#!/usr/bin/env python3
"""Split a CutSet by a tag such as the TTS engine, for per-engine scoring and leave-one-engine-out runs.

Synthetic cuts carry ``engine`` (and ``voice``, ``domain``, ``source``) in their supervision's
``custom`` (written by ``tts_gen``); real-speech cuts carry ``source``/``domain`` on the cut too. The
value is read from the cut's ``custom`` first, then from its supervisions, which must agree.

    python local/split_cuts.py --cuts data/default/fbank/med_test_cuts_fbank.jsonl.gz \\
        --out-dir data/default/by_engine --prefix med_test [--field engine] [--leave-out piper]

writes ``<out-dir>/<prefix>_<field>-<value>_cuts.jsonl.gz`` for every value and, with ``--leave-out V``,
``<prefix>_<field>-not-<V>_cuts.jsonl.gz`` (everything else: the training side of a leave-one-out
split). Cut order is kept; files are written atomically; a cut without the field, or whose
supervisions disagree, is a one-line error naming the manifest and cut.
"""
from __future__ import annotations

import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional

import click

from synthasr.data.tags import TagError, cut_tag
from synthasr.utils.io import atomic_path, ensure_dir

SAFE_VALUE_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # values become file-name parts


class SplitError(ValueError):
    """A cut lacks the field, its supervisions disagree, or a value cannot name a file."""


def cut_field(cut, field: str) -> str:
    """The cut's ``field`` (:func:`synthasr.data.tags.cut_tag`), as a :class:`SplitError` when missing."""
    try:
        return cut_tag(cut, field)
    except TagError as e:
        raise SplitError(str(e)) from None


def split_by_field(cuts, field: str) -> "OrderedDict[str, List]":
    """``{value: [cuts]}`` in order of first appearance; cut order is kept within each value."""
    groups: "OrderedDict[str, List]" = OrderedDict()
    for cut in cuts:
        groups.setdefault(cut_field(cut, field), []).append(cut)
    return groups


def leave_one_out(groups: Dict[str, List], held_out: str) -> List:
    """Every cut whose value is not ``held_out`` (in group order); an unknown value is an error."""
    if held_out not in groups:
        raise SplitError(f"no cut has the value {held_out!r} (values: {', '.join(groups)})")
    return [cut for value, group in groups.items() if value != held_out for cut in group]


def write_splits(cuts, field: str, out_dir: Path, prefix: str, leave_out: Optional[str] = None) -> Dict[str, Path]:
    from lhotse import CutSet

    groups = split_by_field(cuts, field)
    for value in groups:
        if not SAFE_VALUE_RE.match(value):
            raise SplitError(f"{field} value {value!r} cannot be part of a file name")
    outputs = {value: (out_dir / f"{prefix}_{field}-{value}_cuts.jsonl.gz", group) for value, group in groups.items()}
    if leave_out is not None:
        outputs[f"not-{leave_out}"] = (out_dir / f"{prefix}_{field}-not-{leave_out}_cuts.jsonl.gz",
                                       leave_one_out(groups, leave_out))
    ensure_dir(out_dir)
    for path, group in outputs.values():
        with atomic_path(path) as tmp:
            CutSet.from_cuts(group).to_file(tmp)
    return {key: path for key, (path, _) in outputs.items()}


@click.command()
@click.option("--cuts", "cuts_path", required=True, type=click.Path(path_type=Path), help="Input cuts manifest.")
@click.option("--out-dir", required=True, type=click.Path(path_type=Path))
@click.option("--prefix", required=True, help="Output name prefix, e.g. med_test.")
@click.option("--field", default="engine", show_default=True, help="Custom field to split on.")
@click.option("--leave-out", default=None, help="Also write everything except this value.")
def main(cuts_path: Path, out_dir: Path, prefix: str, field: str, leave_out: Optional[str]) -> None:
    """Split a cuts manifest by a custom field (default: TTS engine)."""
    from lhotse import CutSet

    if not cuts_path.is_file():
        raise click.ClickException(f"{cuts_path}: cuts manifest not found")
    try:
        cuts = CutSet.from_file(cuts_path)
        paths = write_splits(cuts, field, out_dir, prefix, leave_out)
    except SplitError as e:
        raise click.ClickException(f"{cuts_path}: {e}") from None
    except (OSError, ValueError, KeyError) as e:  # a corrupt or non-lhotse manifest
        raise click.ClickException(f"{cuts_path}: cannot read the cuts manifest: {e}") from None
    for key, path in paths.items():
        click.echo(f"[split_cuts] {field} {key}: {path}")


if __name__ == "__main__":
    sys.exit(main())
