"""High-level tracking: prompts in, a labels stack out.

``track`` takes a stack and prompts and returns a (T, Y, X) labels array of object ids;
``track_iter`` yields the labels frame by frame (for GUIs and progress bars) and
``track_4d`` handles 3D+t stacks. Overlaps go to the object with the highest logit, nothing
is written where the object-score head says the object is absent, and masks can be cleaned
(small holes filled, small fragments removed) with scikit-image on the CPU. Frames larger than
1.25x the model input, or resized by ``scale`` / ``cell_diameter``, are tracked in windows of the
input at their own scale (:mod:`sam2_core.tiled_track`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sam2_core import transforms as T
from sam2_core.masks import fill_small_holes, remove_small_fragments

log = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward", "both")


@dataclass
class Prompt:
    """A prompt for one object on one frame: clicks, a box and/or a mask.

    Attributes:
        frame: frame (or slice) index.
        object_id: positive integer id; it becomes the label value.
        points: (N, 2) (x, y) pixels; labels: (N,) 1 positive / 0 negative.
        box: (x0, y0, x1, y1) pixels.
        mask: (H, W) bool mask.
        z: slice index for 3D+t stacks (``track_4d``); ``frame`` is then the time point.
    """

    frame: int
    object_id: int
    points: Any = None
    labels: Any = None
    box: Any = None
    mask: Any = None
    z: int | None = None

    def __post_init__(self) -> None:
        if int(self.object_id) < 1:
            raise ValueError(f"object ids must be positive integers, got {self.object_id}")
        if self.points is None and self.box is None and self.mask is None:
            raise ValueError(f"prompt for object {self.object_id} on frame {self.frame} has no points, box or mask")
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
            self.labels = np.ones(len(self.points), np.int64) if self.labels is None else np.asarray(self.labels).reshape(-1)


def as_prompts(prompts: Iterable[Any]) -> list[Prompt]:
    """Accept Prompt objects or dicts with the same keys (``object_id`` may be ``obj_id``)."""
    out = []
    for p in prompts:
        if isinstance(p, Prompt):
            out.append(p)
        elif isinstance(p, dict):
            d = dict(p)
            if "obj_id" in d:
                d["object_id"] = d.pop("obj_id")
            out.append(Prompt(**d))
        else:
            raise TypeError(f"a prompt must be a Prompt or a dict, got {type(p).__name__}")
    if not out:
        raise ValueError("no prompts given: add at least one point, box or mask")
    return out


#: added to the positive logits of objects prompted on a frame (``logits_to_labels(prompted=)``):
#: far above any logit the decoder produces.
PROMPTED_FIRST = 1e4


def prompted_on(state, obj_ids: Sequence[int], frame: int) -> list[bool]:
    """Per object: whether the user prompted it on ``frame`` (clicks, a box or a mask)."""
    return [frame in state.objects[int(i)].prompt_frames() for i in obj_ids]


def labels_dtype(max_id: int) -> np.dtype:
    """uint16 for ids up to 65535, uint32 beyond."""
    return np.dtype(np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32)


def apply_prompts(predictor, state, prompts: list[Prompt]) -> None:
    """Feed prompts to a video predictor state (clicks and boxes on one frame are combined)."""
    grouped: dict[tuple[int, int], list[Prompt]] = defaultdict(list)
    for p in prompts:
        grouped[(int(p.frame), int(p.object_id))].append(p)
    for (frame, obj), group in sorted(grouped.items()):
        masks = [p.mask for p in group if p.mask is not None]
        if masks:
            predictor.add_new_mask(state, frame, obj, np.any(np.stack([np.asarray(m, bool) for m in masks]), axis=0))
            continue
        boxes = [p.box for p in group if p.box is not None]
        pts = [p.points for p in group if p.points is not None]
        labs = [p.labels for p in group if p.points is not None]
        predictor.add_new_points_or_box(
            state, frame, obj,
            points=np.concatenate(pts) if pts else None,
            labels=np.concatenate(labs) if labs else None,
            box=boxes[-1] if boxes else None,
        )


def logits_to_labels(
    low_res: torch.Tensor,
    obj_ids: list[int],
    hw: tuple[int, int],
    dtype: np.dtype,
    *,
    chunk: int = 16,
    prompted: Sequence[bool] | None = None,
    canvas: tuple[int, int] | None = None,
) -> np.ndarray:
    """(N, 1, L, L) low-res logits -> (H, W) labels: each pixel to the highest positive logit.

    ``prompted`` (one flag per object): objects the user prompted on this frame come first, so
    that an object tracked in from another frame never paints over a cell the user clicked here
    (the highest logit among prompted objects still decides between them). ``canvas``: the
    frame was padded to this size before the resize (``predictor.canvas_hw(state)``).
    """
    h, w = hw
    best = torch.full((h, w), 0.0, device=low_res.device)
    ids = torch.zeros((h, w), dtype=torch.int64, device=low_res.device)
    id_t = torch.as_tensor(obj_ids, device=low_res.device)
    first = None if prompted is None or not any(prompted) else torch.as_tensor(list(prompted), device=low_res.device)
    for s in range(0, low_res.shape[0], chunk):
        up = T.masks_to_original(low_res[s : s + chunk], (h, w), canvas)[:, 0]
        if first is not None:
            boost = first[s : s + chunk, None, None] & (up > 0)
            up = torch.where(boost, up + PROMPTED_FIRST, up)
        m, which = up.max(0)
        better = m > best
        best = torch.where(better, m, best)
        ids = torch.where(better, id_t[s : s + chunk][which], ids)
    return ids.cpu().numpy().astype(dtype)


def clean_labels(frame: np.ndarray, fill_holes: int, min_size: int) -> np.ndarray:
    """Per object: fill holes up to ``fill_holes`` px and drop fragments under ``min_size`` px."""
    if fill_holes <= 0 and min_size <= 0:
        return frame
    from scipy import ndimage

    out = frame.copy()
    for obj_id, sl in enumerate(ndimage.find_objects(frame), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        sub = frame[sl]
        m = sub == obj_id
        m2 = remove_small_fragments(m, min_size)
        m2 = fill_small_holes(m2, fill_holes)
        view = out[sl]
        view[m & ~m2] = 0
        view[m2 & (view == 0)] = obj_id
    return out


def passes(prompts: Sequence[Prompt], direction: str) -> list[tuple[int, bool]]:
    """(start frame, reverse) of each propagation pass: forward from the earliest prompted frame,
    backward from the latest, both = forward then backward from the earliest."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    frames = [int(p.frame) for p in prompts]
    return {"forward": [(min(frames), False)], "backward": [(max(frames), True)],
            "both": [(min(frames), False), (min(frames), True)]}[direction]


def track_iter(
    predictor,
    state,
    prompts: Iterable[Any],
    *,
    direction: str = "forward",
    max_frames: int | None = None,
    fill_holes: int = 0,
    min_size: int = 0,
    continuity: Any = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """Apply prompts and yield (frame_idx, (H, W) labels) as tracking goes.

    Forward runs from the earliest prompted frame to the end, backward from the latest one
    to the start, both = forward then backward from the earliest prompted frame. A frame
    already yielded is not yielded again. ``continuity``: end an object's track where its mask
    jumps or swells (:mod:`sam2_core.continuity`; or a ``ContinuityGuard`` to use, whose ``ended``
    lists the tracks it ended).
    """
    from sam2_core.continuity import as_guard

    prompts = as_prompts(prompts)
    plan = passes(prompts, direction)
    apply_prompts(predictor, state, prompts)
    dtype = labels_dtype(max(int(p.object_id) for p in prompts))
    hw = (state.video_height, state.video_width)
    seen: set[int] = set()
    guard = as_guard(continuity)
    for start, reverse in plan:
        if guard is not None:
            guard.reset()
        skip = guard.has_ended if guard is not None else None  # ended objects are no longer computed
        for f, ids, low in predictor.propagate_low_res(state, start, max_frames, reverse, skip=skip):
            prompted = prompted_on(state, ids, f)
            if guard is not None:
                low = guard.filter_low_res(f, ids, low, prompted)
            if f in seen:
                continue
            seen.add(f)
            lab = logits_to_labels(low, ids, hw, dtype, prompted=prompted, canvas=predictor.canvas_hw(state))
            yield f, clean_labels(lab, fill_holes, min_size)


def track(
    frames: Any,
    prompts: Iterable[Any],
    *,
    model: Any = "default",
    direction: str = "forward",
    max_frames: int | None = None,
    fill_holes: int = 0,
    min_size: int = 0,
    device: str | None = None,
    contrast_limits: Any = None,
    channels: Any = None,
    channel_axis: int | None = None,
    embedding_cache: Any = None,
    out: Any = None,
    progress: Callable[[int, int], None] | None = None,
    speed: str | None = None,
    precision: str | None = None,
    scale: float | None = None,
    cell_diameter: float | str | None = None,
    windows: bool | None = None,
    stabilize: Any = False,
    continuity: bool = True,
    info: dict | None = None,
) -> Any:
    """Track prompted objects through a stack; returns (T, Y, X) labels of object ids.

    Args:
        frames: (T, Y, X) / (T, Y, X, C) array-like or a path (see ``FrameSource``).
        prompts: :class:`Prompt` objects or dicts (frame, object_id, points, labels, box, mask).
        model: a model name, checkpoint path, ``SAM2Model`` or ``SAM2VideoPredictor``.
        direction: "forward", "backward" or "both".
        max_frames: track at most this many frames after the start frame.
        fill_holes / min_size: per-object hole filling and fragment removal, in pixels.
        out: an array-like (T, Y, X) to write into (e.g. a zarr array for huge stacks);
            default a new uint16 (uint32 past 65535 ids) numpy array. Untracked frames stay 0.
        progress: called as ``progress(done, total)`` after each frame.
        speed: "exact" (default) or "fast" (local windows; see ``SAM2VideoPredictor``); None
            keeps a given predictor's own mode.
        precision: "fp32", "bf16", "fp16" or "auto" (``SAM2VideoPredictor``): bf16 is several
            times faster on CPUs with AMX or AVX512-BF16 and on GPUs, at a mask IoU of about
            0.998 against fp32 (docs/engine.md); None: fp32 in exact mode, "auto" in fast mode,
            or a given predictor's own precision.
        scale: resize the frames by this factor before tracking (e.g. 2 for nuclei half the
            size the model knows); masks come back at the recorded size.
        cell_diameter: the cells' typical diameter in recorded pixels; sets ``scale`` so that
            they reach the diameter the model tracks best (:func:`preferred_diameter`). "auto":
            measured from the prompts' masks (:func:`sam2_core.diameter.estimate_cell_diameter`).
            None (default): "auto" when the model stores its preferred diameter (the bundled
            model does) and neither ``scale`` nor ``windows=False`` is given, falling back to
            the recorded scale if nothing can be measured; otherwise the recorded scale. 0 or
            "off": the recorded scale.
        windows: track in windows of the model's input at the (scaled) pixel scale
            (:class:`sam2_core.tiled_track.TiledTracker`). None (default): when the scaled frame
            is larger than 1.25x the input, or a scale other than 1 is asked for; False: resize
            whole frames to the input (Meta's way).
        stabilize: True: remove the field's common translation (stage drift) before tracking:
            the frames are registered by cross-correlation and tracked on a steady canvas; labels
            and prompts stay in each frame's recorded pixels (:mod:`sam2_core.stabilize`). Or a
            (T, 2) drift already measured (:func:`sam2_core.stabilize.estimate_drift`).
        continuity: end an object's track (no labels for the rest of the pass) where its mask
            jumps away from its last mask or swells past 4x its first area: the cell left the
            field, ended in a volume, or the tracker slid onto neighbours
            (:mod:`sam2_core.continuity`). False: SAM 2's masks as they come.
        info: a dict that receives what was decided: ``scale`` (the frame scale used),
            ``cell_diameter`` (given or estimated; None without one),
            ``cell_diameter_estimated`` and, after tracking, ``ended``: the (object, frame) pairs
            where the continuity guard ended a track.
    """
    from sam2_core.continuity import as_guard
    from sam2_core.io.frames import FrameSource
    from sam2_core.tiled_track import TiledTracker, iter_labels, uses_windows

    predictor = _as_predictor(model, device, speed, precision)
    guard = as_guard(continuity)  # one guard for the whole run: its ``ended`` goes to ``info``
    prompts = as_prompts(prompts)
    cell_diameter = as_diameter(cell_diameter)
    by_default = (cell_diameter is None and scale is None and windows is not False
                  and default_auto(predictor.model, prompts))
    auto = by_default or cell_diameter == "auto"
    factor = 1.0 if auto else resolve_scale(predictor.model, scale, cell_diameter)
    source = frames if isinstance(frames, FrameSource) else FrameSource(
        frames, contrast_limits=contrast_limits, channels=channels, channel_axis=channel_axis)
    if auto:  # measured on the recorded frames: a drift moves cells, it does not resize them
        from sam2_core.diameter import estimate_cell_diameter

        if scale is not None:
            raise ValueError("give scale or cell_diameter, not both")
        try:
            found = estimate_cell_diameter(predictor, source, prompts)
            cell_diameter = found.diameter
            factor = resolve_scale(predictor.model, None, cell_diameter)
            log.info("cell diameter estimated from %d prompted objects: %.1f px", len(found.per_object), cell_diameter)
        except ValueError as e:
            if not by_default:
                raise
            log.warning("cell diameter not measured (%s); tracking at the recorded scale", e)
            auto, cell_diameter, factor = False, None, 1.0
    if info is not None:
        info.update(scale=factor, cell_diameter=cell_diameter, cell_diameter_estimated=auto)
    recorded_hw, canvas = (source.height, source.width), None
    if stabilize is not None and stabilize is not False:  # True, or a drift measured before
        from sam2_core.stabilize import SteadyCanvas, estimate_drift

        canvas = SteadyCanvas(source, estimate_drift(source) if stabilize is True else stabilize)
        prompts = [canvas.prompt_to_canvas(p) for p in prompts]
        source = canvas.frames()
    if not uses_windows(source.height, source.width, predictor.image_size, factor, windows):
        state = predictor.init_state(source, embedding_cache=embedding_cache)
        n = state.num_frames
        labels = ((f, lab, False) for f, lab in track_iter(predictor, state, prompts, direction=direction,
                                                           max_frames=max_frames, fill_holes=fill_holes,
                                                           min_size=min_size, continuity=guard or False))
        close = lambda: predictor.close_state(state)  # noqa: E731
    else:
        tracker = TiledTracker(predictor, source, scale=factor, embedding_cache=embedding_cache)
        n = tracker.num_frames
        labels = iter_labels(tracker, prompts, direction=direction, max_frames=max_frames,
                             fill_holes=fill_holes, min_size=min_size, continuity=guard or False)
        close = tracker.close
    if out is None:
        out = np.zeros((n, *recorded_hw), labels_dtype(max(int(p.object_id) for p in prompts)))
    total = n if max_frames is None else min(n, max_frames + 1)
    done = 0
    try:
        for f, lab, again in labels:
            if canvas is not None:
                lab = canvas.labels_to_frame(lab, f)
            if again:  # objects that reached this frame in a later pass go under the earlier ones
                old = np.asarray(out[f])
                out[f] = np.where(old > 0, old, lab)
                continue
            out[f] = lab
            done += 1
            if progress is not None:
                progress(done, total)
    finally:
        close()
        if info is not None:
            info["ended"] = list(guard.ended) if guard is not None else []
    return out


def preferred_diameter(model: Any) -> float | None:
    """The cell diameter (model-input pixels) a model tracks best, stored with its weights
    (``model.recommended["cell_diameter"]``); None if unknown."""
    value = (getattr(model, "recommended", None) or {}).get("cell_diameter")
    return float(value) if value else None


def default_auto(model: Any, prompts: Sequence[Any]) -> bool:
    """Whether ``cell_diameter=None`` means "auto": the model stores its preferred diameter and a
    prompt has something to measure (a positive click, a box or a mask)."""
    from sam2_core.diameter import has_positive

    return preferred_diameter(model) is not None and any(has_positive(p) for p in prompts)


def as_diameter(value: Any) -> float | str | None:
    """A ``cell_diameter`` value as given by a caller, a command line or a manifest: None, "auto"
    (any case), "off" / "none" (= 0: the recorded scale), or a number of pixels (range checked by
    :func:`resolve_scale`)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().lower() in ("off", "none"):
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"cell_diameter must be a number of pixels or 'auto', got {value!r}") from None


def resolve_scale(model: Any, scale: float | None, cell_diameter: float | None) -> float:
    """The frame scale from ``scale`` or ``cell_diameter`` (default 1; a diameter of 0: off)."""
    if cell_diameter == 0:
        cell_diameter = None
    if scale is not None and cell_diameter is not None:
        raise ValueError("give scale or cell_diameter, not both")
    if cell_diameter is not None:
        if not np.isfinite(cell_diameter) or cell_diameter <= 0:
            raise ValueError(f"cell_diameter must be a positive number of pixels, got {cell_diameter}")
        pref = preferred_diameter(model)
        if pref is None:
            raise ValueError("this model stores no preferred cell diameter (recommended['cell_diameter']): "
                             "give scale= instead (e.g. 2.0 to enlarge the frames 2x)")
        factor = pref / float(cell_diameter)
        if not 1 / MAX_SCALE <= factor <= MAX_SCALE:
            raise ValueError(f"a cell diameter of {cell_diameter:g} px would resize the frames {factor:.3g}x "
                             f"(this model tracks cells of {pref:g} px); give the diameter in pixels of the "
                             f"recorded frames, between {pref / MAX_SCALE:g} and {pref * MAX_SCALE:g}")
        return factor
    if scale is None:
        return 1.0
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale}")
    if not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"scale {scale:g} is outside 1/{MAX_SCALE:g} .. {MAX_SCALE:g}")
    return float(scale)


#: the largest enlargement (and reduction) ``scale`` / ``cell_diameter`` may ask for
MAX_SCALE = 16.0


def _as_predictor(model: Any, device: str | None, speed: str | None = None, precision: str | None = None):
    """A video predictor from a predictor, a model, a checkpoint path or a model name.

    A given predictor is used as it is unless ``speed`` or ``precision`` asks for another one;
    then a new predictor of its model is made, with the given predictor's speed mode if only
    the precision was asked for (a new speed mode brings its own default precision).
    """
    import os

    from sam2_core import precision as precision_mod
    from sam2_core.build import build_sam2
    from sam2_core.modeling.sam2 import SAM2Model
    from sam2_core.predictor.video import SAM2VideoPredictor

    if isinstance(model, SAM2VideoPredictor):
        same_speed = speed is None or speed == model.speed
        same_precision = precision is None or precision_mod.resolve(precision, model.model.device) == model.precision
        if same_speed and same_precision:
            return model
        speed, model = speed or model.speed, model.model
    if not isinstance(model, SAM2Model):
        path = str(model)
        model = build_sam2(checkpoint=path, device=device) if os.path.isfile(path) else build_sam2(path, device=device)
    return SAM2VideoPredictor(model, speed=speed or "exact", precision=precision)


def track_4d(
    stack: Any,
    prompts: Iterable[Any],
    *,
    model: Any = "default",
    fill_holes: int = 0,
    min_size: int = 0,
    device: str | None = None,
    contrast_limits: Any = None,
    progress: Callable[[int, int], None] | None = None,
    speed: str | None = None,
    precision: str | None = None,
    scale: float | None = None,
    cell_diameter: float | str | None = None,
    continuity: bool = True,
) -> np.ndarray:
    """Track objects in a 3D+t stack (T, Z, Y, X[, C]); returns (T, Z, Y, X) labels.

    Strategy: all prompts must be in one time point t0 (``Prompt.frame`` = t0, ``Prompt.z`` =
    slice). (1) The volume at t0 is tracked through z in both directions from the prompted
    slices. (2) Each z slice is then tracked through time in both directions from t0, with the
    t0 masks as mask prompts. Every (t, z) plane is encoded once per step it takes part in.
    ``speed``, ``precision``, ``scale`` and ``cell_diameter`` are as in :func:`track` (one scale for every step;
    "auto" measures the diameter once, from the prompts on their slices at t0); so is
    ``continuity``, in both steps.
    """
    prompts = as_prompts(prompts)
    times = {int(p.frame) for p in prompts}
    if len(times) != 1 or any(p.z is None for p in prompts):
        raise ValueError("track_4d needs prompts in a single time point, each with a z index")
    t0 = times.pop()
    predictor = _as_predictor(model, device, speed, precision)
    shape = stack.shape
    if len(shape) not in (4, 5):
        raise ValueError(f"expected a (T, Z, Y, X[, C]) stack, got shape {shape}")
    n_t, n_z = shape[0], shape[1]
    dtype = labels_dtype(max(int(p.object_id) for p in prompts))
    out = np.zeros((n_t, n_z, shape[2], shape[3]), dtype)
    if contrast_limits is None and not (np.dtype(stack.dtype) == np.uint8 and len(shape) == 5 and shape[-1] == 3):
        contrast_limits = _limits_4d(stack)  # one normalisation for every plane
    z_prompts = [Prompt(int(p.z), p.object_id, p.points, p.labels, p.box, p.mask) for p in prompts]
    decided: dict = {}
    out[t0] = track(stack[t0], z_prompts, model=predictor, direction="both", fill_holes=fill_holes,
                    min_size=min_size, contrast_limits=contrast_limits, scale=scale, cell_diameter=cell_diameter,
                    continuity=continuity, info=decided)
    resized = dict(scale=decided["scale"], continuity=continuity)  # the same scale through time (not measured again)
    done = 0
    for z in range(n_z):
        ids = [int(i) for i in np.unique(out[t0, z]) if i]
        if ids and n_t > 1:
            masks = [Prompt(t0, i, mask=out[t0, z] == i) for i in ids]
            out[:, z] = track(_ZSlice(stack, z), masks, model=predictor, direction="both",
                              fill_holes=fill_holes, min_size=min_size, contrast_limits=contrast_limits, **resized)
        done += 1
        if progress is not None:
            progress(done, n_z)
    return out


def _limits_4d(stack: Any, n: int = 16) -> Any:
    """Robust per-channel limits from up to ``n`` (t, z) planes spread over the stack."""
    from sam2_core.transforms import percentile_limits

    n_t, n_z = stack.shape[:2]
    picks = np.linspace(0, n_t * n_z - 1, min(n, n_t * n_z)).astype(int)
    planes = [np.asarray(stack[i // n_z, i % n_z]) for i in picks]
    data = np.stack(planes)
    if data.ndim == 3:
        return percentile_limits(data)
    return [percentile_limits(data[..., c]) for c in range(data.shape[-1])]


class _ZSlice:
    """Lazy (T, Y, X[, C]) view of one z slice of a (T, Z, Y, X[, C]) stack."""

    def __init__(self, stack: Any, z: int) -> None:
        self.stack, self.z = stack, z
        self.shape = (stack.shape[0], *stack.shape[2:])
        self.dtype = stack.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, t: int) -> np.ndarray:
        return np.asarray(self.stack[t, self.z])
