"""Keyframe refresh: tracked results promoted to conditioning frames, bounded, per pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_core import build_sam2
from sam2_core.predictor.video import SAM2VideoPredictor
from sam2_core.simulate import simulate_timelapse


@pytest.fixture(scope="module")
def movie():
    m, lab = simulate_timelapse(n_frames=8, shape=(64, 80), n_cells=3, seed=5)
    return np.concatenate([m, m[::-1], m]), lab  # 24 frames


def _click(lab, k=1):
    ys, xs = np.nonzero(lab[0] == k)
    return [[float(xs.mean()), float(ys.mean())]]


def _run(pred, state, **kw):
    return {f: masks.clone() for f, _, masks in pred.propagate_in_video(state, **kw)}


def test_tracked_frames_become_keyframes_every_k(tiny256, movie):
    m, lab = movie
    pred = SAM2VideoPredictor(tiny256, refresh_every=4, max_cond_frames_in_attn=2)
    state = pred.init_state(m)
    pred.add_new_points_or_box(state, 0, 1, points=_click(lab), labels=[1])
    seen = []
    for f, _, _ in pred.propagate_in_video(state):
        o = state.objects[1]
        seen.append(sorted(o.auto))
        assert len(o.auto) <= 2 and len(o.cond) <= 3  # the click plus the latest two
    assert seen[4] == [4] and seen[8] == [4, 8] and seen[12] == [8, 12]
    o = state.objects[1]
    assert sorted(o.cond) == [0, 16, 20] and set(o.auto) == {16, 20} and not set(o.auto) & set(o.non_cond)
    assert pred.provenance()["refresh_every"] == 4


def test_refresh_changes_tracking_and_off_is_meta(tiny256, movie):
    m, lab = movie
    results = {}
    for k in (0, 4):
        pred = SAM2VideoPredictor(tiny256, refresh_every=k, max_cond_frames_in_attn=2 if k else -1)
        state = pred.init_state(m)
        pred.add_new_points_or_box(state, 0, 1, points=_click(lab), labels=[1])
        results[k] = _run(pred, state)
        assert bool(state.objects[1].auto) == bool(k)
        assert sorted(state.objects[1].cond) == ([0] if k == 0 else [0, 16, 20])
    assert all(torch.equal(results[0][f], results[4][f]) for f in range(5))  # the same until the first keyframe
    assert any(not torch.equal(results[0][f], results[4][f]) for f in range(6, 24))


def test_a_second_run_recomputes_its_keyframes(tiny256, movie):
    """Keyframes ahead of the current frame are an earlier run's: a re-run equals the first run."""
    m, lab = movie
    pred = SAM2VideoPredictor(tiny256, refresh_every=3, max_cond_frames_in_attn=2, storage_dtype=torch.float32)
    state = pred.init_state(m)
    pred.add_new_points_or_box(state, 0, 1, points=_click(lab), labels=[1])
    first = _run(pred, state)
    second = _run(pred, state)
    assert first.keys() == second.keys()
    for f in first:
        assert torch.allclose(first[f], second[f], atol=1e-4), f


def test_reverse_pass_drops_the_forward_passs_keyframes(tiny256, movie):
    m, lab = movie
    pred = SAM2VideoPredictor(tiny256, refresh_every=4, max_cond_frames_in_attn=2)
    state = pred.init_state(m)
    ys, xs = np.nonzero(lab[4] == 1)
    pred.add_new_points_or_box(state, 12, 1, points=[[float(xs.mean()), float(ys.mean())]], labels=[1])
    _run(pred, state)
    o = state.objects[1]
    assert set(o.auto) == {20, 16} and all(r is False for r in o.auto.values())
    frames = list(_run(pred, state, reverse=True))
    assert frames == list(range(12, -1, -1))
    assert sorted(o.auto) == [0, 4] and all(o.auto.values())  # this pass's own, nearest the end
    assert sorted(o.cond) == [0, 4, 12]


def test_user_prompts_are_never_evicted(tiny256, movie):
    m, lab = movie
    pred = SAM2VideoPredictor(tiny256, refresh_every=2, refresh_keep=1, max_cond_frames_in_attn=2)
    state = pred.init_state(m)
    pred.add_new_points_or_box(state, 0, 1, points=_click(lab), labels=[1])
    _run(pred, state)
    o = state.objects[1]
    assert list(o.auto) == [22]
    # a correction on an automatic keyframe makes it the user's
    pred.add_new_points_or_box(state, 22, 1, points=_click(lab), labels=[1])
    pred.add_new_points_or_box(state, 10, 1, points=_click(lab), labels=[1])
    _run(pred, state, start_frame_idx=10)
    assert {0, 10, 22} <= set(o.cond) and 22 not in o.auto and 10 not in o.auto
    assert set(o.auto) <= set(o.cond) and len(o.auto) == 1
    pred.clear_all_prompts_in_frame(state, 22, 1)
    assert 22 not in o.cond and 22 in o.non_cond


def test_absent_objects_are_not_promoted(seeded_checkpoint, movie):
    m, lab = movie
    model = build_sam2(checkpoint=seeded_checkpoint("sam2.1_hiera_tiny", 0, -10.0), image_size=256, device="cpu")
    pred = SAM2VideoPredictor(model, refresh_every=2, max_cond_frames_in_attn=2)
    state = pred.init_state(m)
    pred.add_new_points_or_box(state, 0, 1, points=_click(lab), labels=[1])
    _run(pred, state)
    assert not state.objects[1].auto and list(state.objects[1].cond) == [0]


def test_settings_come_from_the_model_and_are_checked(tiny256, seeded_checkpoint):
    pred = SAM2VideoPredictor(tiny256)
    assert (pred.refresh_every, pred.max_cond_frames_in_attn) == (0, -1)  # official models: Meta's
    assert "refresh_every" not in pred.provenance()
    model = build_sam2(checkpoint=seeded_checkpoint("sam2.1_hiera_tiny", 0), image_size=256, device="cpu")
    model.recommended = {"refresh_every": 5.0, "max_cond_frames_in_attn": 3.0}
    pred = SAM2VideoPredictor(model)
    assert (pred.refresh_every, pred.max_cond_frames_in_attn) == (5, 3)
    assert SAM2VideoPredictor(model, refresh_every=0).refresh_every == 0
    with pytest.raises(ValueError, match="refresh_every"):
        SAM2VideoPredictor(tiny256, refresh_every=-1)
    with pytest.raises(ValueError, match="max_cond_frames_in_attn"):
        SAM2VideoPredictor(tiny256, max_cond_frames_in_attn=1)
