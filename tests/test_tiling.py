"""Large images: tile grid, prompt routing to tiles, stitched automatic segmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import label, regionprops

from sam2_core.config import DEFAULT_CONFIG
from sam2_core.modeling.sam2 import SAM2Model
from sam2_core.predictor.image import SAM2ImagePredictor
from sam2_core.simulate_cells import simulate_cells
from sam2_core.tiling import TiledImagePredictor, segment_tiled, tile_grid


def test_tile_cores_partition_the_image():
    tiles = tile_grid(300, 517, 128, 32)
    cover = np.zeros((300, 517), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        assert y1 - y0 <= 128 and x1 - x0 <= 128
        oy0, oy1, ox0, ox1 = t.outer
        assert oy0 == max(0, y0 - 32) and ox1 == min(517, x1 + 32)
    assert (cover == 1).all()
    with pytest.raises(ValueError):
        tile_grid(10, 10, 8, 2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SAM2Model(DEFAULT_CONFIG).eval()


def test_prompts_are_routed_to_their_tile(model):
    rng = np.random.default_rng(0)
    image = (rng.gamma(2.0, 200.0, size=(300, 500)) + 100).astype(np.uint16)
    tiled = TiledImagePredictor(model, tile=128, halo=32)
    tiled.set_image(image)
    masks, scores, low = tiled.predict(point_coords=[[400, 250]], point_labels=[1])
    t = tiled.last_tile
    y0, y1, x0, x1 = t.outer
    assert t.core[0] <= 250 < t.core[1] and t.core[2] <= 400 < t.core[3]
    direct = SAM2ImagePredictor(model)
    direct.set_image(image[y0:y1, x0:x1], contrast_limits=tiled.limits)
    ref, ref_scores, _ = direct.predict(point_coords=[[400 - x0, 250 - y0]], point_labels=[1])
    assert masks.shape == (3, 300, 500)
    assert np.array_equal(masks[:, y0:y1, x0:x1], ref) and not masks[:, :y0].any() and not masks[:, :, :x0].any()
    assert np.allclose(scores, ref_scores)
    tiled.predict(point_coords=[[395, 245]], point_labels=[1])  # same tile: no new encoding
    assert tiled.predictor.encoded == 1
    tiled.predict(box=[10, 10, 40, 30])
    assert tiled.predictor.encoded == 2
    with pytest.raises(ValueError, match="more than one tile"):
        tiled.predict(point_coords=[[10, 10], [450, 280]], point_labels=[1, 1])
    with pytest.raises(ValueError, match="outside"):
        tiled.predict(point_coords=[[600, 10]], point_labels=[1])
    with pytest.raises(RuntimeError, match="set_image"):
        TiledImagePredictor(model).predict(point_coords=[[1, 1]], point_labels=[1])


class ThresholdGenerator:
    """A stand-in for the automatic generator: connected bright components of the crop."""

    def generate(self, image, contrast_limits=None, channels=None):
        lo, hi = contrast_limits
        lab = label(image > lo + 0.25 * (hi - lo))
        out = []
        for r in regionprops(lab):
            y0, x0, y1, x1 = r.bbox
            out.append({"segmentation": lab == r.label, "area": int(r.area), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "predicted_iou": 1.0, "stability_score": 1.0})
        return out


def test_tiled_segmentation_has_no_duplicates_or_cut_cells():
    sim = simulate_cells(1, (360, 420), n_cells=40, seed=5, radius=(7.0, 10.0))
    image = sim.movie[0]
    whole, _ = segment_tiled(ThresholdGenerator(), image, tile=10_000, halo=0)  # one tile: the reference
    tiled, records = segment_tiled(ThresholdGenerator(), image, tile=100, halo=40)
    assert len(records) == len(np.unique(tiled)) - 1 == len(np.unique(whole)) - 1 > 20
    for k in np.unique(whole)[1:]:  # every object found whole, exactly once
        ids, counts = np.unique(tiled[whole == k], return_counts=True)
        assert len(ids) == 1 and ids[0] > 0 and counts[0] == (tiled == ids[0]).sum()
