"""Scripting API: everything the widget does, as plain calls on a viewer and its layers.

Example (in a napari console or macro)::

    import napari_sam2
    labels = napari_sam2.segment(viewer, viewer.layers["cells"], viewer.layers["SAM2 prompts"])
    labels = napari_sam2.propagate(viewer, viewer.layers["cells"], viewer.layers["SAM2 prompts"],
                                   direction="both")

Calls run synchronously (no thread worker) and raise exceptions instead of notifications.
The returned Labels layer's ``metadata["napari_sam2"]`` says what produced it (model, speed,
precision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from napari_sam2._actions import Controller


def _controller(viewer, image_layer, points_layer=None, labels_layer=None, *, model="default",
                checkpoint=None, device="auto", axis=None, speed=None, cell_diameter=None,
                stabilize=False, continuity=True, precision=None) -> Controller:
    c = Controller(viewer, notify=False, threaded=False)
    c.continuity = bool(continuity)
    c.set_model(model, checkpoint or "", device)
    if speed is not None:
        c.set_speed(speed)
    if precision is not None:
        c.set_precision(precision)
    from sam2_core.track import as_diameter

    cell_diameter = as_diameter(cell_diameter)
    auto = cell_diameter == "auto"
    if cell_diameter == 0:
        c.set_cell_diameter("off")
    elif cell_diameter and not auto:
        c.set_cell_diameter(cell_diameter)
    if stabilize:
        c.set_stabilize(True)
    c.set_image(image_layer, axis)
    if points_layer is not None and points_layer.name != "SAM2 prompts":
        prompts = c.prompts_layer()
        with prompts.events.data.blocker():
            prompts.data = points_layer.data
            prompts.features = points_layer.features
    if labels_layer is not None:
        c.set_output(labels_layer.name)
    if auto:  # measured from the prompts, as the widget's "Measure cell diameter" button does
        c.measure_cell_diameter()
    return c


def segment(viewer, image_layer, points_layer=None, labels_layer=None, *, speed: str | None = None,
            **kwargs: Any):
    """Segment every prompted object on the frames that carry prompts; returns the Labels layer.

    ``speed``: "exact" or "fast" (see :func:`propagate`).
    """
    c = _controller(viewer, image_layer, points_layer, labels_layer, speed=speed, **kwargs)
    try:
        c.segment_current()
        return c.labels_layer()
    finally:
        c.close()  # detach from the viewer (no background prefetch on slider moves afterwards)


def propagate(viewer, image_layer, points_layer=None, labels_layer=None, *, direction: str = "both",
              max_frames: int | None = None, obj_ids: Sequence[int] | None = None, tracks: bool = False,
              start: int | str | None = None, speed: str | None = None, **kwargs: Any):
    """Propagate the prompted objects through the stack; returns the Labels layer.

    ``start``: the frame to propagate from; None (default) is the first frame with prompts,
    "current" the frame the viewer shows.
    ``speed``: "exact" (Meta's computation) or "fast" (each object tracked in a window around it;
    its measured agreement with exact is in docs/engine.md); None keeps the default, exact.
    ``cell_diameter`` (keyword, also for :func:`segment`): the cells' typical diameter in pixels;
    frames are resized so that cells reach the size the model tracks best and tracked in windows
    of its input (frames larger than 1.25x the input always are); "auto": measured from the
    prompted objects' masks (``sam2_core.diameter``); 0 or "off": the recorded scale. Default
    (None): for a model that stores the diameter it tracks best (the bundled model), measured
    from the first prompted objects, as the widget does; else the recorded scale.
    ``stabilize`` (keyword): remove stage drift (the whole field's translation) before tracking;
    labels stay in each frame's pixels (``sam2_core.stabilize``).
    ``continuity`` (keyword, default True): an object's track ends where its mask jumps away or
    swells past 4x its first area (it left the field, ended, or slid onto neighbours); False
    keeps SAM 2's masks as they come (``sam2_core.continuity``).
    ``precision`` (keyword): "fp32", "bf16", "fp16" or "auto"; bf16 is several times faster on
    CPUs with AMX or AVX512-BF16 and on GPUs (docs/engine.md); None: fp32 in exact mode, auto in
    fast mode.
    """
    c = _controller(viewer, image_layer, points_layer, labels_layer, speed=speed, **kwargs)
    try:
        c.propagate(direction, max_frames=max_frames, obj_ids=obj_ids, tracks=tracks, start=start)
        return c.labels_layer()
    finally:
        c.close()  # detach from the viewer (no background prefetch on slider moves afterwards)
