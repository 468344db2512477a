"""Training: simulator, prompt simulation, losses, the clip step, the resumable loop, evaluation, CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch

from sam2_core import build_sam2
from sam2_core.config import DEFAULT_CONFIG, HieraConfig, SAM2Config
from sam2_core.modeling.sam2 import SAM2Model
from sam2_core.simulate_cells import simulate_cells
from sam2_core.train import TrainConfig, train
from sam2_core.train import prompts as P
from sam2_core.train.data import SimulatedPool, StackPool, from_simulation, make_clip
from sam2_core.train.losses import step_losses

TINY = SAM2Config(
    name="test-tiny",
    trunk=HieraConfig(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,), window_spec=(4, 4, 4, 4)),
    image_size=64, d_model=32, mem_dim=16, memory_attention_layers=1, memory_attention_ffn=32, decoder_mlp_dim=32,
)


def test_simulator_labels_tracks_and_lineage():
    sim = simulate_cells(30, (96, 96), seed=3, division_rate=0.05, radius=(6, 9), n_cells=12)
    again = simulate_cells(30, (96, 96), seed=3, division_rate=0.05, radius=(6, 9), n_cells=12)
    assert np.array_equal(sim.movie, again.movie) and np.array_equal(sim.labels, again.labels)
    assert sim.movie.dtype == np.uint16 and sim.labels.shape == sim.movie.shape
    ids = {int(t[0]): t for t in sim.tracks}
    assert set(np.unique(sim.labels)) - {0} == set(ids)
    for cid, (_, begin, end, parent) in ids.items():  # an id appears only within its span
        present = [t for t in range(30) if (sim.labels[t] == cid).any()]
        assert present[0] == begin and present[-1] == end
        if parent:
            assert ids[parent][2] < begin  # the mother is gone when the daughter appears
    assert any(t[3] > 0 for t in sim.tracks), "expected divisions at this rate"
    mother = next(int(t[3]) for t in sim.tracks if t[3] > 0)
    assert len(sim.descendants(mother)) >= 3
    # cells inside the field are brighter than the background on average
    assert sim.movie[0][sim.labels[0] > 0].mean() > sim.movie[0][sim.labels[0] == 0].mean()


def test_prompt_simulation():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 5:25] = True
    for _ in range(20):
        (x, y), = P.click_inside(mask, rng)
        assert mask[int(y), int(x)]
    (x, y), = P.click_inside(mask, rng, central=True)
    assert abs(x - 15) <= 1 and abs(y - 20) <= 1
    assert np.allclose(P.box_of(mask), [[5, 10], [25, 30]])
    pred = mask.copy()
    pred[10:30, 15:25] = False  # missed the right half -> positive click there
    pt, label = P.corrective_click(pred, mask, rng)
    assert label == 1 and mask[int(pt[0, 1]), int(pt[0, 0])] and not pred[int(pt[0, 1]), int(pt[0, 0])]
    spill = mask.copy()
    spill[:, 25:45] = True  # spilled to the right -> negative click outside the object
    pt, label = P.corrective_click(spill, mask, rng)
    assert label == 0 and not mask[int(pt[0, 1]), int(pt[0, 0])]
    assert P.corrective_click(mask, mask, rng) is None


def test_losses():
    target = torch.zeros(2, 32, 32)
    target[:, 8:20, 8:20] = 1
    target[1] = 0  # object 2 absent
    good = (target * 40 - 20)[:, None].repeat(1, 3, 1, 1)
    bad = -good
    ious = torch.tensor([[1.0, 1, 1], [0.5, 0.5, 0.5]])
    score = torch.tensor([[8.0], [-8.0]])
    lg = step_losses(good, ious, score, target)
    lb = step_losses(bad, ious, score, target)
    assert lg["miou"] == pytest.approx(1.0) and lg["dice"] < 0.01 and lg["focal"] < 1e-3
    assert lb["total"] > 10 * lg["total"] and lb["miou"] == 0
    assert lg["score"] < 0.01 and step_losses(good, ious, -score, target)["score"] > 5


def test_clip_from_simulation_and_stacks():
    rng = np.random.default_rng(0)
    sim = simulate_cells(8, (80, 80), seed=1, n_cells=6, radius=(6, 8))
    clip = make_clip(from_simulation(sim), 64, 4, 3, rng)
    assert clip.frames.shape == (4, 3, 64, 64) and clip.targets.shape == (len(clip.ids), 4, 64, 64)
    assert 1 <= len(clip.ids) <= 3 and all(clip.targets[:, 0].flatten(1).amax(1) == 1)
    pool = StackPool([from_simulation(sim)], 64)
    assert pool.sample(10, 2).frames.shape[0] == 8  # clipped to the movie's length


def test_clips_of_spaced_frames():
    """stride s takes every s-th frame; a stride too long for the movie is shortened to fit."""
    from sam2_core.train.data import LabelledMovie

    n = 9
    labels = np.zeros((n, 64, 64), np.int32)
    for t in range(n):
        labels[t, 10 : 14 + t, 10 : 14 + t] = 1  # side 4 + t: the clip's areas tell its frames
    item = LabelledMovie(np.random.default_rng(0).normal(100, 10, (n, 64, 64)).astype(np.float32), labels, {})
    rng = np.random.default_rng(0)
    for stride, expect in ((1, 1), (2, 2), (3, 2), (100, 2)):  # 4 frames spanning at most 9: stride <= 2
        for _ in range(5):
            clip = make_clip(item, 64, 4, 1, rng, stride=stride)
            sides = np.sqrt(clip.targets[0].sum((1, 2)).numpy())
            assert clip.frames.shape[0] == 4 and np.allclose(np.diff(sides), expect), (stride, sides)
    pool = StackPool([item], 64, seed=1)
    seen = {float(np.diff(np.sqrt(pool.sample(3, 1, max_stride=4).targets[0].sum((1, 2)).numpy()))[0])
            for _ in range(40)}
    assert seen == {1.0, 2.0, 3.0, 4.0}  # 3 frames of 9: every stride up to 4 fits


def test_clip_limits_from_the_whole_movie():
    """limits="movie" normalises a clip as the predictor normalises the whole stack: a late clip of a
    photobleached movie stays dim; "clip" stretches it to its own range."""
    from sam2_core.train.data import LabelledMovie

    n = 20
    labels = np.zeros((n, 64, 64), np.int32)
    labels[:, 20:40, 20:40] = 1
    movie = np.stack([np.where(labels[t] > 0, 1000.0, 100.0) * np.exp(-0.1 * t) for t in range(n)]).astype(np.float32)
    item = LabelledMovie(movie, labels, {})
    means = {}
    for limits in ("clip", "movie"):
        vals = []
        for _ in range(20):
            clip = make_clip(item, 64, 3, 1, np.random.default_rng(len(vals)), augment=False, limits=limits)
            vals.append(float(clip.frames[:, 0][clip.targets[0] > 0].mean()))
        means[limits] = np.array(vals)
    assert means["movie"].std() > 0.3 and means["clip"].std() < 0.05  # dim late clips vs all stretched alike
    with pytest.raises(ValueError, match="'clip' or 'movie'"):
        make_clip(item, 64, 3, 1, np.random.default_rng(0), limits="stack")
    assert StackPool([item], 64).limits == "movie"  # fine-tuning normalises as the predictors do


def test_warm_frames_train_only_the_later_frames():
    """warm_frames: frames 1..W are tracked without gradient or loss; the clip step still trains
    the prompted frame and the frames after the warm ones, and a clip too short is handled."""
    from sam2_core.train.loop import clip_forward

    torch.manual_seed(0)
    model = SAM2Model(TINY)
    clip = SimulatedPool(64, size=1, movie_len=6, seed=0, renew_every=10**9).sample(6, 2)
    cfg = TrainConfig(clip_len=6, prob_box=0.0, prob_mask=0.0, prob_correct=0.0)
    seen = []
    for warm in (0, 3, 10):  # 10 > what the clip allows: capped at T - 2
        model.zero_grad()
        losses = clip_forward(model, clip, dataclasses.replace(cfg, warm_frames=warm), np.random.default_rng(0))
        losses["total"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(losses["total"]) and grads and all(torch.isfinite(g).all() for g in grads)
        seen.append(float(losses["total"].detach()))
    assert seen[0] != seen[1] != seen[2]  # different frames carry the loss
    from sam2_core.train.loop import _encode

    def grad_from(t: int) -> float:  # frames 1-3 are encoded without gradient, in their place in the clip
        model.zero_grad()
        _encode(model, clip.frames, 3).vision_features[t].sum().backward()
        return sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)

    assert [grad_from(t) > 0 for t in range(6)] == [True, False, False, False, True, True]
    with torch.no_grad():
        whole = model.eval().encode_image(clip.frames).vision_features
        warm = _encode(model, clip.frames, 3).vision_features
    assert torch.allclose(whole, warm, atol=1e-5)


def test_training_learns_and_resumes(tmp_path):
    torch.manual_seed(0)
    model = SAM2Model(TINY)
    pool = SimulatedPool(64, size=2, movie_len=4, seed=0, renew_every=10**9)
    fixed = pool.sample(3, 2)

    class One:  # overfit one clip: the loss must fall
        def sample(self, *_):
            return fixed

    cfg = TrainConfig(steps=40, lr=2e-3, warmup=2, clip_len=3, max_objects=2, save_every=20, prob_correct=0.0,
                      prob_box=0.0, prob_mask=0.0)
    out = tmp_path / "tiny.pt"
    hist = train(model, One(), cfg, out, progress=False)
    first, last = np.mean([r["total"] for r in hist[:5]]), np.mean([r["total"] for r in hist[-5:]])
    assert last < 0.6 * first, (first, last)
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert set(raw["model"]) == set(model.state_dict()) and raw["step"] == 40  # Meta's format + ours
    loaded = build_sam2(checkpoint=out, device="cpu")
    assert loaded.config == TINY
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # resume: continue the same file to 45 steps
    more = train(SAM2Model(TINY), One(), dataclasses.replace(cfg, steps=45), out, progress=False)
    assert len(more) == 45 and [r["step"] for r in more[40:]] == [40, 41, 42, 43, 44]


def test_evaluate_runs_on_any_model():
    from sam2_core.train.evaluate import evaluate

    torch.manual_seed(0)
    m = evaluate(SAM2Model(TINY).eval(), n_movies=1, n_frames=3, size=64, max_objects=2)
    assert 0 <= m.single_click_iou <= 1 and 0 <= m.propagated_iou <= 1
    assert m.n_click_objects > 0 and m.n_tracked_objects > 0 and m.seconds_per_frame > 0
    assert m.best_of_three_click_iou == m.single_click_iou  # Meta's config: the default is the best of three
    assert np.isnan(m.propagated_iou_lo) and np.isnan(m.single_click_iou_hi)  # one movie: no interval
    # no tracked cell divides in these 3 frames: the undivided median is the propagated one
    assert m.n_divided == 0 and m.n_undivided == m.n_tracked_objects
    assert m.propagated_iou_undivided == m.propagated_iou
    torch.manual_seed(0)
    single = evaluate(SAM2Model(TINY.replace(multimask_output_in_sam=False)).eval(), n_movies=1, n_frames=3,
                      size=64, max_objects=2, n_leaving=0, n_volumes=0)
    assert single.best_of_three_click_iou == m.best_of_three_click_iou  # same weights, same clicks
    assert 0 <= single.single_click_iou <= 1
    # the propagated part with the cells brought to the model's preferred diameter, in windows
    model = SAM2Model(TINY).eval()
    kw = dict(n_movies=1, n_frames=3, size=64, max_objects=2, n_leaving=0, n_volumes=0)
    with pytest.raises(ValueError, match="preferred cell diameter"):
        evaluate(model, cell_diameter=True, **kw)
    model.recommended = {"cell_diameter": 40.0}
    scaled = evaluate(model, cell_diameter=True, **kw)
    assert scaled.cell_diameter == 40.0 and np.isnan(single.cell_diameter)
    assert scaled.n_tracked_objects == single.n_tracked_objects and 0 <= scaled.propagated_iou <= 1
    assert 0 <= scaled.click_iou_at_diameter <= 1 and np.isnan(single.click_iou_at_diameter)


def test_median_interval_resamples_whole_movies():
    from sam2_core.train.evaluate import median_interval

    assert all(np.isnan(median_interval([[0.5, 0.6]])))  # one movie: no interval
    assert median_interval([[0.7] * 5, [0.7] * 3, []]) == (0.7, 0.7)
    # two kinds of movie, each consistent inside: the median depends on which kinds are drawn
    movies = [[0.9] * 8, [0.9] * 8, [0.3] * 8, [0.3] * 8, [0.9, 0.3] * 4]
    lo, hi = median_interval(movies)
    assert lo == 0.3 and hi == 0.9
    # many movies of the same mixture: the interval narrows around the pooled median
    rng = np.random.default_rng(0)
    mixed = [list(rng.uniform(0.6, 0.8, 8)) for _ in range(40)]
    lo, hi = median_interval(mixed)
    assert lo < np.median(np.concatenate(mixed)) < hi and hi - lo < 0.05
    assert median_interval(mixed) == (lo, hi)  # seeded: the same figures every run


def test_drifting_cells_leave_the_field_and_are_scored():
    from sam2_core.train.evaluate import evaluate, leaving_cells

    sim = simulate_cells(10, (64, 64), seed=4, n_cells=6, radius=(5, 7), drift=(0.0, 6.0))
    gone = leaving_cells(sim, 10, np.random.default_rng(0))
    assert gone, "cells drifting 6 px per frame must leave a 64 px field within 10 frames"
    for cid in gone:
        alive = [(sim.labels[t] == cid).any() for t in range(10)]
        assert alive[0] and not alive[-1] and not any(alive[alive.index(False):])  # left for good
    assert simulate_cells(3, (32, 32), seed=4).params["drift"] is None
    torch.manual_seed(0)
    m = evaluate(SAM2Model(TINY).eval(), n_movies=1, n_frames=12, size=64, max_objects=2, n_leaving=2)
    assert m.n_leaving_objects > 0 and m.n_absent_frames > 0
    assert 0 <= m.absent_accuracy <= 1 and (np.isnan(m.present_accuracy) or 0 <= m.present_accuracy <= 1)


def test_leaving_cells_on_a_neighbour_count_as_present_not_on_the_cell(monkeypatch):
    """``present_on_cell`` tells a mask on the cell from one that slid onto a neighbour."""
    import sam2_core.train.evaluate as E

    sims = []
    real = E.simulate_cells
    monkeypatch.setattr(E, "simulate_cells", lambda *a, **k: sims.append(real(*a, **k)) or sims[-1])

    class Fake:  # the masks of a chosen cell: the truth, or the cell's largest neighbour
        def __init__(self, neighbour: bool):
            self.neighbour = neighbour

        def init_state(self, movie):
            return {"ids": []}

        def add_new_points_or_box(self, state, frame, obj_id, **kw):
            state["ids"].append(obj_id)

        def propagate_in_video(self, state):
            labels = sims[-1].labels
            for f in range(labels.shape[0]):
                out = []
                for c in state["ids"]:
                    if self.neighbour:
                        others, n = np.unique(labels[f][(labels[f] > 0) & (labels[f] != c)], return_counts=True)
                        m = labels[f] == others[np.argmax(n)] if n.size else np.zeros(labels[f].shape, bool)
                    else:
                        m = labels[f] == c
                    out.append(np.where(m, 1.0, -1.0)[None])
                yield f, state["ids"], torch.from_numpy(np.stack(out))

        def close_state(self, state):
            pass

    gone, shown, on_cell, n = E._leaving(Fake(False), 4, 12, 128, 3, 11_000)
    assert n > 0 and shown and np.mean(shown) == 1.0 and np.mean(on_cell) == 1.0 and np.mean(gone) == 1.0
    gone, shown, on_cell, n = E._leaving(Fake(True), 4, 12, 128, 3, 11_000)
    assert np.mean(shown) > 0.9 and np.mean(on_cell) == 0.0  # present, but on a neighbour
    assert np.mean(gone) < 0.1  # and still there after the cell left


def test_simulated_volume_nuclei_end_in_place():
    """A volume's nuclei span a few slices and end inside the stack; the pool mixes volumes in on
    request and draws exactly the old movies without; evaluate scores tracking through z."""
    from sam2_core.simulate_volume import simulate_volume
    from sam2_core.train.evaluate import evaluate

    vol = simulate_volume(20, (64, 64), seed=1, radius=(5, 7))
    assert vol.movie.dtype == np.uint16 and vol.labels.shape == vol.movie.shape == (20, 64, 64)
    assert np.array_equal(vol.movie, simulate_volume(20, (64, 64), seed=1, radius=(5, 7)).movie)
    ids = {int(t[0]): t for t in vol.tracks}
    assert set(np.unique(vol.labels)) - {0} == set(ids) and len(ids) > 10
    inner = [t for t in ids.values() if t[1] > 0 and t[2] < 19]
    assert inner, "nuclei must end inside the stack"
    for cid, first, last, parent in inner:
        present = (vol.labels == cid).any((1, 2))
        assert present[first] and present[last] and not present[:first].any() and not present[last + 1:].any()
        assert parent == 0 and last - first < 15
    assert vol.movie[vol.labels > 0].mean() > vol.movie[vol.labels == 0].mean()

    without = SimulatedPool(64, size=1, movie_len=6, seed=3)
    assert np.array_equal(without.items[0].movie, simulate_cells(6, (64, 64), seed=4_000_001).movie)
    only = SimulatedPool(64, size=1, movie_len=6, seed=3, volumes=1.0)
    assert np.array_equal(only.items[0].movie, simulate_volume(6, (64, 64), seed=4_000_001).movie)

    torch.manual_seed(0)
    m = evaluate(SAM2Model(TINY).eval(), n_movies=1, n_frames=3, size=64, max_objects=2, n_leaving=0, n_volumes=1)
    assert m.n_volume_objects > 0 and 0 <= m.volume_iou <= 1 and 0 <= m.volume_absent_accuracy <= 1


def test_pool_drift_makes_cells_leave_the_field():
    from scipy import ndimage

    def ids(frame):
        return set(np.unique(frame)) - {0}

    still = SimulatedPool(128, size=4, movie_len=30, seed=5)
    drifting = SimulatedPool(128, size=4, movie_len=30, seed=5, drift=1.0, drift_speed=(3.0, 3.0))
    shifts = []
    for a, b in zip(still.items, drifting.items):
        # the same cells (same seeds) on the first frame, then drifting 3 px per frame: 87 px by the last
        assert np.array_equal(a.labels[0] > 0, b.labels[0] > 0)
        shifts += [np.hypot(*np.subtract(ndimage.center_of_mass(b.labels[-1] == c), ndimage.center_of_mass(b.labels[0] == c)))
                   for c in ids(b.labels[0]) & ids(b.labels[-1])]
        # more cells of the first frame are gone by the last (divided cells are gone in both)
        assert len(ids(b.labels[0]) - ids(b.labels[-1])) > len(ids(a.labels[0]) - ids(a.labels[-1]))
    assert len(shifts) >= 4 and np.median(shifts) > 40
    half = SimulatedPool(64, size=20, movie_len=4, seed=5, drift=0.5)
    base = SimulatedPool(64, size=20, movie_len=4, seed=5)
    same = sum(np.array_equal(a.labels, b.labels) for a, b in zip(half.items, base.items))
    assert 3 < same < 17  # about half the movies drift; the others are drawn exactly as without drift


def test_default_config_is_small():
    n = sum(p.numel() for p in SAM2Model(DEFAULT_CONFIG).parameters())
    assert n * 2 < 25e6  # shipped as float16: under the 25 MB budget


def test_cli_train_on_labelled_stack(tmp_path, capsys):
    from napari_sam2.cli import main
    from sam2_core import save_checkpoint

    sim = simulate_cells(5, (64, 64), seed=2, n_cells=4, radius=(6, 8))
    tifffile.imwrite(tmp_path / "img.tif", sim.movie)
    tifffile.imwrite(tmp_path / "lab.tif", sim.labels.astype(np.uint16))
    torch.manual_seed(0)
    start = save_checkpoint(SAM2Model(TINY), tmp_path / "start.pt")
    args = ["train", "--images", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif"), "--model",
            str(start), "--steps", "2", "--clip-len", "3", "--max-stride", "2", "--out", str(tmp_path / "ft.pt")]
    assert main(args) == 0
    assert "step 2" in capsys.readouterr().out
    assert torch.load(tmp_path / "ft.pt", weights_only=True)["train_config"]["max_stride"] == 2
    assert build_sam2(checkpoint=tmp_path / "ft.pt", device="cpu").config == TINY
    assert main(args[:3] + ["--out", str(tmp_path / "x.pt")]) == 1  # labels missing
    assert "must pair up" in capsys.readouterr().err


def test_bundled_recipe_runs_all_phases(tmp_path):
    from sam2_core.train.recipe import PHASE_C, PHASE_D, PHASE_F, PHASE_N, train_bundled

    hist = train_bundled(tmp_path / "d.pt", steps=3, progress=False)
    assert len(hist) == 1  # the last phase's log; every phase ran one step into its own file
    for name, clip_len in (("A", 1), ("B", 4), ("C", PHASE_C.clip_len)):
        ck = torch.load(tmp_path / f"d.phase{name}.pt", weights_only=True)
        assert ck["step"] == 1 and ck["train_config"]["clip_len"] == clip_len, name
    d = torch.load(tmp_path / "d.phaseD.pt", weights_only=True)
    assert d["train_config"]["clip_len"] == PHASE_D.clip_len and d["train_config"]["max_stride"] == PHASE_D.max_stride > 1
    assert d["config"]["multimask_output_in_sam"]  # phases A-D: a click gives three candidates
    f = torch.load(tmp_path / "d.phaseF.pt", weights_only=True)
    assert f["train_config"]["prob_single"] == PHASE_F.prob_single and f["train_config"]["lr"] == PHASE_F.lr
    n = torch.load(tmp_path / "d.pt", weights_only=True)  # N, the last phase: from F's weights
    assert n["train_config"]["prob_single"] == PHASE_N.prob_single and n["train_config"]["lr"] == PHASE_N.lr
    assert build_sam2(checkpoint=tmp_path / "d.pt", device="cpu").config == DEFAULT_CONFIG  # F, N: the single output


def test_single_frame_steps_mix_in(tmp_path):
    """prob_single: that share of steps trains on one prompted frame (click segmentation)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TrainConfig(), steps=6, clip_len=3, max_objects=2, prob_single=0.5, single_objects=3,
                  prob_mask=0.5, prob_box=0.2, save_every=100)
    pool = SimulatedPool(64, size=2, movie_len=4, seed=0)
    hist = train(SAM2Model(TINY), pool, cfg, tmp_path / "m.pt", progress=False)
    frames = [r["frames"] for r in hist]
    assert set(frames) == {1, 3}, frames  # both kinds of step ran (seeded)
    assert all(np.isfinite(r["total"]) for r in hist)  # single frames never draw a (loss-less) mask prompt


def test_calibrate_generator_picks_the_best_thresholds():
    from sam2_core.train.evaluate import calibrate_generator, choose_thresholds

    torch.manual_seed(0)
    model = SAM2Model(TINY).eval()
    r = calibrate_generator(model, n_images=1, size=64, iou_grid=(-1.0, 2.0), stability_grid=(-1.0,))
    assert set(r["table"]) == {(-1.0, -1.0), (2.0, -1.0)}
    assert r["table"][(2.0, -1.0)] == 0.0  # a predicted IoU above 2 never occurs: nothing found
    assert r["f1"] == max(r["table"].values())
    assert ((r["pred_iou_thresh"], r["stability_score_thresh"]), r["f1"]) == choose_thresholds(r["table"])


def test_choose_thresholds_prefers_permissive_stability_within_tolerance():
    from sam2_core.train.evaluate import choose_thresholds

    table = {(0.3, 0.7): 0.915, (0.5, 0.7): 0.912, (0.3, 0.8): 0.924, (0.5, 0.8): 0.920, (0.3, 0.5): 0.880}
    assert choose_thresholds(table) == ((0.3, 0.7), 0.915)  # 0.009 below the best, one step more permissive
    assert choose_thresholds(table, tolerance=0.0) == ((0.3, 0.8), 0.924)  # the plain best
    assert choose_thresholds(table, tolerance=0.05) == ((0.3, 0.5), 0.880)
    assert choose_thresholds({(0.2, 0.9): 0.5, (0.4, 0.9): 0.5}) == ((0.4, 0.9), 0.5)  # ties: the stricter IoU
    with pytest.raises(ValueError, match="at least one"):
        choose_thresholds({})


def test_export_bundled_writes_half_precision_with_its_settings(tmp_path):
    from sam2_core import save_checkpoint
    from sam2_core.checkpoint import read_checkpoint_full
    from sam2_core.train.recipe import export_bundled

    torch.manual_seed(0)
    model = SAM2Model(TINY)
    model.recommended = {"pred_iou_thresh": 0.4, "stability_score_thresh": 0.8}
    src = save_checkpoint(model, tmp_path / "trained.pt")
    assert export_bundled(src, tmp_path / "shipped.pt", calibrate=False, note="test") == model.recommended
    state, config, recommended = read_checkpoint_full(tmp_path / "shipped.pt")
    assert config == TINY and recommended == model.recommended
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert torch.load(tmp_path / "shipped.pt", weights_only=True)["recipe"] == "test"
    again = build_sam2(checkpoint=tmp_path / "shipped.pt", device="cpu")
    for k, v in model.state_dict().items():
        assert torch.allclose(again.state_dict()[k], v, atol=1e-2, rtol=1e-2)
    # settings measured for the weights (the preferred cell diameter, ...) are merged in
    usage = {"cell_diameter": 28.0, "refresh_every": 4}
    assert export_bundled(src, tmp_path / "s2.pt", calibrate=False, usage=usage) == {**model.recommended, **usage}
    assert build_sam2(checkpoint=tmp_path / "s2.pt", device="cpu").recommended["cell_diameter"] == 28.0


def test_average_checkpoints_mixes_weights_by_share(tmp_path):
    from sam2_core import save_checkpoint
    from sam2_core.train.recipe import average_checkpoints

    torch.manual_seed(0)
    a, b = SAM2Model(TINY), SAM2Model(TINY)
    pa, pb = save_checkpoint(a, tmp_path / "a.pt"), save_checkpoint(b, tmp_path / "b.pt")
    out = average_checkpoints([pa, pb], tmp_path / "ab.pt", shares=[3, 1])
    soup = build_sam2(checkpoint=out, device="cpu")
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    sa, sb = a.state_dict()[key], b.state_dict()[key]
    assert not torch.allclose(sa, sb)
    assert torch.allclose(soup.state_dict()[key], 0.75 * sa + 0.25 * sb, atol=1e-6)
    half = build_sam2(checkpoint=average_checkpoints([pa, pb], tmp_path / "h.pt"), device="cpu")
    assert torch.allclose(half.state_dict()[key], (sa + sb) / 2, atol=1e-6)
    other = save_checkpoint(SAM2Model(dataclasses.replace(TINY, num_maskmem=TINY.num_maskmem + 1)), tmp_path / "o.pt")
    with pytest.raises(ValueError, match="not the architecture"):
        average_checkpoints([pa, other], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([pa], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="non-negative"):
        average_checkpoints([pa, pb], tmp_path / "x.pt", shares=[1, -1])


def test_pool_dividing_draws_movies_whose_cells_divide_often():
    def divisions(pool):
        return sum(len(item.parents) for item in pool.items)

    base = SimulatedPool(64, size=12, movie_len=24, seed=3)
    often = SimulatedPool(64, size=12, movie_len=24, seed=3, dividing=1.0)
    assert divisions(often) > 2 * max(divisions(base), 1)
    half = SimulatedPool(64, size=12, movie_len=24, seed=3, dividing=0.5)
    same = sum(np.array_equal(a.labels, b.labels) for a, b in zip(half.items, base.items))
    assert 1 < same < 11  # the other movies are drawn exactly as without


def test_pool_sized_draws_nuclei_at_the_preferred_scale():
    def radii(pool):  # equivalent radius of every nucleus on the movies' first frames
        out = []
        for item in pool.items:
            ids, areas = np.unique(item.labels[0], return_counts=True)
            out += list(np.sqrt(areas[ids > 0] / np.pi))
        return np.array(out)

    sized = SimulatedPool(128, size=8, movie_len=2, seed=6, sized=1.0, sized_radius=(13.0, 15.0))
    wide = SimulatedPool(128, size=8, movie_len=2, seed=6)
    r = radii(sized)
    assert len(r) >= 20 and 9 < np.median(r) < 16  # elongated and overlapped nuclei look a little smaller
    assert np.percentile(radii(wide), 25) < np.percentile(r, 25) - 2
    base = SimulatedPool(64, size=20, movie_len=2, seed=5)
    half = SimulatedPool(64, size=20, movie_len=2, seed=5, sized=0.5)
    same = sum(np.array_equal(a.labels, b.labels) for a, b in zip(half.items, base.items))
    assert 3 < same < 17  # about half the movies are sized; the others are drawn exactly as without


def test_refresh_in_training_reads_the_predictors_memory():
    """refresh_every=R: a tracked frame R past the last conditioning frame becomes one, and the 2
    closest conditioning frames are attended at temporal position 0 (the predictor's keyframe
    refresh with max_cond_frames_in_attn=2); the others stay readable as recent frames."""
    from sam2_core.train.loop import clip_forward

    torch.manual_seed(0)
    model = SAM2Model(TINY)
    clip = SimulatedPool(64, size=1, movie_len=8, seed=0, renew_every=10**9).sample(8, 2)
    cfg = TrainConfig(clip_len=8, prob_box=0.0, prob_mask=0.0, prob_correct=0.0)
    seen: list[list[tuple[int, int]]] = []
    memories: dict[int, torch.Tensor] = {}
    encode, build = model.encode_memory, model.build_memory

    def encode_memory(*args, **kwargs):
        mem, pos = encode(*args, **kwargs)
        memories[len(memories)] = mem  # frames are remembered in order 0, 1, 2, ...
        return mem, pos

    def build_memory(spatial, *args, **kwargs):
        seen.append(sorted((next(f for f, m in memories.items() if m is s), t_pos) for s, t_pos in spatial))
        return build(spatial, *args, **kwargs)

    model.encode_memory, model.build_memory = encode_memory, build_memory
    for refresh in (0, 2):
        seen.clear(), memories.clear()
        losses = clip_forward(model, clip, dataclasses.replace(cfg, refresh_every=refresh), np.random.default_rng(0))
        losses["total"].backward()
        assert torch.isfinite(losses["total"])
        if refresh == 0:  # frame 5: the prompted frame and the 4 before it at their distances
            assert seen[4] == [(0, 0), (1, 3), (2, 4), (3, 5), (4, 6)]
            assert seen[6] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]
        else:
            assert seen[1] == [(0, 0), (1, 6)]  # frame 2: nothing refreshed yet
            assert seen[2] == [(0, 0), (1, 5), (2, 0)]  # frame 3: frame 2 promoted
            # frame 5: frames 2 and 4 are the closest conditioning frames; 0 is read as a recent one
            assert seen[4] == [(0, 2), (1, 3), (2, 0), (3, 5), (4, 0)]
            # frame 7: conditioning frames 4 and 6; 0 and 2 are 7 and 5 back: 2 as a recent one, 0 no more
            assert seen[6] == [(1, 1), (2, 2), (3, 3), (4, 0), (5, 5), (6, 0)]


def test_pool_crowded_draws_dense_fields():
    def cover(pool):  # share of the first frame covered by nuclei, per movie
        return np.array([np.mean(item.labels[0] > 0) for item in pool.items])

    crowded = SimulatedPool(128, size=10, movie_len=2, seed=7, crowded=1.0)
    wide = SimulatedPool(128, size=10, movie_len=2, seed=7)
    assert np.median(cover(crowded)) > 0.25 and np.median(cover(crowded)) > np.median(cover(wide)) + 0.05
    half = SimulatedPool(64, size=20, movie_len=2, seed=5, crowded=0.5)
    base = SimulatedPool(64, size=20, movie_len=2, seed=5)
    same = sum(np.array_equal(a.labels, b.labels) for a, b in zip(half.items, base.items))
    assert 3 < same < 17


def test_pool_enlarged_draws_small_nuclei_enlarged_to_the_preferred_scale():
    enlarged = SimulatedPool(128, size=6, movie_len=3, seed=8, enlarged=1.0, sized_radius=(13.0, 15.0),
                             drift=1.0, drift_speed=(3.0, 3.0))
    for item in enlarged.items:
        assert item.movie.shape == item.labels.shape == (3, 128, 128) and item.movie.dtype == np.float32
        ids, areas = np.unique(item.labels[0], return_counts=True)
        assert np.median(np.sqrt(areas[ids > 0] / np.pi)) > 8  # drawn at 4-6.5 px * 1.2-1.6, then enlarged
    # enlarged, not drawn large: the frames are smooth (bilinear), where nuclei drawn large at the
    # same scale keep pixel-fine noise and sharp edges
    native = SimulatedPool(128, size=6, movie_len=3, seed=8, sized=1.0, sized_radius=(13.0, 15.0))

    def roughness(pool):  # mean |second difference| along x relative to the frame's spread
        return np.median([np.abs(np.diff(np.asarray(i.movie[0], float), 2, axis=1)).mean() / np.std(i.movie[0])
                          for i in pool.items])

    assert roughness(enlarged) < 0.5 * roughness(native)
    # drift is in pixels of the enlarged movie: nuclei move about 3 px per frame there
    item = enlarged.items[0]
    ids = [i for i in np.unique(item.labels[0]) if i > 0 and (item.labels[2] == i).any()]
    centre = lambda f, i: np.array(np.nonzero(item.labels[f] == i)).mean(1)  # noqa: E731
    steps = [np.linalg.norm(centre(2, i) - centre(0, i)) / 2 for i in ids]
    assert 1.0 < np.median(steps) < 6.0
    base = SimulatedPool(64, size=20, movie_len=2, seed=5)
    half = SimulatedPool(64, size=20, movie_len=2, seed=5, enlarged=0.5)
    same = sum(np.array_equal(a.labels, b.labels) for a, b in zip(half.items, base.items))
    assert 3 < same < 17  # about half the movies are enlarged; the others are drawn exactly as without
