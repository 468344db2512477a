"""Scripting API: everything the widget does, as plain calls on a viewer and its layers.

Example (in a napari console or macro)::

    import napari_sam2
    labels = napari_sam2.segment(viewer, viewer.layers["cells"], viewer.layers["SAM2 prompts"])
    labels = napari_sam2.propagate(viewer, viewer.layers["cells"], viewer.layers["SAM2 prompts"],
                                   direction="both")

Calls run synchronously (no thread worker) and raise exceptions instead of notifications.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from napari_sam2._actions import Controller


def _controller(viewer, image_layer, points_layer=None, labels_layer=None, *, model="default",
                checkpoint=None, device="auto", axis=None) -> Controller:
    c = Controller(viewer, notify=False, threaded=False)
    c.set_model(model, checkpoint or "", device)
    c.set_image(image_layer, axis)
    if points_layer is not None and points_layer.name != "SAM2 prompts":
        prompts = c.prompts_layer()
        with prompts.events.data.blocker():
            prompts.data = points_layer.data
            prompts.features = points_layer.features
    if labels_layer is not None:
        c.set_output(labels_layer.name)
    return c


def segment(viewer, image_layer, points_layer=None, labels_layer=None, **kwargs: Any):
    """Segment every prompted object on the frames that carry prompts; returns the Labels layer."""
    c = _controller(viewer, image_layer, points_layer, labels_layer, **kwargs)
    c.segment_current()
    return c.labels_layer()


def propagate(viewer, image_layer, points_layer=None, labels_layer=None, *, direction: str = "both",
              max_frames: int | None = None, obj_ids: Sequence[int] | None = None, tracks: bool = False,
              start: int | str | None = None, **kwargs: Any):
    """Propagate the prompted objects through the stack; returns the Labels layer.

    ``start``: the frame to propagate from; None (default) is the first frame with prompts,
    "current" the frame the viewer shows.
    """
    c = _controller(viewer, image_layer, points_layer, labels_layer, **kwargs)
    c.propagate(direction, max_frames=max_frames, obj_ids=obj_ids, tracks=tracks, start=start)
    return c.labels_layer()
