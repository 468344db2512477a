"""The model shipped in the package: loads as `default`, fits the size budget, and segments and
tracks generated nuclei end to end (figures of the whole held-out set: docs/model-card.md)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_core import build_sam2
from sam2_core.build import bundled_checkpoint
from sam2_core.config import DEFAULT_CONFIG
from sam2_core.predictor.video import SAM2VideoPredictor

pytestmark = pytest.mark.skipif(bundled_checkpoint() is None, reason="no bundled weights in this installation")


@pytest.fixture(scope="module")
def model():
    return build_sam2("default", device="cpu")


def test_bundled_file(model):
    assert model.config == DEFAULT_CONFIG
    assert bundled_checkpoint().stat().st_size < 25e6
    # the automatic generator's thresholds, calibrated for these weights, travel with them
    assert set(model.recommended) == {"pred_iou_thresh", "stability_score_thresh", "cell_diameter",
                                      "refresh_every", "max_cond_frames_in_attn"}
    pred = SAM2VideoPredictor(model)  # keyframe refresh by default for these weights (docs/engine.md)
    assert (pred.refresh_every, pred.max_cond_frames_in_attn) == (4, 2)
    # the preferred cell diameter also comes with the file loaded by path (measured after export)
    from sam2_core import build_sam2

    assert build_sam2(checkpoint=bundled_checkpoint()).recommended == model.recommended
    assert model.recommended["cell_diameter"] == 28.0


def test_bundled_model_on_held_out_movies(model):
    from sam2_core.train.evaluate import evaluate

    m = evaluate(model, n_movies=2, n_frames=12, max_objects=4, seed=20_000)
    # Below the model card's figures on the full held-out set: this guards against a broken model
    # or pipeline (random weights give ~0 for both), not against small regressions. Tracking is
    # still weak in this first shipped model (propagated IoU 0.23 over 50 frames): see the card.
    assert m.single_click_iou > 0.5, m
    assert m.propagated_iou > 0.02, m
    assert np.isfinite(m.seconds_per_frame)
