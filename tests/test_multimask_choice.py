"""Which decoder output a prompt of one click and a tracked frame use (SAM2Config's
``multimask_output_in_sam`` / ``multimask_output_for_tracking``).

Meta's models take the best-scored of three candidates (both True). The bundled model's IoU head
ranks its candidates badly (it prefers the same one whatever the prompt), so for one click its
single-mask output is the better mask (held-out click IoU 0.85 against 0.82): its config says so,
and the predictors, the widget, the CLI and training follow the config.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sam2_core.config import DEFAULT_CONFIG, OFFICIAL_CONFIGS, SAM2Config
from sam2_core.modeling.sam2 import SAM2Model
from sam2_core.predictor.image import SAM2ImagePredictor
from sam2_core.predictor.video import SAM2VideoPredictor
from sam2_core.simulate_cells import simulate_cells
from sam2_core.train import TrainConfig
from sam2_core.train import prompts as P
from sam2_core.train.data import SimulatedPool
from sam2_core.train.loop import clip_forward

from test_train import TINY


def _model(**flags) -> SAM2Model:
    torch.manual_seed(0)
    return SAM2Model(TINY.replace(**flags)).eval()


def _record(model) -> list[bool]:
    """Patch ``model.forward_sam_heads`` to record the multimask_output of every call."""
    seen: list[bool] = []
    plain = model.forward_sam_heads

    def forward_sam_heads(*args, **kwargs):
        seen.append(bool(kwargs["multimask_output"] if "multimask_output" in kwargs else args[5]))
        return plain(*args, **kwargs)

    model.forward_sam_heads = forward_sam_heads
    return seen


def test_configs_and_round_trip():
    assert all(c.multimask_output_in_sam and c.multimask_output_for_tracking for c in OFFICIAL_CONFIGS.values())
    assert not DEFAULT_CONFIG.multimask_output_in_sam and DEFAULT_CONFIG.multimask_output_for_tracking
    cfg = TINY.replace(multimask_output_in_sam=False, multimask_output_for_tracking=False)
    assert SAM2Config.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in TINY.to_dict().items() if not k.startswith("multimask")}  # a checkpoint from before
    assert SAM2Config.from_dict(old) == TINY
    assert set(SAM2Config.USAGE_FIELDS) <= {f.name for f in dataclasses.fields(SAM2Config)}


@pytest.mark.parametrize("in_sam", [True, False])
def test_image_predictor_default_follows_the_config(in_sam):
    model = _model(multimask_output_in_sam=in_sam)
    sim = simulate_cells(1, (64, 64), seed=3, n_cells=4, radius=(6, 9))
    pred = SAM2ImagePredictor(model)
    pred.set_image(sim.movie[0])
    truth = sim.labels[0] == int(np.unique(sim.labels[0])[1])
    click = P.click_inside(truth, np.random.default_rng(0), central=True)
    masks, scores, _ = pred.predict(point_coords=click, point_labels=[1], return_logits=True)
    assert masks.shape[0] == (3 if in_sam else 1)
    same, same_scores, _ = pred.predict(point_coords=click, point_labels=[1], multimask_output=in_sam,
                                        return_logits=True)
    np.testing.assert_array_equal(masks, same)
    np.testing.assert_array_equal(scores, same_scores)
    # an explicit choice and any other prompt are as in Meta's predictor (three by default)
    assert pred.predict(point_coords=click, point_labels=[1], multimask_output=True)[0].shape[0] == 3
    assert pred.predict(box=P.box_of(truth).reshape(-1))[0].shape[0] == 3
    two = np.concatenate([click, click + 1])
    assert pred.predict(point_coords=two, point_labels=[1, 1])[0].shape[0] == 3


@pytest.mark.parametrize("in_sam,for_tracking", [(True, True), (False, True), (True, False)])
def test_video_predictor_follows_the_config(in_sam, for_tracking):
    model = _model(multimask_output_in_sam=in_sam, multimask_output_for_tracking=for_tracking)
    sim = simulate_cells(4, (64, 64), seed=5, n_cells=4, radius=(6, 9))
    vp = SAM2VideoPredictor(model)
    state = vp.init_state(sim.movie)
    seen = _record(model)
    cid = int(np.unique(sim.labels[0])[1])
    vp.add_new_points_or_box(state, 0, cid, points=P.click_inside(sim.labels[0] == cid, np.random.default_rng(0)),
                             labels=[1])
    assert seen == [in_sam]  # the prompted frame
    seen.clear()
    frames = [f for f, _, _ in vp.propagate_in_video(state)]
    assert frames == [0, 1, 2, 3] and seen and set(seen) == {for_tracking}  # the tracked frames


def test_training_follows_the_config():
    model = _model(multimask_output_in_sam=False)
    model.train()
    seen = _record(model)
    pool = SimulatedPool(64, size=2, movie_len=4, seed=0)
    cfg = TrainConfig(clip_len=3, max_objects=2, prob_box=0.0, prob_mask=0.0, prob_correct=0.0)
    losses = clip_forward(model, pool.sample(3, 2), cfg, np.random.default_rng(0))
    assert torch.isfinite(losses["total"])
    assert seen[0] is False and set(seen[1:]) == {True}  # the click single, the tracked frames three
