"""Sample data: a small simulated 16-bit nuclei time-lapse with its ground-truth labels."""

from __future__ import annotations


def make_sample_data():
    """[(movie, kwargs, "image"), (labels, kwargs, "labels")] for napari's File > Open Sample."""
    from sam2_core.simulate import simulate_timelapse

    movie, labels = simulate_timelapse(n_frames=12, shape=(128, 128), n_cells=6, seed=0)
    return [
        (movie, {"name": "nuclei (simulated)", "colormap": "gray"}, "image"),
        (labels, {"name": "ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]
