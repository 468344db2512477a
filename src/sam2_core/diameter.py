"""Estimate the cells' typical diameter from the user's prompts (``cell_diameter="auto"``).

``track(cell_diameter=d)`` resizes the frames so that cells of ``d`` recorded pixels reach the
diameter the model tracks best (:func:`sam2_core.track.preferred_diameter`). Users rarely know
``d``; their prompts already show it:

- a mask prompt gives its object's size directly;
- clicks and boxes are segmented on their frame, as tracking would segment them
  (:meth:`sam2_core.tiled_track.TiledTracker.preview`), first at the recorded pixel scale; when
  the median diameter found there implies a scale more than ``tolerance`` away from the one the
  masks were made at, they are segmented again at the implied scale (a small nucleus is only a few
  mask pixels across at the recorded scale, so its first mask is coarse) — at most ``rounds`` times.

The diameter of one mask is its equivalent diameter, 2 sqrt(area / pi); the estimate is the
median over the prompted objects (at most ``max_objects`` of them, spread over the prompts, are
segmented). Prompts whose mask comes out empty are left out; with none left the estimate fails
with a message that says what to do.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


#: the widget measures its automatic cell diameter from the first this many prompted objects
AUTO_OBJECTS = 5
#: ... and resizes the frames only when the measured scale is more than this factor from the current one
AUTO_TOLERANCE = 1.15


def close_scales(a: float, b: float = 1.0, tolerance: float = AUTO_TOLERANCE) -> bool:
    """Whether two frame scales are within ``tolerance`` (a factor) of each other: resizing from
    one to the other is not worth a new segmentation."""
    return max(a / b, b / a) <= tolerance


def equivalent_diameter(mask: np.ndarray) -> float:
    """2 sqrt(area / pi) of a boolean mask, in its pixels (0 for an empty mask)."""
    return 2.0 * math.sqrt(float(np.count_nonzero(mask)) / math.pi)


@dataclass
class DiameterEstimate:
    """The estimated diameter (recorded pixels) and how it was found.

    Attributes:
        diameter: median equivalent diameter of the prompted objects.
        per_object: each measured object's diameter, by object id (its prompt on the first of its
            prompted frames).
        scales: the frame scale of each segmentation round (1.0 = recorded pixels).
    """

    diameter: float
    per_object: dict[int, float] = field(default_factory=dict)
    scales: list[float] = field(default_factory=list)


def has_positive(p: Any) -> bool:
    """Whether a prompt shows its object: a positive click, a box or a mask."""
    return p.mask is not None or p.box is not None or (
        p.points is not None and bool((np.asarray(p.labels) > 0).any()))


def _first_prompts(prompts: Sequence[Any], max_objects: int) -> dict[int, list]:
    """Each object's prompts on its first prompted frame (objects with a positive prompt only),
    at most ``max_objects`` objects, evenly spaced in id order."""
    by_obj: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for p in prompts:
        by_obj[int(p.object_id)][int(p.frame)].append(p)
    first = {}
    for obj, frames in sorted(by_obj.items()):
        group = frames[min(frames)]
        if any(has_positive(p) for p in group):
            first[obj] = group
    if len(first) > max_objects:
        keep = np.unique(np.linspace(0, len(first) - 1, max_objects).round().astype(int))
        ids = sorted(first)
        first = {ids[i]: first[ids[i]] for i in keep}
    return first


def estimate_cell_diameter(predictor: Any, frames: Any, prompts: Sequence[Any], *, max_objects: int = 24,
                           rounds: int = 2, tolerance: float = 1.15) -> DiameterEstimate:
    """The cells' typical diameter in recorded pixels, from ``prompts`` on ``frames``.

    Args:
        predictor: a :class:`~sam2_core.predictor.video.SAM2VideoPredictor` (or a model name,
            path or ``SAM2Model``: see :func:`sam2_core.track.track`).
        frames: (T, Y, X) / (T, Y, X, C) stack, path or ``FrameSource``.
        prompts: :class:`~sam2_core.track.Prompt` objects or dicts, as for ``track``.
        max_objects: segment at most this many objects (each costs a window's encoding).
        rounds: segmentation rounds at most (1: the recorded scale only).
        tolerance: stop when the implied scale is within this factor of the last one.

    Raises:
        ValueError: no prompt has a positive click, box or mask, or every mask came out empty.
    """
    from sam2_core.io.frames import FrameSource
    from sam2_core.track import MAX_SCALE, _as_predictor, as_prompts, preferred_diameter

    predictor = _as_predictor(predictor, None)
    preferred = preferred_diameter(predictor.model)
    if preferred is None:
        raise ValueError("this model stores no preferred cell diameter (recommended['cell_diameter']), so an "
                         "estimated diameter cannot set the scale: give scale= instead")
    first = _first_prompts(as_prompts(prompts), max_objects)
    if not first:
        raise ValueError("cell_diameter='auto' needs at least one object with a positive click, a box or a mask "
                         "to measure; add one, or give the diameter in pixels")
    source = frames if isinstance(frames, FrameSource) else FrameSource(frames)
    given = {obj: equivalent_diameter(np.asarray(g[0].mask, bool)) for obj, g in first.items()
             if len(g) == 1 and g[0].mask is not None and g[0].points is None and g[0].box is None}
    given = {obj: d for obj, d in given.items() if d > 0}
    to_segment = {obj: g for obj, g in first.items() if obj not in given}
    measured: dict[int, float] = {}
    scales: list[float] = []
    scale = 1.0
    for _ in range(max(1, rounds) if to_segment else 0):
        scales.append(scale)
        measured = _segment(predictor, source, to_segment, scale)
        values = list(given.values()) + list(measured.values())
        if not values:
            break
        implied = float(np.clip(preferred / float(np.median(values)), 1 / MAX_SCALE, MAX_SCALE))
        if close_scales(implied, scale, tolerance):
            break
        scale = implied
    per_object = {**given, **measured}
    if not per_object:
        raise ValueError(f"none of the {len(first)} prompted objects gave a mask to measure (every mask came out "
                         "empty); click inside the cells, draw a box around one, or give the diameter in pixels")
    return DiameterEstimate(float(np.median(list(per_object.values()))), dict(sorted(per_object.items())), scales)


def _segment(predictor: Any, source: Any, groups: dict[int, list], scale: float) -> dict[int, float]:
    """Each object's equivalent diameter (recorded pixels) from its prompts, segmented at ``scale``."""
    from sam2_core.tiled_track import TiledTracker

    tracker = TiledTracker(predictor, source, scale=scale)
    out: dict[int, float] = {}
    try:
        by_frame: dict[int, list] = defaultdict(list)
        for group in groups.values():
            by_frame[int(group[0].frame)] += group
        for frame, prompts in sorted(by_frame.items()):
            for res in tracker.preview(frame, prompts):
                d = equivalent_diameter(res.full_mask(tracker.hw))
                if d > 0:
                    out[int(res.obj_id)] = d
    finally:
        tracker.close()
    return out
