"""Frames smaller than the model input: enlarged at most ``max_upscale`` times, the rest padded.

Meta's models resize every frame to the input (``max_upscale`` 0). The bundled model was trained
at microscopy pixel scale, so a 61 x 57 slice enlarged 4.2x shows it nuclei far larger than it
knows (real 3-D nuclei: click IoU 0.26 enlarged, 0.75 at most 2x): it enlarges at most 2x.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_core import build_sam2
from sam2_core import transforms as T
from sam2_core.config import DEFAULT_CONFIG, OFFICIAL_CONFIGS
from sam2_core.predictor.image import SAM2ImagePredictor
from sam2_core.predictor.video import SAM2VideoPredictor
from sam2_core.simulate_cells import simulate_cells
from sam2_core.track import Prompt, track
from sam2_core.train import prompts as P


@pytest.fixture(scope="module")
def model():
    return build_sam2(device="cpu")


def test_canvas_and_round_trip():
    assert DEFAULT_CONFIG.max_upscale == 2 and all(c.max_upscale == 0 for c in OFFICIAL_CONFIGS.values())
    assert T.canvas_hw((61, 57), 256, 2) == (128, 128)
    assert T.canvas_hw((61, 57), 256, 0) == (61, 57)  # Meta's way: resized whatever its size
    assert T.canvas_hw((300, 100), 256, 1) == (300, 256)  # only the short side is padded
    assert T.canvas_hw((512, 512), 256, 2) == (512, 512)
    frame = np.zeros((64, 48, 3), np.float32)
    frame[10:20, 30:40] = 1.0
    x = T.to_model_input(frame, 128, max_upscale=1)  # no enlargement: the frame at its own scale
    mean, std = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
    img = (x[0] * std + mean).mean(0)
    assert img.shape == (128, 128) and img[11:19, 31:39].min() > 0.95
    assert img[64:].abs().max() < 1e-5 and img[:, 48:].abs().max() < 1e-5  # background fill
    logits = torch.where(img > 0.5, 10.0, -10.0)[None, None]
    low = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    back = T.masks_to_original(low, (64, 48), T.canvas_hw((64, 48), 128, 1))[0, 0] > 0
    truth = torch.zeros((64, 48), dtype=torch.bool)
    truth[10:20, 30:40] = True
    assert back.shape == (64, 48) and (back & truth).sum() / (back | truth).sum() > 0.7


def test_small_images_keep_their_scale(model):
    """Clicks on a 64 x 64 field: found at the right place in pixel and in [0, 1] coordinates,
    boxes too, and better than enlarging the field 4x to the input (measured: 0.89 vs 0.68)."""
    sim = simulate_cells(1, (64, 64), seed=5, radius=(8, 10), n_cells=6)
    img, lab = sim.movie[0], sim.labels[0]
    rng = np.random.default_rng(0)
    pred = SAM2ImagePredictor(model)
    pred.set_image(img)
    assert pred.canvas_hw() == (128, 128)
    ious = []
    for cid in [i for i in np.unique(lab) if i]:
        truth = lab == cid
        pt = P.click_inside(truth, rng, central=True)
        masks, scores, _ = pred.predict(point_coords=pt, point_labels=[1])
        best = masks[int(np.argmax(scores))]
        assert best.shape == (64, 64) and best[int(pt[0, 1]), int(pt[0, 0])]
        ious.append((best & truth).sum() / (best | truth).sum())
        norm, _, _ = pred.predict(point_coords=pt / np.array([64, 64]), point_labels=[1], normalize_coords=False)
        assert np.array_equal(norm, masks)
    one = lab == [i for i in np.unique(lab) if i][0]
    ys, xs = np.nonzero(one)
    boxed, _, _ = pred.predict(box=np.array([xs.min(), ys.min(), xs.max(), ys.max()]), multimask_output=False)
    assert (boxed[0] & one).sum() / (boxed[0] | one).sum() > 0.5
    resized = SAM2ImagePredictor(model)
    model.config = model.config.replace(max_upscale=0.0)
    try:
        resized.set_image(img)
        assert resized.canvas_hw() == (64, 64)
        rng = np.random.default_rng(0)
        ious0 = []
        for cid in [i for i in np.unique(lab) if i]:
            truth = lab == cid
            masks, scores, _ = resized.predict(point_coords=P.click_inside(truth, rng, central=True), point_labels=[1])
            best = masks[int(np.argmax(scores))]
            ious0.append((best & truth).sum() / (best | truth).sum())
    finally:
        model.config = model.config.replace(max_upscale=DEFAULT_CONFIG.max_upscale)
    # cells of radius 8-10 px: 16-20 px at 2x, within what the model was trained on; 32-40 px at 4x
    assert np.median(ious) > 0.75 and np.median(ious) > np.median(ious0) + 0.1, (np.median(ious), np.median(ious0))


def test_small_frames_are_tracked_in_place(model):
    """A 6-frame 60 x 52 movie: labels come back at the frame's size and on the clicked cell;
    a mask prompt and [0, 1] coordinates map through the padded canvas too."""
    sim = simulate_cells(6, (60, 52), seed=3, radius=(5, 7), n_cells=6, division_rate=0.0)
    lab0 = sim.labels[0]
    cid = int(np.bincount(lab0.ravel())[1:].argmax()) + 1
    rng = np.random.default_rng(0)
    pt = P.click_inside(lab0 == cid, rng, central=True)
    out = track(sim.movie, [Prompt(0, 7, points=pt, labels=[1])], model=model)
    assert out.shape == (6, 60, 52)
    first = out[0] == 7
    assert (first & (lab0 == cid)).sum() / (first | (lab0 == cid)).sum() > 0.5
    vp = SAM2VideoPredictor(model)
    state = vp.init_state(sim.movie)
    assert vp.canvas_hw(state) == (128, 128)
    vp.add_new_points_or_box(state, 0, 1, points=pt, labels=[1])
    _, ids, ab = vp.add_new_points_or_box(state, 0, 3, points=pt / np.array([52, 60]), labels=[1],
                                          normalize_coords=False)  # a second object, same click
    assert ids == [1, 3] and ab.shape == (2, 1, 60, 52) and torch.allclose(ab[0], ab[1], atol=1e-3)
    _, _, m = vp.add_new_mask(state, 2, 2, lab0 == cid)
    got = m[list(state.obj_ids).index(2), 0].numpy() > 0
    assert (got & (lab0 == cid)).sum() / (got | (lab0 == cid)).sum() > 0.6
