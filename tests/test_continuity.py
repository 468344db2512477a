"""The continuity guard (sam2_core.continuity): a track ends where its mask jumps or swells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_core import build_sam2
from sam2_core.continuity import ENDED, ContinuityGuard
from sam2_core.tiled_track import ObjectLogits, TiledTracker
from sam2_core.track import Prompt, track


def disc(cy, cx, r=8, hw=(100, 100)):
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    return np.hypot(yy - cy, xx - cx) <= r


def test_motion_is_kept_and_a_jump_ends_the_track_for_the_rest_of_the_pass():
    g = ContinuityGuard()
    assert all(g.check(1, disc(30, 20 + 2 * t), t) for t in range(10))  # 2 px per frame: continuous
    assert not g.check(1, disc(70, 70), 10)  # a jump to another place
    assert not g.check(1, disc(30, 40), 11)  # ended: even back in place
    assert g.ended == [(1, 10)]
    assert g.check(2, disc(70, 70), 10)  # other objects are not affected


def test_fast_steady_motion_is_kept_by_the_last_step():
    """A cell that speeds up to 14 px per frame (radius 8: under 10 % of it would lie inside its
    last mask) is followed: the reference is also the last mask moved on by the last step."""
    g = ContinuityGuard()
    x = 10
    for t, step in enumerate([0, 4, 8, 12, 14, 14, 14]):
        x += step
        assert g.check(1, disc(50, x, hw=(100, 200)), t), (t, x)
    assert not g.check(1, disc(50, x - 14, hw=(100, 200)), 7)  # turning back on itself is not that step


def test_a_swell_ends_the_track_and_two_daughters_do_not():
    g = ContinuityGuard()
    assert g.check(1, disc(50, 50, r=8), 0)
    two = disc(50, 44, r=8) | disc(50, 58, r=8)  # a division: the union, about 2x the area
    assert g.check(1, two, 1)
    assert not g.check(1, disc(50, 50, r=17), 2)  # 4.5x the first area: spread over neighbours


def test_absent_frames_keep_the_last_mask_as_reference():
    g = ContinuityGuard()
    empty = np.zeros((100, 100), bool)
    assert g.check(1, disc(30, 30), 0)
    assert g.check(1, empty, 1) and g.check(1, empty, 2)  # absent is not an end
    assert g.check(1, disc(31, 32), 3)  # back where it was
    assert g.check(2, disc(30, 30), 0) and g.check(2, empty, 1)
    assert not g.check(2, disc(80, 80), 2)  # back somewhere else: a jump


def test_prompts_and_new_passes_start_afresh():
    g = ContinuityGuard()
    g.check(1, disc(30, 30), 0)
    assert not g.check(1, disc(80, 80), 1)
    assert g.check(1, disc(80, 80), 2, prompted=True)  # the user's prompt is the truth
    assert g.check(1, disc(81, 80), 3)
    assert not g.check(1, disc(20, 20), 4)
    g.reset()
    assert g.check(1, disc(20, 20), 4)


def test_offsets_place_window_masks_on_one_grid():
    """Masks given in windows (with their offset) are compared where they lie on the frame."""
    g = ContinuityGuard()
    whole = disc(60, 60, hw=(120, 120))
    assert g.check(1, whole[40:100, 40:100], 0, y0=40, x0=40)
    assert g.check(1, whole[20:80, 30:90], 1, y0=20, x0=30)  # the same place seen from another window
    assert not g.check(1, whole[40:100, 40:100], 2, y0=0, x0=0)  # the same crop placed 40 px away


def test_describe_ended():
    from sam2_core.continuity import describe_ended

    assert describe_ended([(3, 12), (7, 30)]) == "object 3 at frame 12, object 7 at frame 30"
    assert describe_ended([(i, i) for i in range(10)], most=2) == "object 0 at frame 0, object 1 at frame 1 and 8 more"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="min_overlap"):
        ContinuityGuard(min_overlap=1.5)
    with pytest.raises(ValueError, match="max_growth"):
        ContinuityGuard(max_growth=0.5)


def test_filter_low_res_writes_ended_logits():
    g = ContinuityGuard()
    low = torch.full((2, 1, 100, 100), -5.0)
    low[0, 0][torch.from_numpy(disc(30, 30))] = 5.0
    low[1, 0][torch.from_numpy(disc(70, 70))] = 5.0
    assert g.filter_low_res(0, [1, 2], low, [True, True]) is low  # nothing ended: unchanged
    nxt = low.clone()
    nxt[0] = -5.0
    nxt[0, 0][torch.from_numpy(disc(80, 20))] = 5.0  # object 1 jumps
    out = g.filter_low_res(1, [1, 2], nxt, [False, False])
    assert (out[0] == ENDED).all() and torch.equal(out[1], nxt[1])
    assert (nxt[0] > 0).any()  # the caller's tensor is not modified


# ---- wiring: track() (whole frames and windows) with a tracker whose masks jump on frame 3 ----

def _movie(n=6, hw=(120, 120)):
    rng = np.random.default_rng(0)
    return (1000 + rng.normal(0, 20, (n, *hw))).clip(0, 65535).astype(np.uint16)


def _jumping(f, hw):
    """A disc at a quarter of the grid that jumps to three quarters on frame 3."""
    at = 0.25 if f < 3 else 0.75
    return disc(at * hw[0], at * hw[1], r=hw[0] / 10, hw=hw)


@pytest.fixture(scope="module")
def model():
    return build_sam2("default", device="cpu")


def test_track_on_whole_frames_ends_a_jumping_track(model, monkeypatch):
    from sam2_core.predictor.video import SAM2VideoPredictor

    def fake(self, state, start=None, max_frames=None, reverse=False, obj_ids=None, skip=None):
        side = self.model.image_size // 4
        for f in range(state.num_frames):
            low = torch.full((1, 1, side, side), -10.0)
            low[0, 0][torch.from_numpy(_jumping(f, (side, side)))] = 10.0
            yield f, [1], low

    monkeypatch.setattr(SAM2VideoPredictor, "propagate_low_res", fake)
    prompts = [Prompt(0, 1, np.array([[30.0, 30.0]]), [1])]
    info: dict = {}
    on = track(_movie(), prompts, model=model, windows=False, cell_diameter=0, info=info)
    off = track(_movie(), prompts, model=model, windows=False, cell_diameter=0, continuity=False)
    assert all((on[f] == 1).any() for f in range(3)) and not (on[3:] == 1).any()
    assert all((off[f] == 1).any() for f in range(6))
    assert info["ended"] == [(1, 3)]  # reported: object 1 ended on frame 3


def test_track_in_windows_ends_a_jumping_track(model, monkeypatch):
    def fake(self, prompts, start, reverse=False, max_frames=None):
        self._user = {(1, 0)}
        for f in range(self.num_frames):
            yield f, [ObjectLogits(1, 0, 0, torch.from_numpy(np.where(_jumping(f, self.hw), 10.0, -10.0)).float())]

    monkeypatch.setattr(TiledTracker, "run", fake)
    prompts = [Prompt(0, 1, np.array([[30.0, 30.0]]), [1])]
    info: dict = {}
    on = track(_movie(), prompts, model=model, scale=2.0, info=info)
    off = track(_movie(), prompts, model=model, scale=2.0, continuity=False, info=info)
    assert info["ended"] == []  # the last run had no guard
    assert all((on[f] == 1).any() for f in range(3)) and not (on[3:] == 1).any()
    assert all((off[f] == 1).any() for f in range(6))


def test_leaving_cells_are_let_go_more_often(model):
    """Measured on two drifting calibration movies (seeds 31,000+, as evaluate's leaving cells):
    with the guard more frames after a cell left the field are empty, and cells still in the
    field keep their masks nearly as often (the same tracking, with and without the guard)."""
    from sam2_core.continuity import ContinuityGuard
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train import prompts as P
    from sam2_core.train.evaluate import leaving_cells

    pred = SAM2VideoPredictor(model)
    hits = {False: ([], []), True: ([], [])}  # continuity -> (absent hits, present hits)
    for i in range(2):
        rng = np.random.default_rng(31_000 + i)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 3.0)
        sim = simulate_cells(20, (256, 256), seed=31_000 + i, drift=(speed * np.sin(angle), speed * np.cos(angle)))
        cells = leaving_cells(sim, 6, rng)
        state = pred.init_state(sim.movie)
        for c in cells:
            pred.add_new_points_or_box(state, 0, c, points=P.click_inside(sim.labels[0] == c, rng, central=True),
                                       labels=[1])
        guard = ContinuityGuard()
        for f, ids, logits in pred.propagate_in_video(state):
            for c, m in zip(ids, logits[:, 0].numpy() > 0):
                kept = guard.check(c, m, f, prompted=f == 0)
                for on, mask in ((False, m), (True, m if kept else np.zeros_like(m))):
                    if f > 0:
                        here = (sim.labels[f] == c).any()
                        hits[on][1 if here else 0].append(mask.any() if here else not mask.any())
        pred.close_state(state)
    (absent_off, present_off), (absent_on, present_on) = hits[False], hits[True]
    assert len(absent_on) >= 20
    assert np.mean(absent_on) > np.mean(absent_off), (np.mean(absent_on), np.mean(absent_off))
    assert np.mean(present_on) >= np.mean(present_off) - 0.05, (np.mean(present_on), np.mean(present_off))


def test_the_widget_session_ends_a_jumping_track(model, monkeypatch):
    """The plugin's propagation (SegmentationSession, whole frames) passes masks through the guard;
    ``continuity = False`` gives SAM 2's masks as they come."""
    from napari_sam2._layers import StackView
    from napari_sam2._session import SegmentationSession
    from sam2_core.predictor.video import SAM2VideoPredictor

    real = SAM2VideoPredictor.propagate_low_res

    def fake(self, state, start=None, max_frames=None, reverse=False, obj_ids=None, skip=None):
        side = self.model.image_size // 4
        for f, ids, _ in real(self, state, start, max_frames, reverse, obj_ids, skip=skip):
            low = torch.full((len(ids), 1, side, side), -10.0)
            low[:, 0][:, torch.from_numpy(_jumping(f, (side, side)))] = 10.0
            yield f, ids, low

    monkeypatch.setattr(SAM2VideoPredictor, "propagate_low_res", fake)
    movie = _movie()
    results = {}
    for on in (True, False):
        session = SegmentationSession(model, cell_diameter=0)
        session.continuity = on
        session.set_stack(movie, StackView(movie.shape, 0))
        session.sync_prompts({(0, 1): (np.array([[30.0, 30.0]]), np.array([1]))})
        results[on] = {f: (lab == 1).any() for f, lab, ids in session.propagate("forward") if ids == [1]}
        if on:
            assert session.ended == [(1, 3)]
        ended = session.ended
    assert results[False] == {f: True for f in range(6)} and ended == []
    assert results[True] == {f: f < 3 for f in range(6)}  # ended frames are still reported (labels cleared)


def test_ended_objects_stop_being_tracked_in_windows(model, monkeypatch):
    """An object the guard ends leaves its window's batch (no more memory attention or decoding
    for it); it is still reported on later frames, with ended logits, so that labels are cleared."""
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.tiled_track import iter_results

    real = ContinuityGuard.check

    def ends_one_on_frame_two(self, obj_id, mask, frame=-1, **kw):
        keep = real(self, obj_id, mask, frame, **kw)
        if obj_id == 1 and frame >= 2 and not kw.get("prompted"):
            self.tracks[obj_id].ended = True
            return False
        return keep

    monkeypatch.setattr(ContinuityGuard, "check", ends_one_on_frame_two)
    movie = _movie(n=5)
    tracker = TiledTracker(SAM2VideoPredictor(model), movie, scale=2.0)
    prompts = [Prompt(0, 1, np.array([[30.0, 30.0]]), [1]), Prompt(0, 2, np.array([[90.0, 90.0]]), [1])]
    seen = {}
    for f, results, _ in iter_results(tracker, prompts, direction="forward"):
        seen[f] = {r.obj_id: r for r in results}
        if f >= 2:
            assert 1 not in tracker.home and 2 in tracker.home  # object 1 is out of the batch
    assert sorted(seen) == list(range(5)) and all(set(v) == {1, 2} for v in seen.values())
    assert all((seen[f][1].logits == ENDED).all() for f in range(2, 5))
    assert seen[4][1].logits.shape == (1, 1)  # a placeholder: it was not computed
    tracker.close()


def test_ended_objects_stop_being_tracked_on_whole_frames(model, monkeypatch):
    """On whole frames an object the guard ends is no longer computed either (the predictor's
    ``skip``): no memory attention or decoding for it, no-object logits, so its labels stay empty;
    a prompt on a later frame tracks it again, without memory from before its end."""
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.track import track_iter

    real_check, real_step = ContinuityGuard.check, SAM2VideoPredictor._step
    stepped: dict[int, list[int]] = {}

    def ends_one_on_frame_two(self, obj_id, mask, frame=-1, **kw):
        keep = real_check(self, obj_id, mask, frame, **kw)
        if obj_id == 1 and frame == 2 and not kw.get("prompted"):
            self.tracks[obj_id].ended = True
            self.ended.append((obj_id, frame))
            return False
        return keep

    def step(self, state, feats, objs, f, *args, **kw):
        stepped.setdefault(f, []).extend(o.obj_id for o in objs)
        return real_step(self, state, feats, objs, f, *args, **kw)

    monkeypatch.setattr(ContinuityGuard, "check", ends_one_on_frame_two)
    monkeypatch.setattr(SAM2VideoPredictor, "_step", step)
    predictor = SAM2VideoPredictor(model)
    state = predictor.init_state(_movie(n=7))
    prompts = [Prompt(0, 1, np.array([[30.0, 30.0]]), [1]), Prompt(0, 2, np.array([[90.0, 90.0]]), [1]),
               Prompt(5, 1, np.array([[30.0, 30.0]]), [1])]
    guard = ContinuityGuard()
    labels = dict(track_iter(predictor, state, prompts, continuity=guard))
    assert sorted(labels) == list(range(7)) and guard.ended == [(1, 2)]
    assert stepped[1] == [1, 2] and stepped[2] == [1, 2]  # tracked up to the frame it ended on
    assert stepped[3] == [2] and stepped[4] == [2]  # then out of the batch
    assert stepped[6] == [1, 2]  # the prompt on frame 5 brought it back
    assert all(not (labels[f] == 1).any() for f in (2, 3, 4)) and (labels[5] == 1).any()
    obj = state.objects[1]
    assert not {2, 3, 4} & set(obj.tracked) and not {2, 3, 4} & set(obj.non_cond)  # frame 2: where it ended
    # Meta's propagation (no skip) still computes every object
    stepped.clear()
    list(predictor.propagate_in_video(state, 0))
    assert all(ids == [1, 2] for f, ids in stepped.items() if f not in (0, 5))
