"""Tracking at a chosen scale in windows of the model's input (sam2_core.tiled_track)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_core import build_sam2
from sam2_core.io.frames import FrameSource
from sam2_core.predictor.video import SAM2VideoPredictor
from sam2_core.simulate_cells import simulate_cells
from sam2_core.tiled_track import ScaledFrames, TiledTracker, uses_windows, window_lattice
from sam2_core.track import Prompt, resolve_scale, track
from sam2_core.train import prompts as P


@pytest.fixture(scope="module")
def model():
    return build_sam2("default", device="cpu")


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_window_lattice_cores_partition_and_windows_fit():
    for h, w in ((600, 1000), (256, 700), (100, 90), (321, 257)):
        wins = window_lattice(h, w, 256, 32)
        cover = np.zeros((h, w), int)
        for t in wins:
            y0, y1, x0, x1 = t.core
            cover[y0:y1, x0:x1] += 1
            oy0, oy1, ox0, ox1 = t.outer
            assert 0 <= oy0 and oy1 <= h and 0 <= ox0 and ox1 <= w
            assert oy1 - oy0 == min(256, h) and ox1 - ox0 == min(256, w)  # the model sees it 1:1
            if h > 256:  # each core has at least the halo of context where the frame allows
                assert oy0 <= max(0, y0 - 32) and oy1 >= min(h, y1 + 32)
            if w > 256:
                assert ox0 <= max(0, x0 - 32) and ox1 >= min(w, x1 + 32)
        assert (cover == 1).all()  # the cores partition the frame
    assert len(window_lattice(256, 256, 256, 32)) == 1  # a frame that fits is one window
    with pytest.raises(ValueError, match="halo"):
        window_lattice(512, 512, 256, 125)
    assert uses_windows(512, 512, 256) and not uses_windows(300, 300, 256)
    assert uses_windows(200, 200, 256, scale=2.0) and uses_windows(100, 100, 256, windows=True)
    assert not uses_windows(512, 512, 256, windows=False)
    with pytest.raises(ValueError, match="windows"):
        uses_windows(100, 100, 256, scale=2.0, windows=False)


def test_scaled_frames_map_pixels_and_masks():
    movie = np.random.default_rng(0).integers(100, 4000, (3, 40, 60), dtype=np.uint16)
    frames = ScaledFrames(FrameSource(movie), 2.0)
    assert frames.frame(1).shape == (80, 120, 3) and frames.frame(1).dtype == np.float32
    assert frames.frame(1) is frames.frame(1)  # cached
    np.testing.assert_allclose(frames.to_scaled([[0, 0], [59, 39]]), [[0.5, 0.5], [118.5, 78.5]])
    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:40] = True
    big = frames.mask_to_scaled(mask)
    assert big.shape == (80, 120) and big[20:40, 60:80].all() and big.sum() == 400
    with pytest.raises(ValueError, match="mask prompt"):
        frames.mask_to_scaled(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="scale"):
        ScaledFrames(FrameSource(movie), 0.0)


def test_windows_equal_the_whole_frame_when_it_fits(model):
    """One window over a frame that fits the input is the ordinary predictor's computation."""
    sim = simulate_cells(6, (200, 200), seed=5)
    rng = np.random.default_rng(0)
    ids = [int(i) for i in np.unique(sim.labels[0]) if i][:3]
    prompts = [Prompt(0, k + 1, P.click_inside(sim.labels[0] == c, rng, central=True), [1]) for k, c in enumerate(ids)]
    a = track(sim.movie, prompts, model=model, windows=False)
    b = track(sim.movie, prompts, model=model, windows=True, cell_diameter=0)  # at the recorded scale
    assert a.shape == b.shape == sim.labels.shape
    assert (a == b).mean() > 0.999


def test_large_frames_are_tracked_at_their_own_scale(model):
    """A 512 x 512 movie: resized whole to the 256 input the cells shrink to half; in windows the
    model sees them as it learned them, and follows them much better."""
    sim = simulate_cells(12, (512, 512), seed=1_000_000)
    rng = np.random.default_rng(0)
    labels0 = sim.labels[0]
    ids = [int(i) for i in np.unique(labels0) if i and (labels0 == i).sum() > 80]
    ids = list(rng.choice(ids, 6, replace=False))
    prompts = [Prompt(0, k + 1, P.click_inside(labels0 == c, rng, central=True), [1]) for k, c in enumerate(ids)]
    out = {}
    for windows in (False, None):
        lab = track(sim.movie, prompts, model=model, windows=windows)
        out[windows] = np.median([np.mean([_iou(lab[f] == k + 1, np.isin(sim.labels[f], list(sim.descendants(c))))
                                           for f in range(12) if np.isin(sim.labels[f], list(sim.descendants(c))).any()])
                                  for k, c in enumerate(ids)])
    assert out[None] > 0.6
    assert out[None] > out[False] + 0.15, out


def _moving_disc(n=40, h=160, w=300, r=12, step=2, x0=110):
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:h, :w]
    movie = np.empty((n, h, w), np.uint16)
    truth = np.zeros((n, h, w), bool)
    for t in range(n):
        cx = x0 + step * t
        d = np.hypot(yy - h / 2, xx - cx)
        truth[t] = d <= r
        img = 1000 + 2500 / (1 + np.exp((d - r) / 1.5)) + rng.normal(0, 60, (h, w))
        movie[t] = np.clip(img, 0, 65535)
    return movie, truth


def test_objects_move_between_windows(model):
    """A nucleus crossing from one window into the next is handed over and not lost."""
    movie, truth = _moving_disc(step=4)  # x 110 -> 266: past window 0's inner edge (256) less 3/4 halo
    vp = SAM2VideoPredictor(model)
    tracker = TiledTracker(vp, movie)
    assert len(tracker.windows) == 2
    res = {f: r for f, r in tracker.run([Prompt(0, 7, [[110, 80]], [1])], 0)}
    assert sorted(res) == list(range(len(movie)))
    ious = [_iou(res[f][0].full_mask(tracker.hw), truth[f]) for f in res]
    assert tracker.handovers >= 1 and tracker.home[7] == 1
    assert min(ious[-10:]) > 0.5 and np.median(ious) > 0.6, np.round(ious, 2)
    assert all(len(r) == 1 and r[0].obj_id == 7 for r in res.values())
    assert len(tracker.states) == 1  # only the window holding the nucleus is encoded
    tracker.close()
    # backward from the last frame, as track(direction="backward") runs it
    last = len(movie) - 1
    lab = track(movie, [Prompt(last, 7, [[110 + 4 * last, 80]], [1])], model=vp, direction="backward",
                windows=True)
    assert np.median([_iou(lab[f] == 7, truth[f]) for f in range(len(movie))]) > 0.6


def test_nearby_objects_share_a_window(model):
    """Two nuclei in different cores that both fit one window are tracked in that window (one
    encoder pass per frame, not two), and as well as each in its own."""
    rng = np.random.default_rng(5)
    n, h, w = 10, 160, 400  # three windows across: cores 0-133, 133-267, 267-400
    yy, xx = np.mgrid[:h, :w]
    movie = np.empty((n, h, w), np.uint16)
    truth = np.zeros((2, n, h, w), bool)
    for t in range(n):
        img = 1000 + rng.normal(0, 60, (h, w))
        for k, cx in enumerate((110 + t, 170 + t)):
            d = np.hypot(yy - 80, xx - cx)
            truth[k, t] = d <= 12
            img += 2500 / (1 + np.exp((d - 12) / 1.5))
        movie[t] = np.clip(img, 0, 65535)
    tracker = TiledTracker(SAM2VideoPredictor(model), movie)
    assert tracker.window_of(80, 110) != tracker.window_of(80, 170)
    prompts = [Prompt(0, 1, [[110, 80]], [1]), Prompt(0, 2, [[170, 80]], [1])]
    res = dict(tracker.run(prompts, 0))
    assert tracker.home[1] == tracker.home[2] and len(tracker.states) == 1 and tracker.handovers == 0
    for k in (1, 2):
        ious = [_iou(next(r for r in res[f] if r.obj_id == k).full_mask(tracker.hw), truth[k - 1, f]) for f in range(n)]
        assert min(ious) > 0.6, (k, np.round(ious, 2))
    tracker.close()


def test_scale_and_cell_diameter(model):
    """Frames enlarged 2x are tracked in windows and the labels come back at the recorded size."""
    movie, truth = _moving_disc(n=8, h=80, w=200, r=6, step=1, x0=30)
    lab = track(movie, [Prompt(0, 1, [[30, 40]], [1])], model=model, scale=2.0)
    assert lab.shape == movie.shape
    assert np.median([_iou(lab[f] == 1, truth[f]) for f in range(8)]) > 0.4  # the model's masks are generous
    for f in (0, 7):  # the masks come back where the cell is, at the recorded pixels
        ys, xs = np.nonzero(lab[f] == 1)
        ty, tx = np.nonzero(truth[f])
        assert abs(ys.mean() - ty.mean()) < 1.0 and abs(xs.mean() - tx.mean()) < 1.0
    saved = dict(model.recommended)
    try:
        model.recommended = {**saved, "cell_diameter": 24.0}
        assert resolve_scale(model, None, 12.0) == 2.0 and resolve_scale(model, 0.5, None) == 0.5
        lab2 = track(movie, [Prompt(0, 1, [[30, 40]], [1])], model=model, cell_diameter=12.0)
        assert (lab2 == lab).mean() > 0.999
        model.recommended = {}
        with pytest.raises(ValueError, match="no preferred cell diameter"):
            resolve_scale(model, None, 12.0)
    finally:
        model.recommended = saved
    with pytest.raises(ValueError, match="not both"):
        resolve_scale(model, 2.0, 12.0)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            resolve_scale(model, bad, None)
    with pytest.raises(ValueError, match="outside"):
        resolve_scale(model, 40.0, None)
    model.recommended = {**saved, "cell_diameter": 28.0}
    try:  # a diameter typed in the wrong unit would blow 1024 px frames up to 28,000 px
        with pytest.raises(ValueError, match="diameter in pixels"):
            resolve_scale(model, None, 1.0)
    finally:
        model.recommended = saved
    with pytest.raises(ValueError, match="windows"):
        track(movie, [Prompt(0, 1, [[30, 40]], [1])], model=model, scale=2.0, windows=False)


def test_small_scaled_frames_are_padded_not_enlarged_again(model):
    """A scaled frame smaller than the input (a 61 x 57 slice enlarged 2x) already shows cells at
    the size asked for: its window is padded to the input, not enlarged again by the model's
    max_upscale (which scale 1 keeps); masks still come back on the recorded pixels."""
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.tiled_track import TiledTracker

    movie, truth = _moving_disc(n=3, h=61, w=57, r=6, step=1, x0=20)
    pred = SAM2VideoPredictor(model)
    assert model.config.max_upscale > 1
    for scale, expected in ((2.0, 1.0), (1.0, model.config.max_upscale)):
        tracker = TiledTracker(pred, movie, scale=scale)
        try:
            state = tracker._state(0)
            assert state.features.max_upscale == expected
            assert pred.canvas_hw(state) == ((model.image_size,) * 2 if scale == 2.0 else
                                             (model.image_size // 2,) * 2)
        finally:
            tracker.close()
    lab = track(movie, [Prompt(0, 1, [[20, 30]], [1])], model=pred, scale=2.0)
    assert lab.shape == movie.shape and _iou(lab[0] == 1, truth[0]) > 0.5


def test_prompts_join_on_their_frame_and_corrections_move_objects(model):
    movie, truth = _moving_disc(n=12)
    vp = SAM2VideoPredictor(model)
    tracker = TiledTracker(vp, movie)
    late = Prompt(5, 2, [[120, 80]], [1])
    res = dict(tracker.run([Prompt(0, 1, [[110, 80]], [1]), late], 0))
    assert [r.obj_id for r in res[4]] == [1] and sorted(r.obj_id for r in res[5]) == [1, 2]
    assert tracker.prompted(5) == {2} and tracker.prompted(4) == set()
    # both ways: a second nucleus first clicked on frame 5 is also tracked back to frame 0
    yy, xx = np.mgrid[:160, :300]
    d2 = np.hypot(yy - 40, xx - 230)
    two = (movie + 2500 / (1 + np.exp((d2 - 12) / 1.5))).astype(np.uint16)
    second = d2 <= 12
    prompts = [Prompt(0, 1, [[110, 80]], [1]), Prompt(5, 2, [[230, 40]], [1])]
    fwd = track(two, prompts, model=vp, direction="forward", windows=True)
    both = track(two, prompts, model=vp, direction="both", windows=True)
    assert not (fwd[:5] == 2).any() and all(_iou(fwd[f] == 2, second) > 0.5 for f in range(5, 12))
    assert all(_iou(both[f] == 2, second) > 0.5 for f in range(12))
    assert (both[:, ~second] == fwd[:, ~second]).mean() > 0.99  # object 1 as without the second pass
    # a click far from the object's window moves it there (a new keyframe)
    far = Prompt(8, 1, [[280, 80]], [1])
    res = dict(tracker.run([Prompt(0, 1, [[110, 80]], [1]), far], 0))
    assert tracker.home[1] == tracker.window_of(80, 280) == 1
    tracker.close()
    with pytest.raises(IndexError, match="outside the stack"):
        list(tracker.run([Prompt(40, 1, [[110, 80]], [1])], 0))
    # clicks off the frame are refused (not moved into a window), before anything is tracked
    for bad in ([[-20, 80]], [[110, 400]], [[float("nan"), 3]]):
        with pytest.raises(ValueError, match="outside|NaN"):
            list(tracker.run([Prompt(0, 1, [[110, 80]], [1]), Prompt(3, 2, bad, [1])], 0))
    with pytest.raises(ValueError, match="outside"):
        tracker.preview(0, [Prompt(0, 1, box=[100, 70, 120, 900])])
    assert list(tracker.run([Prompt(0, 1, [[110, 80]], [1])], 0, max_frames=1))  # still usable


def test_track_step_tracks_frame_zero_in_reverse(model):
    movie, _ = _moving_disc(n=3, w=200)
    vp = SAM2VideoPredictor(model)
    state = vp.init_state(movie)
    vp.add_new_points_or_box(state, 2, 1, points=[[114, 80]], labels=[1])
    for f in (2, 1, 0):
        got, ids, low = vp.track_step(state, f, reverse=True)
        assert got == f and ids == [1] and low.shape[0] == 1
    assert state.objects[1].tracked == {2: True, 1: True, 0: True}
    with torch.no_grad(), pytest.raises(IndexError):
        vp.track_step(state, 3)


def test_objects_of_several_states_go_through_the_model_as_one_batch(model):
    """track_step_many (windows of a stack as one batch, each with its own features and memory)
    computes what track_step computes state by state, within float rounding."""
    sim = simulate_cells(4, (256, 400), seed=7)
    crops = (sim.movie[:, :, :200], sim.movie[:, :, 200:])
    labs = (sim.labels[:, :, :200], sim.labels[:, :, 200:])
    rng = np.random.default_rng(0)
    clicks = []
    for lab in labs:
        ids = [int(i) for i in np.unique(lab[0]) if i and (lab[0] == i).sum() > 60][:2]
        clicks.append([(i, P.click_inside(lab[0] == i, rng, central=True)) for i in ids])
    outs = {}
    calls = []
    for batched in (False, True):
        vp = SAM2VideoPredictor(model)
        states = [vp.init_state(c) for c in crops]
        for st, cl in zip(states, clicks):
            for i, pt in cl:
                vp.add_new_points_or_box(st, 0, i, points=pt, labels=[1])
        got = []
        for f in range(4):
            if batched:
                got.append(vp.track_step_many(states, f))
            else:
                got.append([vp.track_step(st, f)[1:] for st in states])
        outs[batched] = got
        calls.append(sum(st.features.encoded for st in states))
    assert calls == [8, 8]  # every window frame encoded once either way (batched: 2 at a time)
    for a, b in zip(outs[False], outs[True]):
        for (ids_a, low_a), (ids_b, low_b) in zip(a, b):
            assert ids_a == ids_b
            assert torch.allclose(low_a, low_b, atol=1e-2), float((low_a - low_b).abs().max())
            assert ((low_a > 0) == (low_b > 0)).float().mean() > 0.999
