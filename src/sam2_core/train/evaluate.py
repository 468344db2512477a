"""The model card's metrics, measured on held-out simulated movies with the real predictors.

- single-click IoU: one click at the most interior pixel of each object on a frame, the mask the
  image predictor returns for it by default (``predict(multimask_output=None)``: the best-scored
  of three candidates, or the single-mask output for a model whose config says
  ``multimask_output_in_sam=False``), IoU with the truth; ``best_of_three_click_iou`` is the
  best-scored of three candidates whatever the config;
- propagated IoU: each object clicked once on frame 0 and tracked by the video predictor over the
  whole movie; per object the mean IoU over the frames where it is visible (after a division the
  truth is the union of the daughters: the lineage is followed);
- object-score accuracy: over frames where a tracked cell has left the field, the fraction on
  which the predictor correctly reports it absent (empty mask); cells rarely leave the field
  in the held-out movies, so it is measured on ``n_leaving`` further movies whose cells drift
  out of the field (``simulate_cells(drift=...)``, 2-3 px per frame in a random direction):
  each cell of frame 0 that leaves is clicked and tracked. ``present_accuracy`` is the other
  side: the fraction of frames, while such a cell is still in the field, on which its mask is
  not empty; ``present_on_cell`` the stricter fraction on which at least half of the mask lies
  on that cell (a mask that slid onto a neighbour counts as present, not as on the cell);
- division: median per-object IoU over the frames after the object divided;
  ``propagated_iou_undivided`` is the propagated median over the tracked cells that do not
  divide in the movie (a diagnostic of where the propagated figure goes; goals use all cells);
- volumes (``n_volumes`` held-out :func:`~sam2_core.simulate_volume.simulate_volume` stacks,
  slices as frames): each nucleus that ends inside the stack clicked once on its largest slice
  and tracked both ways through z; ``volume_iou`` is the median per-nucleus 3-D IoU and
  ``volume_absent_accuracy`` the fraction of slices beyond a nucleus (one slice of slack at each
  end) on which its mask is empty: nuclei end in place, so the object score must say so;
- ``*_lo`` / ``*_hi``: 95 % bootstrap intervals of the click and propagated medians, resampling
  whole movies (:func:`median_interval`): two runs whose medians differ by less than the
  interval's width are not told apart by these movies.

Held-out movies use seeds from 10_000 on; training draws seeds from 1_000_001 on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sam2_core.continuity import as_guard
from sam2_core.simulate_cells import SimulatedMovie, simulate_cells
from sam2_core.train import prompts as P

HELD_OUT_SEED = 10_000
LEAVING_SEED = 11_000  # held-out movies with drift (cells leaving the field)
VOLUME_SEED = 12_000  # held-out volumes (training draws seeds from 1_000_001 on)


@dataclass
class Metrics:
    single_click_iou: float
    propagated_iou: float
    absent_accuracy: float
    division_iou: float
    present_accuracy: float
    n_click_objects: int
    n_tracked_objects: int
    n_absent_frames: int
    n_leaving_objects: int
    n_divided: int
    seconds_per_frame: float
    best_of_three_click_iou: float = float("nan")
    volume_iou: float = float("nan")
    volume_absent_accuracy: float = float("nan")
    n_volume_objects: int = 0
    cell_diameter: float = float("nan")  # the propagated part brought cells to this diameter (nan: no)
    # 95 % intervals of the two medians, resampling whole movies (cells of one movie are alike)
    single_click_iou_lo: float = float("nan")
    single_click_iou_hi: float = float("nan")
    propagated_iou_lo: float = float("nan")
    propagated_iou_hi: float = float("nan")
    # with ``cell_diameter``: median IoU of the tracked cells on the clicked frame itself, as the
    # widget shows a clicked frame of a stack when a Cell diameter is set (windows at that scale)
    click_iou_at_diameter: float = float("nan")
    # with ``cell_diameter="auto"``: median of each movie's estimated diameter / its true one
    # (the simulator's mean radius, doubled)
    diameter_ratio: float = float("nan")
    # with ``cell_diameter``: median IoU of every single click (the ``single_click_iou`` clicks)
    # segmented in windows at the diameter's scale; with "auto", the diameter measured from the
    # frame's first clicked cells as the widget measures it (:func:`clicks_at_diameter`)
    click_iou_scaled: float = float("nan")
    click_iou_scaled_lo: float = float("nan")
    click_iou_scaled_hi: float = float("nan")
    # the propagated median over the tracked cells that do not divide within the movie (a
    # diagnostic: the goal is judged on ``propagated_iou``, which counts every tracked cell)
    propagated_iou_undivided: float = float("nan")
    n_undivided: int = 0
    # leaving cells: fraction of their in-field frames with at least half of the mask on the cell
    present_on_cell: float = float("nan")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def match_score(pred: np.ndarray, truth: np.ndarray, thresh: float = 0.5) -> dict[str, float]:
    """Per-frame instance matching (IoU > ``thresh``): F1 of detection and mean IoU of matches."""
    tp = fp = fn = 0
    ious = []
    for p, t in zip(pred, truth):
        p_ids = [i for i in np.unique(p) if i]
        t_ids = [i for i in np.unique(t) if i]
        matched_t = set()
        for i in p_ids:
            m = p == i
            cand, counts = np.unique(t[m], return_counts=True)
            best, best_iou = 0, 0.0
            for j, c in zip(cand, counts):
                if j == 0:
                    continue
                iou = c / np.logical_or(m, t == j).sum()
                if iou > best_iou:
                    best, best_iou = j, iou
            if best_iou > thresh and best not in matched_t:
                tp += 1
                matched_t.add(best)
                ious.append(best_iou)
            else:
                fp += 1
        fn += len(set(t_ids) - matched_t)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"f1": f1, "mean_iou": float(np.mean(ious)) if ious else 0.0, "tp": tp, "fp": fp, "fn": fn}


def median_interval(groups: list[list[float]], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of the median of the pooled values, resampling whole
    groups (movies) with replacement: cells of one movie share its density, speed and noise, so
    they are not independent draws. (nan, nan) with fewer than two non-empty groups."""
    groups = [np.asarray(g, float) for g in groups if len(g)]
    if len(groups) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    meds = [np.median(np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))]))
            for _ in range(n_boot)]
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def _objects(sim: SimulatedMovie, frame: int, max_objects: int, rng, min_area: int = 20) -> list[int]:
    ids, areas = np.unique(sim.labels[frame], return_counts=True)
    ids = [int(i) for i, a in zip(ids, areas) if i > 0 and a >= min_area]
    return [ids[i] for i in rng.permutation(len(ids))[:max_objects]]


def leaving_cells(sim: SimulatedMovie, max_objects: int, rng) -> list[int]:
    """Cells of frame 0 whose track ends before the last frame without dividing (they left)."""
    n = sim.labels.shape[0]
    parents = {int(t[3]) for t in sim.tracks if t[3] > 0}
    ids = _objects(sim, 0, 10**6, rng)
    ends = {int(t[0]): int(t[2]) for t in sim.tracks}
    out = [c for c in ids if ends[c] < n - 2 and c not in parents]
    return out[:max_objects]


def _checked(guard, f: int, ids, masks, prompted=None):
    """Masks (N, H, W) with those of tracks the guard ends emptied (no guard: unchanged).
    ``prompted``: the objects prompted on frame ``f`` (None: all of them on frame 0)."""
    if guard is None:
        return masks
    prompted = (set(ids) if f == 0 else set()) if prompted is None else prompted
    return [m if guard.check(int(o), m, f, prompted=o in prompted) else np.zeros_like(m) for o, m in zip(ids, masks)]


def _leaving(video_pred, n_movies: int, n_frames: int, size: int, max_objects: int, seed: int,
             continuity: bool = False):
    """(absent hits, present hits, on-cell hits, number of cells) on movies whose cells drift out
    of the field."""
    absent, present, on_cell, n_cells = [], [], [], 0
    for i in range(n_movies):
        rng = np.random.default_rng(seed + i)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 3.0)
        sim = simulate_cells(n_frames, (size, size), seed=seed + i, drift=(speed * np.sin(angle), speed * np.cos(angle)))
        cells = leaving_cells(sim, max_objects, rng)
        if not cells:
            continue
        state = video_pred.init_state(sim.movie)
        for cid in cells:
            video_pred.add_new_points_or_box(state, 0, cid, points=P.click_inside(sim.labels[0] == cid, rng, central=True),
                                             labels=[1])
        guard = as_guard(continuity)
        for f, ids, logits in video_pred.propagate_in_video(state):
            masks = _checked(guard, f, ids, logits[:, 0].numpy() > 0)
            if f == 0:
                continue
            for cid, m in zip(ids, masks):
                truth = sim.labels[f] == cid
                if truth.any():
                    present.append(float(m.any()))
                    on_cell.append(float(m.any() and 2 * (m & truth).sum() >= m.sum()))
                else:
                    absent.append(float(not m.any()))
        video_pred.close_state(state)
        n_cells += len(cells)
    return absent, present, on_cell, n_cells


def _volumes(video_pred, n_volumes: int, n_slices: int, size: int, max_objects: int, seed: int,
             continuity: bool = False):
    """(per-nucleus 3-D IoUs, absent hits beyond the nuclei) on held-out simulated volumes."""
    from sam2_core.simulate_volume import simulate_volume

    ious, absent = [], []
    for i in range(n_volumes):
        sim = simulate_volume(n_slices, (size, size), seed=seed + i)
        rng = np.random.default_rng(seed + i)
        ends = [int(t[0]) for t in sim.tracks if t[1] > 0 and t[2] < n_slices - 1 and t[2] - t[1] >= 2]
        ids = [ends[j] for j in rng.permutation(len(ends))[:max_objects]]
        if not ids:
            continue
        state = video_pred.init_state(sim.movie)
        clicked = {}  # nucleus -> its prompted (largest) slice
        for cid in ids:
            z = clicked[cid] = int(np.argmax((sim.labels == cid).sum((1, 2))))
            video_pred.add_new_points_or_box(state, z, cid, points=P.click_inside(sim.labels[z] == cid, rng, central=True),
                                             labels=[1])
        masks = {c: np.zeros(sim.labels.shape, bool) for c in ids}
        for reverse in (False, True):  # both ways from the first prompted slice, as track() does
            guard = as_guard(continuity)
            for f, obj_ids, logits in video_pred.propagate_in_video(state, reverse=reverse):
                here = {c for c in obj_ids if clicked[c] == f}
                for cid, m in zip(obj_ids, _checked(guard, f, obj_ids, logits[:, 0].numpy() > 0, here)):
                    masks[cid][f] = m
        video_pred.close_state(state)
        for cid in ids:
            truth = sim.labels == cid
            ious.append(_iou(masks[cid], truth))
            zs = np.nonzero(truth.any((1, 2)))[0]
            beyond = np.ones(n_slices, bool)
            beyond[max(zs.min() - 1, 0) : zs.max() + 2] = False
            absent += list(~masks[cid][beyond].any((1, 2)))
    return ious, absent


def evaluate(model, n_movies: int = 8, n_frames: int = 50, size: int = 256, max_objects: int = 8,
             seed: int = HELD_OUT_SEED, progress: bool = False, n_leaving: int = 2,
             leaving_seed: int = LEAVING_SEED, n_volumes: int = 2, volume_seed: int = VOLUME_SEED,
             cell_diameter: bool | str = False, continuity: bool = False) -> Metrics:
    """Measure a model (``SAM2Model``) on ``n_movies`` held-out simulated movies (and the
    object-score accuracy on ``n_leaving`` movies of drifting cells, ``min(n_frames, 30)`` frames,
    and the tracking of nuclei through ``n_volumes`` volumes of 32 slices).

    ``cell_diameter``: the propagated part tracks each movie as ``track(cell_diameter=...)`` does,
    given the movie's true nucleus diameter (the simulator's mean radius range, doubled), in
    windows (:class:`sam2_core.tiled_track.TiledTracker`); needs the model's preferred diameter.
    ``cell_diameter="auto"``: the same, with each movie's diameter estimated from the clicks on
    frame 0 as ``track(cell_diameter="auto")`` does (:mod:`sam2_core.diameter`).
    ``continuity``: every tracked mask passes the continuity guard, as in ``track()``, the widget
    and the CLI (:mod:`sam2_core.continuity`); False: the model's masks as they come."""
    from sam2_core.predictor.image import SAM2ImagePredictor
    from sam2_core.predictor.video import SAM2VideoPredictor

    from sam2_core.track import preferred_diameter

    image_pred = SAM2ImagePredictor(model)
    video_pred = SAM2VideoPredictor(model)
    preferred = preferred_diameter(model)
    if cell_diameter and preferred is None:
        raise ValueError("cell_diameter=True needs a model that stores its preferred cell diameter "
                         "(recommended['cell_diameter'])")
    clicks, clicks3, tracked, absent, divided, undivided = [], [], [], [], [], []
    click_groups, tracked_groups = [], []  # per movie, for the intervals
    clicked_frame = []  # IoU on frame 0 of the tracked cells (reported with cell_diameter)
    scaled_groups: list[list[float]] = []  # per movie, every click in windows at the diameter
    ratios = []  # estimated / true diameter (cell_diameter="auto")
    auto = cell_diameter == "auto"
    if isinstance(cell_diameter, str) and not auto:
        raise ValueError(f"cell_diameter must be True, False or 'auto', got {cell_diameter!r}")
    frames_done, seconds = 0, 0.0
    for i in range(n_movies):
        sim = simulate_cells(n_frames, (size, size), seed=seed + i)
        rng = np.random.default_rng(seed + i)
        image_pred.set_image(sim.movie[0])
        n_before = len(clicks)
        shown: list[tuple[int, np.ndarray]] = []
        for cid in _objects(sim, 0, 4 * max_objects, rng):
            truth = sim.labels[0] == cid
            pt = P.click_inside(truth, rng, central=True)
            shown.append((cid, pt))
            masks, scores, _ = image_pred.predict(point_coords=pt, point_labels=[1])
            clicks.append(_iou(masks[int(np.argmax(scores))], truth))
            if model.config.multimask_output_in_sam:  # the default was already the best of three
                clicks3.append(clicks[-1])
            else:
                masks, scores, _ = image_pred.predict(point_coords=pt, point_labels=[1], multimask_output=True)
                clicks3.append(_iou(masks[int(np.argmax(scores))], truth))
        click_groups.append(clicks[n_before:])
        if cell_diameter and shown:
            lo, hi = sim.params["radius"]
            masks, _ = clicks_at_diameter(video_pred, sim.movie[0], [pt for _, pt in shown], None if auto else lo + hi)
            scaled_groups.append(clicks[n_before:] if masks is None else  # the recorded scale kept
                                 [_iou(m, sim.labels[0] == cid) for m, (cid, _) in zip(masks, shown)])
        objs = _objects(sim, 0, max_objects, rng)
        if not objs:
            continue
        first = {cid: P.click_inside(sim.labels[0] == cid, rng, central=True) for cid in objs}
        families = {cid: sim.descendants(cid) for cid in objs}
        ends = {int(t[0]): int(t[2]) for t in sim.tracks}
        per_obj: dict[int, list[float]] = {c: [] for c in objs}
        after_div: dict[int, list[float]] = {}
        t0 = time.perf_counter()
        for f, ids, masks in _propagated(video_pred, sim, first, preferred if cell_diameter else None,
                                         ratios if auto else None, continuity):
            for cid, m in zip(ids, masks):
                truth = np.isin(sim.labels[f], list(families[cid]))
                if f == 0 and cell_diameter:
                    clicked_frame.append(_iou(m, truth))
                if truth.any():
                    per_obj[cid].append(_iou(m, truth))
                    if len(families[cid]) > 1 and f > ends[cid]:
                        after_div.setdefault(cid, []).append(_iou(m, truth))
                elif f > ends[cid] and len(families[cid]) == 1:  # left the field (or was hidden)
                    absent.append(float(not m.any()))
            frames_done += 1
        seconds += time.perf_counter() - t0
        tracked_groups.append([float(np.mean(v)) for v in per_obj.values() if v])
        tracked += tracked_groups[-1]
        undivided += [float(np.mean(v)) for c, v in per_obj.items() if v and len(families[c]) == 1]
        divided += [float(np.mean(v)) for v in after_div.values()]
        if progress:
            print(f"movie {i + 1}/{n_movies}: click IoU {np.median(clicks):.3f}, "
                  f"propagated IoU {np.median(tracked):.3f}", flush=True)
    gone, shown, on_cell, n_leaving_cells = _leaving(video_pred, n_leaving, min(n_frames, 30), size,
                                                     max_objects, leaving_seed, continuity)
    absent += gone
    if progress and n_leaving:
        print(f"leaving cells: {n_leaving_cells}, absent frames {len(gone)}", flush=True)
    vol_ious, vol_absent = _volumes(video_pred, n_volumes, 32, size, max_objects, volume_seed, continuity)
    if progress and n_volumes:
        print(f"volumes: {len(vol_ious)} nuclei", flush=True)
    med = lambda v: float(np.median(v)) if v else float("nan")  # noqa: E731
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return Metrics(med(clicks), med(tracked), mean(absent), med(divided), mean(shown),
                   len(clicks), len(tracked), len(absent), n_leaving_cells, len(divided),
                   seconds / max(frames_done, 1), med(clicks3), med(vol_ious), mean(vol_absent), len(vol_ious),
                   float(preferred) if cell_diameter else float("nan"),
                   *median_interval(click_groups), *median_interval(tracked_groups),
                   med(clicked_frame) if cell_diameter else float("nan"), med(ratios),
                   med(sum(scaled_groups, [])),
                   *(median_interval(scaled_groups) if scaled_groups else (float("nan"),) * 2),
                   med(undivided), len(undivided), mean(on_cell))


def _propagated(video_pred, sim: SimulatedMovie, clicks: dict[int, np.ndarray], preferred: float | None,
                ratios: list | None = None, continuity: bool = False):
    """Yield (frame, object ids, (N, H, W) bool masks) of the clicked cells tracked from frame 0:
    on the whole frame, or (``preferred``) in windows with the cells brought to that diameter,
    from the true diameter or (``ratios`` given: the estimate / truth is appended) the estimate."""
    if preferred is None:
        state = video_pred.init_state(sim.movie)
        for cid, pt in clicks.items():
            video_pred.add_new_points_or_box(state, 0, cid, points=pt, labels=[1])
        guard = as_guard(continuity)
        try:
            for f, ids, logits in video_pred.propagate_in_video(state):
                yield f, ids, _checked(guard, f, ids, logits[:, 0].numpy() > 0)
        finally:
            video_pred.close_state(state)
        return
    from sam2_core.tiled_track import TiledTracker, iter_results

    lo, hi = sim.params["radius"]
    prompts = [dict(frame=0, object_id=cid, points=pt, labels=[1]) for cid, pt in clicks.items()]
    diameter = lo + hi
    if ratios is not None:
        from sam2_core.diameter import estimate_cell_diameter

        diameter = estimate_cell_diameter(video_pred, sim.movie, prompts).diameter
        ratios.append(diameter / (lo + hi))
    tracker = TiledTracker(video_pred, sim.movie, scale=preferred / diameter)
    try:  # as track() runs it: ended objects leave the batch (reported empty)
        for f, results, _ in iter_results(tracker, prompts, direction="forward", continuity=continuity):
            yield f, [r.obj_id for r in results], [r.full_mask(tracker.hw) for r in results]
    finally:
        tracker.close()


def clicks_at_diameter(video_pred, image: np.ndarray, points: list[np.ndarray],
                       diameter: float | None = None) -> tuple[list[np.ndarray] | None, float]:
    """Each single click's (H, W) mask on ``image`` ((H, W[, C]), one frame), every click
    segmented alone in windows of the image resized so that cells of ``diameter`` pixels reach
    the model's preferred diameter. ``diameter`` None: measured from the first ``AUTO_OBJECTS``
    clicks, as the widget measures its automatic cell diameter; where that implies a scale within
    ``AUTO_TOLERANCE`` of 1 the widget keeps the recorded scale, and the masks are None (the
    caller's recorded-scale figures apply). Returns (masks, diameter)."""
    from sam2_core.diameter import AUTO_OBJECTS, close_scales, estimate_cell_diameter
    from sam2_core.tiled_track import TiledTracker
    from sam2_core.track import MAX_SCALE, preferred_diameter

    prompts = [dict(frame=0, object_id=k + 1, points=pt, labels=[1]) for k, pt in enumerate(points)]
    first = np.asarray(image)[None]
    measured = diameter is None
    if measured:
        diameter = estimate_cell_diameter(video_pred, first, prompts[:AUTO_OBJECTS]).diameter
    scale = float(np.clip(preferred_diameter(video_pred.model) / diameter, 1 / MAX_SCALE, MAX_SCALE))
    if measured and close_scales(scale):
        return None, float(diameter)
    tracker = TiledTracker(video_pred, first, scale=scale)
    try:
        found = {r.obj_id: r.full_mask(tracker.hw) for r in tracker.preview(0, prompts)}
    finally:
        tracker.close()
    return [found.get(k + 1, np.zeros(tracker.hw, bool)) for k in range(len(points))], float(diameter)


CALIBRATION_SEED = 30_000  # calibration images: neither training (1_000_001+) nor held-out (10_000+)


def choose_thresholds(table: dict[tuple[float, float], float], tolerance: float = 0.01
                      ) -> tuple[tuple[float, float], float]:
    """``{(pred_iou_thresh, stability_score_thresh): f1}`` -> the chosen pair and its F1: among
    the pairs within ``tolerance`` of the best F1, the lowest stability threshold, then the best
    F1 at it (ties: the higher IoU threshold). ``tolerance=0`` is the plain best F1."""
    if not table:
        raise ValueError("choose_thresholds needs at least one (iou, stability) -> F1 entry")
    best = max(table.values())
    close = {k: v for k, v in table.items() if v >= best - tolerance}
    stab = min(k[1] for k in close)
    return max(((k, v) for k, v in close.items() if k[1] == stab), key=lambda kv: (kv[1], kv[0][0]))


def calibrate_generator(model, n_images: int = 6, size: int = 256, seed: int = CALIBRATION_SEED,
                        iou_grid: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
                        stability_grid: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9), tolerance: float = 0.01,
                        **generator_kwargs) -> dict:
    """The automatic generator's thresholds that give the best detection F1 for ``model``, or
    the most permissive ones within ``tolerance`` of it.

    Runs :class:`~sam2_core.automatic.SAM2AutomaticMaskGenerator` (blob seeding unless
    ``generator_kwargs`` say otherwise) on the first frames of ``n_images`` simulated movies at
    every (pred_iou_thresh, stability_score_thresh) pair of the grids and scores its labels against
    the truth (:func:`match_score`, IoU > 0.5). Store the result as ``model.recommended`` and save
    the checkpoint: the generator then uses it by default.

    The choice among pairs within ``tolerance`` of the best F1: the lowest stability threshold,
    then the best F1 at it. The simulated F1 cannot see how the thresholds carry over to real
    recordings: for Run S2 (model card) stability 0.8, 0.009 F1 above 0.7 on the simulated
    images, found 58 instead of 77 of the real image's 125 nuclei.

    Returns ``{"pred_iou_thresh", "stability_score_thresh", "f1", "table": {(iou, stab): f1}}``.
    """
    from sam2_core.automatic import SAM2AutomaticMaskGenerator, records_to_labels
    from sam2_core.predictor.image import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)  # one predictor: each image is encoded once
    images = [simulate_cells(1, (size, size), seed=seed + i) for i in range(n_images)]
    kwargs = {"seeding": "blobs", **generator_kwargs}
    table = {}
    for iou_t in iou_grid:
        for stab_t in stability_grid:
            gen = SAM2AutomaticMaskGenerator(predictor, pred_iou_thresh=iou_t, stability_score_thresh=stab_t, **kwargs)
            tp = fp = fn = 0
            for sim in images:
                s = match_score(records_to_labels(gen.generate(sim.movie[0]), (size, size))[None], sim.labels[:1])
                tp, fp, fn = tp + s["tp"], fp + s["fp"], fn + s["fn"]
            table[(iou_t, stab_t)] = 2 * tp / max(2 * tp + fp + fn, 1)
    (best_iou, best_stab), f1 = choose_thresholds(table, tolerance)
    return {"pred_iou_thresh": best_iou, "stability_score_thresh": best_stab, "f1": f1, "table": table}
