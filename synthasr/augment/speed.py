"""Speed and volume perturbation: thin, seeded wrappers around lhotse's lazy transforms.

Speed perturbation resamples the audio (lhotse ``Speed``, pure torch), so a factor ``f`` turns a
``d``-second cut into ``d / f`` seconds; supervision times follow and ids get an ``_sp<f>`` suffix.
"""
from __future__ import annotations

from lhotse.utils import fastcopy


def speed_cut(cut, factor: float):
    """Lazily speed-perturb ``cut`` by ``factor`` (1.0 returns the cut unchanged)."""
    if factor == 1.0:
        return cut
    if cut.has_features:
        cut = fastcopy(cut, features=None)  # lhotse would otherwise mutate the input to drop them
    return cut.perturb_speed(factor=factor, affix_id=True)


def volume_cut(cut, factor: float):
    """Lazily scale ``cut``'s audio by ``factor`` (id suffix ``_vp<factor>``)."""
    if factor == 1.0:
        return cut
    if cut.has_features:
        cut = fastcopy(cut, features=None)
    return cut.perturb_volume(factor=round(factor, 3), affix_id=True)
