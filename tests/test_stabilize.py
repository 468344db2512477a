"""Stage drift: drift estimation, the steady canvas, and tracking with stabilize=True."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from sam2_core import build_sam2
from sam2_core.io.frames import FrameSource
from sam2_core.stabilize import SteadyCanvas, estimate_drift
from sam2_core.track import Prompt, track


@pytest.fixture(scope="module")
def model():
    return build_sam2("default", device="cpu")


def _field(h, w, seed=0):
    """One simulated 16-bit nuclei field (float) and the centres of its largest nuclei."""
    from sam2_core.simulate_cells import simulate_cells

    sim = simulate_cells(1, (h, w), seed=500 + seed, radius=(9.0, 12.0))
    return sim.movie[0].astype(float), sim.labels[0]


def _drifting(n, size, step, seed=0):
    """(n, size, size) uint16 views of one still field moving by ``step`` (dy, dx) px per frame
    (sub-pixel steps by Fourier shift), the field's true drift per frame, and the field's labels
    (frame t's pixel (y, x) is the field's (y + 40 - dy, x + 40 - dx))."""
    from scipy.ndimage import fourier_shift

    field, labels = _field(size + 80, size + 80, seed)
    rng = np.random.default_rng(seed + 1)
    frames, truth = [], []
    for t in range(n):
        d = np.array(step, float) * t
        moved = np.fft.ifftn(fourier_shift(np.fft.fftn(field), d)).real  # content moves by +d
        frames.append(np.clip(moved[40 : 40 + size, 40 : 40 + size] + rng.normal(0, 20, (size, size)), 0, 65535))
        truth.append(d)
    return np.stack(frames).astype(np.uint16), np.array(truth), labels


@pytest.mark.parametrize("step", [(0.0, 2.0), (1.5, -0.7), (0.0, 0.0)])
def test_estimate_drift_finds_the_field_translation(step):
    movie, truth, _ = _drifting(8, 160, step)
    drift = estimate_drift(FrameSource(movie))
    assert drift.shape == (8, 2) and np.all(drift[0] == 0)
    assert np.abs(drift - truth).max() < 0.35, np.round(drift - truth, 2)


def test_estimate_drift_survives_constant_frames():
    movie, truth, _ = _drifting(5, 96, (0.0, 1.0))
    movie[2] = 1000  # a blank frame carries no position: the drift holds on it, and the next
    drift = estimate_drift(FrameSource(movie))  # frame is registered onto the last one with content
    assert np.isfinite(drift).all() and drift[2].tolist() == drift[1].tolist()
    assert np.abs(drift[[0, 1, 3, 4]] - truth[[0, 1, 3, 4]]).max() < 0.35, np.round(drift, 2)


def test_steady_canvas_places_frames_and_maps_prompts_and_labels_back():
    movie, truth, _ = _drifting(5, 64, (1.0, -2.0))
    src = FrameSource(movie)
    canvas = SteadyCanvas(src, truth)
    assert canvas.shape == (5, 64 + 4, 64 + 8, 3) and (canvas.offsets >= 0).all()
    # a field point keeps its canvas position: frame t shows the field moved by truth[t]
    a, b = canvas[0], canvas[4]
    oy0, ox0 = canvas.offset(0)
    oy4, ox4 = canvas.offset(4)
    assert (oy0 - oy4, ox0 - ox4) == (4, -8)
    np.testing.assert_allclose(a[oy0 + 10, ox0 + 30], src.unit_rgb(0)[10, 30])
    np.testing.assert_allclose(b[oy4 + 14, ox4 + 22], src.unit_rgb(4)[14, 22])
    # pixels no frame covers hold a background level, not the frame's brightest values
    assert b[0, 0, 0] <= np.percentile(src.unit_rgb(4), 50)
    # prompts move by the frame's offset; labels come back to the recorded pixels
    p = canvas.prompt_to_canvas(Prompt(4, 1, points=[[10, 20]], box=[5, 6, 30, 40]))
    assert p.points.tolist() == [[10 + ox4, 20 + oy4]] and p.box.tolist() == [5 + ox4, 6 + oy4, 30 + ox4, 40 + oy4]
    mask = np.zeros((64, 64), bool)
    mask[3:9, 40:50] = True
    pm = canvas.prompt_to_canvas(Prompt(4, 1, mask=mask))
    assert pm.mask.shape == canvas.shape[1:3] and pm.mask.sum() == mask.sum()
    np.testing.assert_array_equal(canvas.labels_to_frame(pm.mask, 4), mask)
    with pytest.raises(ValueError, match="outside the 64x64"):
        canvas.prompt_to_canvas(Prompt(1, 1, points=[[70, 3]]))
    with pytest.raises(ValueError, match="expected the frame's"):
        canvas.prompt_to_canvas(Prompt(1, 1, mask=np.ones((10, 10), bool)))
    with pytest.raises(ValueError, match="shape \\(5, 2\\)"):
        SteadyCanvas(src, np.zeros((3, 2)))


def _truth(labels, drift, size, f):
    dy, dx = (int(round(v)) for v in drift[f])
    return labels[40 - dy : 40 - dy + size, 40 - dx : 40 - dx + size]


def _drift_scores(model, seed, n=14, size=160, check_given=False):
    """Track the clicked nuclei of a field drifting 3 px per frame, with and without stabilize:
    {name: (IoUs while (nearly) whole in the field, labels left behind after leaving (bools))}."""
    from sam2_core.train import prompts as P

    movie, drift, labels = _drifting(n, size, (0.0, -3.0), seed=seed)  # 39 px (the field has 40 to spare)
    first = _truth(labels, drift, size, 0)
    ids, areas = np.unique(first, return_counts=True)
    objs = [int(i) for i, a in zip(ids, areas) if i and a > 150 and not np.isin(
        i, np.concatenate([first[0], first[-1], first[:, 0], first[:, -1]]))][:6]
    assert len(objs) >= 3
    rng = np.random.default_rng(0)
    prompts = [Prompt(0, k, points=P.click_inside(first == k, rng, central=True)) for k in objs]
    steady = track(movie, prompts, model=model, stabilize=True)
    plain = track(movie, prompts, model=model)
    if check_given:  # a drift measured before gives the same labels
        np.testing.assert_array_equal(track(movie, prompts, model=model,
                                            stabilize=estimate_drift(FrameSource(movie))), steady)
        assert steady.shape == movie.shape and steady.dtype == plain.dtype
    out = {}
    for name, lab in (("steady", steady), ("plain", plain)):
        ious, after = [], []
        for f in range(n):
            t = _truth(labels, drift, size, f)
            for k in objs:
                if (t == k).sum() > 0.8 * (first == k).sum():  # (nearly) whole in the field
                    ious.append(((lab[f] == k) & (t == k)).sum() / ((lab[f] == k) | (t == k)).sum())
                elif not (t == k).any():  # gone: is a label left behind?
                    after.append(bool((lab[f] == k).any()))
        out[name] = (ious, after)
    return out


def test_track_with_stabilize_follows_a_drifting_field(model):
    """Still fields drifting 3 px per frame: with stabilize the nuclei are kept, and nuclei that
    drift out of the field leave fewer masks behind. Eight fields (seeds 2-9): a single field
    has only a few frames after its nuclei leave (10 on seed 2), too few to compare. Measured,
    steady / plain: mean IoU 0.855 / 0.482 and labels left on 13 / 30 of 41 frames (fourth
    version), 0.858 / 0.586 and 14 / 26 (fifth)."""
    runs = [_drift_scores(model, seed, check_given=seed == 2) for seed in range(2, 10)]
    scores = {k: float(np.mean([v for r in runs for v in r[k][0]])) for k in ("steady", "plain")}
    left = {k: (sum(v for r in runs for v in r[k][1]), sum(len(r[k][1]) for r in runs)) for k in ("steady", "plain")}
    assert scores["steady"] > 0.75 and scores["steady"] > scores["plain"] + 0.1, scores
    assert left["steady"][1] > 0 and left["steady"][0] < left["plain"][0], left
    with pytest.raises(IndexError, match="outside the stack"):
        track(np.zeros((3, 32, 32), np.uint16), [Prompt(40, 1, points=[[10, 10]])], model=model, stabilize=True)


def test_cli_track_stabilize(tmp_path):
    from napari_sam2.cli import main
    from napari_sam2.export import read_labels_info

    movie, _, _ = _drifting(6, 120, (1.0, 1.0), seed=3)
    tifffile.imwrite(tmp_path / "m.tif", movie)
    (tmp_path / "p.csv").write_text("frame,object_id,x,y,label\n0,1,60,60,1\n")
    out = tmp_path / "lab.tif"
    assert main(["track", str(tmp_path / "m.tif"), "--prompts", str(tmp_path / "p.csv"), "--out", str(out),
                 "--stabilize"]) == 0
    info = read_labels_info(out)
    assert tifffile.imread(out).shape == movie.shape and info["stabilize"] is True
    assert len(info["drift"]) == 6 and np.allclose(info["drift"][5], [5.0, 5.0], atol=0.5)  # the drift removed
