"""Tags on cuts (TTS engine, voice, source, domain): read one, and select cuts by them.

Synthetic cuts carry ``engine``, ``voice``, ``source`` and ``domain`` in their supervisions' ``custom``
(written by ``tts_gen``); real-speech cuts carry ``source``/``domain`` on the cut as well. Per-engine
scoring (``synthasr evaluate --breakdown engine``, a schedule eval set's ``breakdown:``) and
leave-one-engine-out training (a schedule source's ``where: {engine: espeak}``) both read tags here,
so they agree on what a cut's engine is.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Sequence, Union

TagFilter = Mapping[str, Union[str, Sequence[str]]]


class TagError(ValueError):
    """A cut lacks the tag, or its supervisions disagree on it."""


def cut_tag(cut, field: str) -> str:
    """The cut's ``field``: from ``cut.custom``, else from its supervisions' ``custom`` (all must agree)."""
    if cut.custom and field in cut.custom:
        return str(cut.custom[field])
    values = {str(s.custom[field]) for s in cut.supervisions if s.custom and field in s.custom}
    if not values:
        raise TagError(f"cut {cut.id!r} has no {field!r} in its custom fields or its supervisions'")
    if len(values) > 1:
        raise TagError(f"cut {cut.id!r}: its supervisions disagree on {field!r}: {sorted(values)}")
    return values.pop()


def _allowed(spec: Union[str, Sequence[str]]) -> List[str]:
    return [spec] if isinstance(spec, str) else [str(v) for v in spec]


def matches(cut, where: TagFilter) -> bool:
    """True when every tag in ``where`` has one of the allowed values (a value or a list of them)."""
    return all(cut_tag(cut, field) in _allowed(spec) for field, spec in where.items())


class TagPredicate:
    """Picklable ``matches(cut, where)``, for lazily filtered (e.g. lhotse Shar) CutSets."""

    def __init__(self, where: TagFilter) -> None:
        self.where = {k: _allowed(v) for k, v in where.items()}

    def __call__(self, cut) -> bool:
        return matches(cut, self.where)


def select_cuts(cuts, where: TagFilter):
    """The cuts of ``cuts`` (a CutSet) that match ``where``, in order: an eager CutSet, or for a lazy
    one (a Shar source, which would read its audio if iterated here) a lazy filter over it."""
    from lhotse import CutSet

    if cuts.is_lazy:
        return cuts.filter(TagPredicate(where))
    return CutSet.from_cuts(c for c in cuts if matches(c, where))


def tag_values(cuts: Iterable, field: str) -> Dict[str, str]:
    """``{cut id: value}`` of ``field`` for every cut."""
    return {cut.id: cut_tag(cut, field) for cut in cuts}
