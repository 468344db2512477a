"""cell_diameter="auto": the cells' diameter measured from the prompts (sam2_core.diameter), in
track, the CLI, batch manifests and the evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from sam2_core.diameter import _first_prompts, equivalent_diameter, estimate_cell_diameter
from sam2_core.track import Prompt, as_diameter, as_prompts, track


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture(scope="module")
def bundled():
    from sam2_core import build_sam2
    from sam2_core.build import bundled_checkpoint
    from sam2_core.predictor.video import SAM2VideoPredictor

    if bundled_checkpoint() is None:
        pytest.skip("no bundled weights in this installation")
    return SAM2VideoPredictor(build_sam2(device="cpu"))


@pytest.fixture(scope="module")
def small_nuclei():
    """A 320 x 320 movie of small simulated nuclei (mean radius about 5 px), 3 frames, and
    central clicks on 8 of them."""
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train import prompts as P

    sim = simulate_cells(3, (320, 320), seed=10_100, radius=(4.5, 6.0))
    rng = np.random.default_rng(0)
    ids = [int(i) for i in np.unique(sim.labels[0]) if i and (sim.labels[0] == i).sum() > 30][:8]
    prompts = [Prompt(0, n, P.click_inside(sim.labels[0] == i, rng, central=True), [1])
               for n, i in enumerate(ids, start=1)]
    truth = float(np.median([equivalent_diameter(sim.labels[0] == i) for i in ids]))
    return sim, prompts, truth


def test_equivalent_diameter_and_prompt_choice():
    assert equivalent_diameter(_disk((64, 64), 32, 32, 10)) == pytest.approx(20.0, rel=0.03)
    assert equivalent_diameter(np.zeros((5, 5), bool)) == 0.0
    prompts = as_prompts([dict(frame=3, object_id=1, points=[[5, 5]], labels=[1]),
                          dict(frame=1, object_id=1, box=[0, 0, 4, 4]),  # object 1's first frame: 1
                          dict(frame=0, object_id=2, points=[[5, 5]], labels=[0]),  # negative only: skipped
                          *[dict(frame=0, object_id=k, points=[[k, k]]) for k in range(3, 40)]])
    first = _first_prompts(prompts, max_objects=10)
    assert len(first) == 10 and 1 in first and 2 not in first and first[1][0].frame == 1
    assert max(first) == 39  # spread over the ids, not the first ten
    assert as_diameter("auto") == as_diameter(" Auto ") == "auto" and as_diameter("14") == 14.0
    assert as_diameter(None) is None and as_diameter("off") == as_diameter("None") == 0.0
    with pytest.raises(ValueError, match="number of pixels or 'auto'"):
        as_diameter("big")


def test_estimate_from_masks_needs_no_segmentation(bundled):
    shape = (1, 96, 96)
    prompts = [Prompt(0, 1, mask=_disk(shape[1:], 30, 30, 6)), Prompt(0, 2, mask=_disk(shape[1:], 60, 60, 8)),
               Prompt(0, 3, mask=_disk(shape[1:], 30, 70, 7))]
    found = estimate_cell_diameter(bundled, np.zeros(shape, np.uint16), prompts)
    assert found.scales == []  # masks are measured directly
    assert found.diameter == pytest.approx(14.0, rel=0.05) and set(found.per_object) == {1, 2, 3}


def test_estimate_from_clicks_on_small_nuclei(bundled, small_nuclei):
    """Clicks on nuclei of ~10 px: the first masks (recorded scale) are coarse, the second round at
    the implied scale measures them; the estimate lands within 15 % of the true median."""
    sim, prompts, truth = small_nuclei
    found = estimate_cell_diameter(bundled, sim.movie, prompts)
    assert len(found.per_object) >= 6
    assert len(found.scales) == 2 and found.scales[0] == 1.0 and found.scales[1] > 2.0
    assert found.diameter == pytest.approx(truth, rel=0.15), (found, truth)
    # a 16-bit copy with a camera offset measures the same cells
    offset = (sim.movie.astype(np.uint32) * 40 + 3000).astype(np.uint16)
    again = estimate_cell_diameter(bundled, offset, prompts)
    assert again.diameter == pytest.approx(found.diameter, rel=0.1)


def test_estimate_errors_name_the_fix(bundled, monkeypatch):
    import sam2_core.diameter as D

    movie = np.zeros((2, 64, 64), np.uint16)
    with pytest.raises(ValueError, match="positive click, a box or a mask"):
        estimate_cell_diameter(bundled, movie, [Prompt(0, 1, [[10, 10]], [0])])
    with pytest.raises(ValueError, match="non-empty mask"):
        estimate_cell_diameter(bundled, movie, [Prompt(0, 1, mask=np.zeros((64, 64), bool))])
    with monkeypatch.context() as m:  # the model finds nothing where the user clicked
        m.setattr(D, "_segment", lambda *a: {})
        with pytest.raises(ValueError, match="came out empty"):
            estimate_cell_diameter(bundled, movie, [Prompt(0, 1, [[10, 10]], [1])])
    with pytest.raises(ValueError, match="outside"):
        estimate_cell_diameter(bundled, movie, [Prompt(0, 1, [[100, 10]], [1])])


def test_estimate_needs_a_preferred_diameter(bundled):
    saved = bundled.model.recommended
    bundled.model.recommended = {k: v for k, v in saved.items() if k != "cell_diameter"}
    try:
        with pytest.raises(ValueError, match="no preferred cell diameter"):
            estimate_cell_diameter(bundled, np.zeros((1, 32, 32), np.uint8), [Prompt(0, 1, [[5, 5]], [1])])
    finally:
        bundled.model.recommended = saved


def test_track_auto_diameter_reports_what_it_used(bundled, small_nuclei):
    from sam2_core.track import preferred_diameter

    sim, prompts, _ = small_nuclei
    info: dict = {}
    lab = track(sim.movie[:2], prompts[:4], model=bundled, cell_diameter="auto", info=info, max_frames=1)
    found = estimate_cell_diameter(bundled, sim.movie[:2], prompts[:4])
    assert info["cell_diameter_estimated"] is True and info["cell_diameter"] == pytest.approx(found.diameter)
    assert info["scale"] == pytest.approx(preferred_diameter(bundled.model) / found.diameter)
    assert lab.shape == sim.movie[:2].shape and set(range(1, 5)) <= set(np.unique(lab[0]))
    given: dict = {}
    track(sim.movie[:1], prompts[:1], model=bundled, cell_diameter=12.0, info=given)
    assert given == {"scale": pytest.approx(preferred_diameter(bundled.model) / 12.0), "cell_diameter": 12.0,
                     "cell_diameter_estimated": False, "ended": []}
    with pytest.raises(ValueError, match="not both"):
        track(sim.movie[:1], prompts[:1], model=bundled, cell_diameter="auto", scale=2.0)


def test_track_measures_the_diameter_by_default(bundled, small_nuclei):
    """With no scale or diameter given, a model that stores its preferred diameter tracks as with
    cell_diameter="auto"; 0 / "off", a scale, windows=False or a model without one keep the
    recorded scale; nothing measurable falls back to it instead of failing."""
    sim, prompts, _ = small_nuclei
    kw = dict(model=bundled, max_frames=1)
    default, auto = {}, {}
    lab = track(sim.movie[:2], prompts[:4], info=default, **kw)
    assert np.array_equal(lab, track(sim.movie[:2], prompts[:4], cell_diameter="auto", info=auto, **kw))
    assert default == auto and default["cell_diameter_estimated"] is True and default["scale"] > 1.5
    for extra in (dict(cell_diameter=0), dict(cell_diameter="off"), dict(scale=1.0), dict(windows=False)):
        used: dict = {}
        track(sim.movie[:1], prompts[:2], info=used, **kw, **extra)
        assert used["scale"] == 1.0 and not used["cell_diameter_estimated"], extra
    saved = bundled.model.recommended
    bundled.model.recommended = {k: v for k, v in saved.items() if k != "cell_diameter"}
    try:
        used = {}
        track(sim.movie[:1], prompts[:2], info=used, **kw)
        assert used["scale"] == 1.0 and not used["cell_diameter_estimated"]
    finally:
        bundled.model.recommended = saved
    import sam2_core.diameter as D

    real = D._segment
    try:  # every mask empty: the default falls back to the recorded scale, "auto" says why it fails
        D._segment = lambda *a: {}
        used = {}
        track(sim.movie[:1], prompts[:2], info=used, **kw)
        assert used == {"scale": 1.0, "cell_diameter": None, "cell_diameter_estimated": False, "ended": []}
        with pytest.raises(ValueError, match="came out empty"):
            track(sim.movie[:1], prompts[:2], cell_diameter="auto", **kw)
    finally:
        D._segment = real


def test_cli_and_batch_accept_auto(bundled, small_nuclei, tmp_path, capsys):
    from napari_sam2.batch import read_manifest
    from napari_sam2.cli import main
    from napari_sam2.export import read_labels_info

    sim, prompts, _ = small_nuclei
    tifffile.imwrite(tmp_path / "movie.tif", sim.movie[:2])
    rows = ["frame,object_id,x,y,label"] + [f"0,{p.object_id},{p.points[0, 0]:.1f},{p.points[0, 1]:.1f},1"
                                             for p in prompts[:4]]
    (tmp_path / "prompts.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "labels.tif"
    assert main(["track", str(tmp_path / "movie.tif"), "--prompts", str(tmp_path / "prompts.csv"), "--out", str(out),
                 "--cell-diameter", "auto", "--max-frames", "1", "--direction", "forward"]) == 0
    printed = capsys.readouterr().out
    assert "cell diameter estimated from the prompts" in printed
    info = read_labels_info(out)
    assert info["cell_diameter_estimated"] > 0 and info["windows"] is True and info["scale"] > 1.5
    assert f"{info['cell_diameter_estimated']:.1f} px" in printed
    assert main(["track", str(tmp_path / "movie.tif"), "--prompts", str(tmp_path / "prompts.csv"), "--out", str(out),
                 "--max-frames", "1"]) == 0  # the default measures too
    assert "cell diameter estimated from the prompts" in capsys.readouterr().out
    assert read_labels_info(out)["scale"] > 1.5
    cache = tmp_path / "cache"  # with embed's cache (made at the recorded scale) track keeps that scale
    assert main(["embed", str(tmp_path / "movie.tif"), "--cache", str(cache)]) == 0
    assert main(["track", str(tmp_path / "movie.tif"), "--prompts", str(tmp_path / "prompts.csv"), "--out", str(out),
                 "--max-frames", "1", "--embedding-cache", str(cache)]) == 0
    assert "estimated" not in capsys.readouterr().out and read_labels_info(out)["scale"] == 1.0
    assert main(["track", str(tmp_path / "movie.tif"), "--prompts", str(tmp_path / "prompts.csv"), "--out", str(out),
                 "--cell-diameter", "huge"]) == 2
    assert "expected a diameter in pixels or 'auto'" in capsys.readouterr().err
    assert main(["evaluate", "--cell-diameter", "12"]) == 2  # evaluate takes the flag alone or 'auto'
    assert "alone (the true diameter) or 'auto'" in capsys.readouterr().err
    (tmp_path / "jobs.csv").write_text("movie,out,cell_diameter\nmovie.tif,a.tif,auto\nmovie.tif,b.tif,14\n")
    jobs = read_manifest(tmp_path / "jobs.csv")
    assert [j.cell_diameter for j in jobs] == ["auto", 14.0]


def test_evaluate_with_estimated_diameter(bundled):
    from sam2_core.train.evaluate import evaluate

    kw = dict(n_movies=1, n_frames=3, size=160, max_objects=3, n_leaving=0, n_volumes=0)
    m = evaluate(bundled.model, cell_diameter="auto", **kw)
    assert 0.6 < m.diameter_ratio < 1.2 and 0 <= m.propagated_iou <= 1 and m.n_tracked_objects > 0
    assert 0.3 < m.click_iou_scaled <= 1  # every click, at the diameter measured from the first clicks
    true = evaluate(bundled.model, cell_diameter=True, **kw)
    assert np.isnan(true.diameter_ratio) and 0.3 < true.click_iou_scaled <= 1
    assert np.isnan(evaluate(bundled.model, **kw).click_iou_scaled)
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        evaluate(bundled.model, cell_diameter="yes", **kw)


def test_clicks_at_diameter_follows_the_widget(bundled, small_nuclei, monkeypatch):
    """evaluate's clicks at the diameter: measured from the first 5 clicks; a measured scale within
    AUTO_TOLERANCE of 1 keeps the recorded scale (masks None), a given diameter always scales."""
    import sam2_core.diameter as D
    from sam2_core.track import preferred_diameter
    from sam2_core.train.evaluate import clicks_at_diameter

    sim, prompts, truth = small_nuclei
    points = [p.points for p in prompts]
    masks, d = clicks_at_diameter(bundled, sim.movie[0], points)
    assert len(masks) == len(points) and d == pytest.approx(truth, rel=0.2)
    ious = [(m & (sim.labels[0] == sim.labels[0][int(p[0, 1]), int(p[0, 0])])).sum() / max(m.sum(), 1)
            for m, p in zip(masks, points)]
    assert np.median(ious) > 0.7  # each mask lies on the clicked nucleus
    pref = preferred_diameter(bundled.model)
    near = D.DiameterEstimate(pref * 1.1)
    monkeypatch.setattr(D, "estimate_cell_diameter", lambda *a, **k: near)
    assert clicks_at_diameter(bundled, sim.movie[0], points) == (None, pytest.approx(pref * 1.1))
    assert len(clicks_at_diameter(bundled, sim.movie[0], points[:2], pref * 1.1)[0]) == 2


def test_track_4d_takes_the_diameter_too(bundled, small_nuclei):
    from sam2_core.track import track_4d

    sim, prompts, _ = small_nuclei
    crop = sim.movie[:2, :128, :128]
    inside = [p for p in prompts if p.points[0].max() < 118][:2]
    if not inside:
        pytest.skip("no clicked nucleus in the crop")
    stack = np.stack([np.stack([crop[t]] * 3) for t in range(2)])  # (T=2, Z=3, Y, X)
    zp = [Prompt(0, p.object_id, p.points, p.labels, z=1) for p in inside]
    auto = track_4d(stack, zp, model=bundled, cell_diameter="auto")
    from sam2_core.io.frames import FrameSource
    from sam2_core.track import _limits_4d

    t0 = FrameSource(stack[0], contrast_limits=_limits_4d(stack))  # the normalisation track_4d uses
    d = estimate_cell_diameter(bundled, t0, [Prompt(1, p.object_id, p.points, p.labels) for p in inside])
    given = track_4d(stack, zp, model=bundled, cell_diameter=d.diameter)
    assert auto.shape == stack.shape and np.array_equal(auto, given)
    assert {p.object_id for p in inside} <= set(np.unique(auto[1, 1]))
