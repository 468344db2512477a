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
    assert masks.shape == (1, 300, 500)  # one click: the bundled config's single-mask output
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


def test_native_tiling_keeps_the_model_at_its_own_scale():
    from sam2_core.tiling import native_tiling

    assert native_tiling(256, 256, 320) is None  # up to 1.25x the input: resized whole
    assert native_tiling(256, 512, 512) == (192, 32)  # tile + 2 halo = the model input
    assert native_tiling(1024, 4096, 300) == (768, 128)
    assert native_tiling(256, 600, 600, halo=20) == (216, 20)
    with pytest.raises(ValueError, match="halo"):
        native_tiling(256, 600, 600, halo=125)


def test_tiled_predictor_defaults_to_the_model_scale(model):
    tiled = TiledImagePredictor(model)
    assert (tiled.tile, tiled.halo) == (192, 32)  # 192 + 2 x 32 = the 256 input
    tiled.set_image(np.zeros((300, 310), np.uint16))
    assert len(tiled.tiles) == 1  # up to 1.25x the input: one tile, resized
    tiled.set_image(np.zeros((600, 400), np.uint16))
    assert len(tiled.tiles) == 4 * 3 and all(t.outer[1] - t.outer[0] <= 256 for t in tiled.tiles)


def test_paint_instances_drops_masks_covered_by_smaller_ones():
    from sam2_core.masks import paint_instances

    a = np.zeros((20, 40), bool)
    a[5:15, 2:38] = True  # spans both cells below
    b = np.zeros((10, 15), bool)
    b[1:9, 1:14] = True
    c = b.copy()
    lab, kept = paint_instances((20, 40), [(a, (0, 0)), (b, (4, 2)), (c, (4, 22))])
    assert kept == [1, 2] and lab.dtype == np.uint16 and sorted(np.unique(lab)) == [0, 1, 2]
    assert (lab == 1).sum() == b.sum() and (lab == 2).sum() == c.sum()
    lab, kept = paint_instances((20, 40), [(a, (0, 0)), (b, (4, 2))])  # half of a still visible: kept
    assert kept == [0, 1] and (lab == 2).sum() == b.sum()


def test_generator_tiling_choice():
    from sam2_core.automatic import SAM2AutomaticMaskGenerator

    torch.manual_seed(0)
    m = SAM2Model(DEFAULT_CONFIG).eval()
    assert SAM2AutomaticMaskGenerator(m).tiling(300, 300) is None
    assert SAM2AutomaticMaskGenerator(m).tiling(300, 600) == (192, 32)
    assert SAM2AutomaticMaskGenerator(m, tile_size=None).tiling(4000, 4000) is None
    assert SAM2AutomaticMaskGenerator(m, tile_size=500, tile_halo=40).tiling(1000, 400) == (500, 40)
    assert SAM2AutomaticMaskGenerator(m, tile_size=500).tiling(500, 400) is None
    with pytest.raises(ValueError, match="tile_size"):
        SAM2AutomaticMaskGenerator(m, tile_size=8)


def test_generator_seeding_default_is_blobs_unless_a_grid_is_asked_for():
    from sam2_core.automatic import SAM2AutomaticMaskGenerator

    m = SAM2Model(DEFAULT_CONFIG).eval()
    assert SAM2AutomaticMaskGenerator(m).seeding == "blobs"  # microscopy default
    meta_style = SAM2AutomaticMaskGenerator(m, points_per_side=16)  # a script written for Meta's generator
    assert meta_style.seeding == "grid" and meta_style.points_per_side == 16
    assert SAM2AutomaticMaskGenerator(m, point_grids=[np.full((4, 2), 0.5)]).seeding == "grid"
    grid = SAM2AutomaticMaskGenerator(m, seeding="grid")
    assert grid.points_per_side == 32 and len(grid._seeds(np.zeros((64, 64, 3), np.float32), 0)) == 32 * 32
    assert SAM2AutomaticMaskGenerator(m, points_per_side=16, seeding="blobs").seeding == "blobs"
    with pytest.raises(ValueError, match="seeding"):
        SAM2AutomaticMaskGenerator(m, seeding="random")


@pytest.fixture(scope="module")
def bundled():
    from sam2_core.build import build_sam2, bundled_checkpoint

    if bundled_checkpoint() is None:
        pytest.skip("no bundled weights in this installation")
    return build_sam2()


def test_bundled_model_segments_images_larger_than_its_input(bundled):
    """The bundled model (256 input) on a 512 x 512 field of held-out simulated nuclei: resized
    whole, the nuclei shrink to half and almost none are found (measured F1 0.14); in native
    tiles it finds nearly all (measured F1 0.96), once each and uncut."""
    from sam2_core.automatic import SAM2AutomaticMaskGenerator
    from sam2_core.train.evaluate import match_score

    sim = simulate_cells(1, (512, 512), seed=10_007, n_cells=160)
    gen = SAM2AutomaticMaskGenerator(bundled, seeding="blobs")
    calls = []
    labels, records = gen.generate_labels(sim.movie[0], progress=lambda d, t: calls.append((d, t)), cell_diameter=0)
    assert calls[-1] == (9, 9) and len(calls) == 9
    score = match_score(labels[None], sim.labels[:1])
    assert score["f1"] >= 0.9, score
    assert len(records) == labels.max() and records[0]["id"] == 1
    assert {"area", "bbox", "predicted_iou", "stability_score", "point_coords", "tile"} <= set(records[0])
    whole = SAM2AutomaticMaskGenerator(bundled, seeding="blobs", tile_size=None).generate_labels(
        sim.movie[0], cell_diameter="off")[0]
    # resized whole, the nuclei shrink below the scale the model was trained at: clearly worse
    # (F1 0.67 against 0.95 with the third bundled model, 0.14 against 0.96 with the second)
    assert match_score(whole[None], sim.labels[:1])["f1"] < score["f1"] - 0.15
    # Meta's record format for the same tiles: full-size masks, image coordinates
    recs = gen.generate(sim.movie[0])
    assert recs[0]["segmentation"].shape == (512, 512)
    for r in recs[:20]:
        ys, xs = np.nonzero(r["segmentation"])
        x, y, w, h = r["bbox"]
        assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (x, y, w, h)
        px, py = r["point_coords"][0]
        cx, cy, cw, ch = r["crop_box"]
        assert cx <= px < cx + cw and cy <= py < cy + ch
    # records keep overlapping masks (Meta's way); as labels, those mostly covered are dropped
    from sam2_core.automatic import records_to_labels

    assert len(recs) >= len(records)
    assert (records_to_labels(recs, (512, 512)) > 0).sum() == (labels > 0).sum()


def test_automatic_segmentation_at_the_measured_cell_diameter(bundled):
    """Nuclei about 10 px across (the bundled model segments 28 px best): by default the objects
    found at the recorded scale give the diameter and the image is segmented again at the scale it
    implies; labels and records come back in the image's pixels, ids 1..N, and progress counts on
    over both passes. Measured on 24 held-out images (seeds 10,000+, 256 px): mean F1 0.851 at the
    recorded scale, 0.939 with the measured diameter."""
    from scipy import ndimage as ndi

    from sam2_core.automatic import SAM2AutomaticMaskGenerator
    from sam2_core.train.evaluate import match_score

    sim = simulate_cells(1, (256, 256), seed=30_006)  # radius 4.2-6.4 px (a calibration image)
    gen = SAM2AutomaticMaskGenerator(bundled, seeding="blobs")
    info_off: dict = {}
    native, _ = gen.generate_labels(sim.movie[0], cell_diameter=0, info=info_off)
    calls, info = [], {}
    labels, records = gen.generate_labels(sim.movie[0], progress=lambda d, t: calls.append((d, t)), info=info)
    assert info_off == {"scale": 1.0, "cell_diameter": None}
    assert 7 < info["cell_diameter"] < 13 and info["scale"] > 2
    f1_native = match_score(native[None], sim.labels[:1])["f1"]
    f1 = match_score(labels[None], sim.labels[:1])["f1"]
    assert f1 > f1_native + 0.1 and f1 > 0.85, (f1_native, f1)
    assert labels.shape == (256, 256) and len(records) == labels.max() and set(np.unique(labels)) == set(range(len(records) + 1))
    boxes = ndi.find_objects(labels)
    for r in records:
        ys, xs = boxes[r["id"] - 1]
        assert r["bbox"] == [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start]
        assert r["area"] == int((labels == r["id"]).sum())
        px, py = r["point_coords"][0]
        assert 0 <= px < 256 and 0 <= py < 256
    assert [t for _, t in calls] == sorted(t for _, t in calls) and calls[0][1] < calls[-1][1]
    assert all(d <= t for d, t in calls) and calls[-1][0] == calls[-1][1]
    given, _ = gen.generate_labels(sim.movie[0], cell_diameter=info["cell_diameter"])
    assert np.array_equal(given, labels)  # the measured value, given, does the same
    assert np.array_equal(gen.generate_labels(sim.movie[0], scale=info["scale"])[0], labels)  # and its scale
