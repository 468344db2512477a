"""Sample data: a simulated 16-bit nuclei time-lapse with its ground-truth labels.

Generated (not downloaded), from our simulator with a fixed seed: 30 frames of 256 x 256, about
twenty moving nuclei, touching neighbours, a division, camera offset and shot noise.
"""

from __future__ import annotations

import numpy as np


def sample_movie(n_frames: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(movie (T, 256, 256) uint16, labels (T, 256, 256) uint16) of the shipped sample."""
    from sam2_core.simulate_cells import simulate_cells

    sim = simulate_cells(n_frames, (256, 256), n_cells=20, seed=7, radius=(9.0, 13.0), division_rate=0.004,
                         speed=1.0)
    return sim.movie, sim.labels.astype(np.uint16)


def make_sample_data():
    """[(movie, kwargs, "image"), (labels, kwargs, "labels")] for napari's File > Open Sample."""
    movie, labels = sample_movie()
    return [
        (movie, {"name": "nuclei (simulated)", "colormap": "gray"}, "image"),
        (labels, {"name": "ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]
