"""Scripted use from a napari macro or console: seed every nucleus, propagate, export.

Run it as a script (opens a viewer) or paste it into napari's console (uses the open viewer):

    python docs/examples/track_macro.py            # add --headless to skip napari.run()

Everything the widget does is a plain call: napari_sam2.segment(...) and napari_sam2.propagate(...)
take the viewer and layers, run synchronously and raise exceptions instead of notifications.
"""

from __future__ import annotations

import sys

import napari
import numpy as np

import napari_sam2
from napari_sam2._sample_data import sample_movie
from napari_sam2.export import write_ctc
from sam2_core import transforms as T
from sam2_core.automatic import blob_points

viewer = napari.current_viewer() or napari.Viewer(show="--headless" not in sys.argv)
movie, truth = sample_movie(n_frames=10)
image = viewer.add_image(movie, name="cells", colormap="gray")

# one positive click per bright blob on frame 0: napari points are (t, row, col)
seeds = blob_points(T.to_unit_rgb(movie[0]), min_sigma=3.0, max_sigma=10.0, threshold=0.1)
points = viewer.add_points(
    np.column_stack([np.zeros(len(seeds)), seeds[:, 1], seeds[:, 0]]),
    name="my clicks",
    features={"object_id": np.arange(1, len(seeds) + 1), "positive": np.ones(len(seeds), bool)},
)

labels = napari_sam2.propagate(viewer, image, points, direction="forward", tracks=True)
print(f"{labels.name}: {len(np.unique(labels.data)) - 1} objects over {labels.data.shape[0]} frames")
write_ctc("sam2_ctc_RES", labels.data, info=labels.metadata.get("napari_sam2"))  # + what produced it
if "--headless" not in sys.argv and napari.current_viewer() is viewer and not hasattr(sys, "ps1"):
    napari.run()
