"""Fast mode: window geometry, RoPE at true coordinates, precision choice, fidelity to exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_core import precision
from sam2_core.modeling.position_encoding import axial_rope_tables, window_rope_tables
from sam2_core.predictor import windows as win
from sam2_core.predictor.video import SAM2VideoPredictor


def test_window_rope_tables_are_slices_of_the_grid_tables():
    cos, sin = axial_rope_tables(64, 16, 12)  # 12 rows x 16 columns
    grid_cos = cos.reshape(12, 16, -1)
    grid_sin = sin.reshape(12, 16, -1)
    wc, ws = window_rope_tables(64, (3, 5, 4, 6))
    assert torch.equal(wc, grid_cos[3:7, 5:11].reshape(24, -1))
    assert torch.equal(ws, grid_sin[3:7, 5:11].reshape(24, -1))


def test_explicit_full_grid_rope_equals_implicit(tiny256):
    """The per-item table path computes exactly what the shared-table path does."""
    model = tiny256
    g = model.image_size // 16
    c, cm = model.config.d_model, model.config.mem_dim
    gen = torch.Generator().manual_seed(0)
    vis, pos = torch.randn(2, c, g, g, generator=gen), torch.randn(2, c, g, g, generator=gen)
    n_ptr = 8
    mem = torch.randn(2, 3 * g * g + n_ptr, cm, generator=gen)
    mem_pos = torch.randn(2, 3 * g * g + n_ptr, cm, generator=gen)
    with torch.inference_mode():
        ref = model.condition_on_memory(vis, pos, mem, mem_pos, n_ptr)
        q = model.memory_attention.window_rope(win.full((g, g)), vis.device)
        k = tuple(torch.cat([t] * 3) for t in q)
        rope = (tuple(t.expand(2, -1, -1) for t in q), tuple(t.expand(2, -1, -1) for t in k))
        got = model.condition_on_memory(vis, pos, mem, mem_pos, n_ptr, rope)
    assert torch.allclose(ref, got, atol=1e-5, rtol=1e-5)


def test_place_clamps_inside_the_grid_and_falls_back_to_the_grid():
    assert win.place((0.0, 0.0), 8, (16, 16)) == (0, 0, 8, 8)
    assert win.place((15.5, 15.5), 8, (16, 16)) == (8, 8, 8, 8)
    assert win.place((8.0, 4.0), 8, (16, 16)) == (4, 0, 8, 8)
    assert win.place((8.0, 8.0), 16, (16, 16)) is None  # as large as the grid: exact path


def test_window_side_rounds_up_to_the_quantum():
    assert win.window_side(1.0, 2) == 8
    assert win.window_side(4.5, 2) == 12
    assert win.window_side(0.0, 0) == 4
    assert win.auto_margin(64) == 4 and win.auto_margin(128) == 8 and win.auto_margin(16) == 5


def test_mask_stats_crop_paste_and_border():
    low = torch.full((64, 64), -5.0)
    low[20:28, 36:40] = 3.0  # rows 20..27, cols 36..39 (low-res px, 4 per token)
    center, side = win.mask_stats(low, None)
    assert center == pytest.approx((6.0, 9.5)) and side == pytest.approx(2.0)
    w = (4, 7, 6, 6)
    assert win.mask_stats(low, w) == (center, side)
    part = win.crop(low[None, None], w, 4)
    assert part.shape == (1, 1, 24, 24)
    back = win.paste(part, w, 64, -1024.0)
    assert torch.equal(back[0, 0, 16:40, 28:52], low[16:40, 28:52])
    assert float(back[0, 0, 0, 0]) == -1024.0
    assert not win.touches_border(part, w, (16, 16))
    inner = torch.full((1, 1, 24, 24), -1.0)
    inner[..., 2:-2, 0] = 1.0  # on the window's left edge, which is inside the grid
    assert win.touches_border(inner, w, (16, 16))
    assert not win.touches_border(inner, (4, 0, 6, 6), (16, 16))  # there the edge is the grid's
    assert win.mask_stats(torch.full((64, 64), -1.0), None) == (None, 0.0)


def test_predict_center_constant_velocity():
    assert win.predict_center(None, (1.0, 1.0)) == (None, 0.0)
    assert win.predict_center((5.0, 5.0), None) == ((5.0, 5.0), 0.0)
    c, step = win.predict_center((5.0, 7.0), (2.0, 3.0))
    assert c == (8.0, 11.0) and step == pytest.approx(5.0)


def test_track_precision_makes_a_predictor_only_when_asked(tiny256):
    from sam2_core.track import _as_predictor

    pred = SAM2VideoPredictor(tiny256)  # exact mode, float32
    assert _as_predictor(pred, None) is pred and _as_predictor(pred, None, None, "fp32") is pred
    bf16 = _as_predictor(pred, None, None, "bf16")  # only the precision asked: the speed mode stays
    assert bf16 is not pred and bf16.model is tiny256 and bf16.speed == "exact"
    assert bf16.precision is torch.bfloat16 and _as_predictor(bf16, None, None, "bf16") is bf16
    fast = _as_predictor(pred, None, "fast", "fp32")
    assert fast.speed == "fast" and fast.precision is None
    assert _as_predictor(pred, None, "fast").precision is precision.resolve("auto", "cpu")
    from napari_sam2.cli import PRECISIONS

    assert tuple(PRECISIONS) == precision.PRECISIONS  # the CLI offers every choice the predictor takes


def test_precision_names_and_cpu_choice():
    assert precision.resolve("fp32", "cpu") is None
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve("int8", "cpu")
    auto = precision.resolve("auto", "cpu")
    assert auto is (torch.bfloat16 if precision.cpu_speedup(torch.bfloat16) > 1.2 else None)
    assert precision.name(auto) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="speed must be one of"):
        SAM2VideoPredictor.__init__(object.__new__(SAM2VideoPredictor), None, speed="turbo")


@pytest.fixture(scope="module")
def bundled():
    from sam2_core import build_sam2
    from sam2_core.build import bundled_checkpoint

    if bundled_checkpoint() is None:
        pytest.skip("no bundled weights in this installation")
    return build_sam2("default", device="cpu")


def _track(pred, sim, clicks, n_frames):
    state = pred.init_state(sim.movie[:n_frames])
    for cid, pt in clicks.items():
        pred.add_new_points_or_box(state, 0, cid, points=pt, labels=[1])
    out = {f: (logits[:, 0] > 0).numpy() for f, _, logits in pred.propagate_in_video(state)}
    return state, out


def test_fast_mode_follows_the_exact_path(bundled):
    """On a held-out simulated movie, fast masks match exact ones and really use windows."""
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train import prompts as P

    sim = simulate_cells(12, (256, 256), seed=10_001)
    rng = np.random.default_rng(0)
    ids, areas = np.unique(sim.labels[0], return_counts=True)
    objs = [int(i) for i, a in zip(ids, areas) if i and a >= 40][:6]
    clicks = {cid: P.click_inside(sim.labels[0] == cid, rng, central=True) for cid in objs}
    _, exact = _track(SAM2VideoPredictor(bundled), sim, clicks, 12)
    fast_pred = SAM2VideoPredictor(bundled, speed="fast")
    state, fast = _track(fast_pred, sim, clicks, 12)
    ious = []
    for f in range(1, 12):
        for a, b in zip(exact[f], fast[f]):
            union = (a | b).sum()
            if union:
                ious.append((a & b).sum() / union)
    assert np.median(ious) >= 0.9, np.median(ious)
    grid = bundled.image_size // 16
    windowed = [o.non_cond[11] for o in state.objects.values() if o.non_cond[11].window is not None]
    assert windowed, "no object was tracked in a window"
    for out in windowed:
        h, w = out.window[2:]
        assert out.maskmem_features.shape[-2:] == (h, w) and h < grid
        low = out.pred_masks[0, 0]
        inside = win.crop(low[None, None], out.window, 4)
        assert float(low.max()) == float(inside.max())  # nothing outside the window
    fast_pred.close_state(state)


def test_fast_mode_corrections_and_reverse(bundled):
    """A correction click on a tracked frame (the exact decoder over windowed memories), then
    propagation both ways, works in fast mode: the object is kept and the masks agree with the
    exact path's for the same prompts."""
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train import prompts as P

    sim = simulate_cells(8, (256, 256), seed=10_002)
    ids, areas = np.unique(sim.labels[4], return_counts=True)
    cid = int(min((a, i) for i, a in zip(ids[1:], areas[1:]) if a >= 60)[1])  # small: it gets a window
    truth6 = sim.labels[6] == cid
    click = P.click_inside(truth6, np.random.default_rng(1), central=True)
    runs = {}
    for speed in ("fast", "exact"):
        pred = SAM2VideoPredictor(bundled, speed=speed)
        state = pred.init_state(sim.movie)
        pred.add_new_mask(state, 4, cid, sim.labels[4] == cid)  # a true mask: a small window
        list(pred.propagate_in_video(state, start_frame_idx=4))
        if speed == "fast":
            assert state.objects[cid].cond[4].window is not None
        _, _, masks = pred.add_new_points_or_box(state, 6, cid, points=click, labels=[1])
        assert masks.shape == (1, 1, 256, 256)
        back = {f: m[0, 0].numpy() > 0 for f, _, m in pred.propagate_in_video(state, start_frame_idx=6, reverse=True)}
        assert sorted(back) == [0, 1, 2, 3, 4, 5, 6]
        obj = state.objects[cid]
        assert 4 in obj.cond and 6 in obj.cond
        runs[speed] = back
    iou = lambda a, b: (a & b).sum() / max((a | b).sum(), 1)  # noqa: E731
    fast, exact = runs["fast"], runs["exact"]
    assert iou(fast[6], truth6) > 0.3  # the corrected object is still the clicked cell
    assert np.median([iou(fast[f], exact[f]) for f in range(7)]) >= 0.9


def test_max_window_side_caps_every_window(tiny256):
    """Random weights give sprawling masks that would push windows to the whole grid; a cap
    keeps every window (and so the cost per object) bounded."""
    movie = np.random.default_rng(0).integers(0, 4000, (6, 256, 256)).astype(np.uint16)
    mask = np.zeros((256, 256), bool)
    mask[100:120, 90:112] = True
    with pytest.raises(ValueError, match="at least 4"):
        SAM2VideoPredictor(tiny256, speed="fast", max_window_side=2)
    pred = SAM2VideoPredictor(tiny256, speed="fast", max_window_side=9)  # rounded down to 8
    assert pred.max_window_side == 8 and pred.provenance()["max_window_side"] == 8
    state = pred.init_state(movie)
    pred.add_new_mask(state, 0, 1, mask)
    list(pred.propagate_low_res(state))
    outs = [state.objects[1].non_cond[f] for f in range(1, 6)]
    assert all(o.window is None or o.window[2:] == (8, 8) for o in outs)
    assert sum(o.window is not None for o in outs) >= 4  # at most the periodic whole-grid search
    pred.close_state(state)


def test_compile_falls_back_to_eager_with_a_warning(tiny256, monkeypatch):
    from sam2_core import compile as sam2_compile

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(sam2_compile.torch, "compile", broken)
    x = torch.zeros(1, 3, 256, 256)
    with torch.inference_mode():
        ref = tiny256.image_encoder(x)["vision_features"]
        eager_forward = tiny256.image_encoder.forward
        try:
            sam2_compile.compile_model(tiny256, parts=("image_encoder",))
            with pytest.warns(UserWarning, match="torch.compile of image_encoder failed"):
                got = tiny256.image_encoder(x)["vision_features"]
            assert torch.equal(ref, got)
            assert tiny256.image_encoder.forward == eager_forward  # eager from now on
        finally:
            tiny256.image_encoder.__dict__.pop("forward", None)
            tiny256.image_encoder.__dict__.pop("_sam2_compiled", None)
