"""SegmentationSession: the model, the tracking state and the prompts of one image (no Qt).

The widget and the scripting API both drive this object. It never touches a layer: it takes
arrays and prompt dicts and returns masks and label frames. Calls are serialised by a lock,
so a background worker and the GUI thread can share it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from napari_sam2._layers import StackView

_logger = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """The chosen model cannot be loaded; the message says what to do."""


def load_model(name: str = "default", checkpoint: str | None = None, device: str | None = None,
               progress: Any = None):
    """Build a model for the plugin, turning every failure into one actionable message.

    ``progress``: a ``(done_bytes, total_bytes)`` callable reporting the download of an official
    model that is not cached yet (default: a text bar on stderr).
    """
    from sam2_core import build_sam2
    from sam2_core.build import bundled_checkpoint

    try:
        if not checkpoint and name != "default" and progress is not None:
            from sam2_core import weights

            weights.ensure_weights(name, progress=progress)  # downloads once, SHA-256 checked
        if checkpoint:
            return build_sam2(checkpoint=checkpoint, device=device)
        if name == "default" and bundled_checkpoint() is None:
            _logger.warning("no bundled model in this installation: using random weights (results are not meaningful)")
            import torch

            torch.manual_seed(0)
            return build_sam2("default", pretrained=False, image_size=256, device=device)
        return build_sam2(name, device=device)
    except Exception as e:  # weights missing, offline, bad file, unknown device ...
        raise ModelUnavailable(f"model {checkpoint or name!r} is not available: {e}") from e


def _fingerprint(key: tuple[int, int], points: dict, boxes: dict, masks: dict) -> tuple:
    """What identifies one object's prompts on one frame (to skip recomputing unchanged ones)."""
    p, b, m = points.get(key), boxes.get(key), masks.get(key)
    return (
        None if p is None else (p[0].tobytes(), p[1].tobytes()),
        None if b is None else b.tobytes(),
        None if m is None else hash(np.packbits(m).tobytes()),
    )


def prompt_objects(points: dict, boxes: dict, masks: dict, obj_ids: Sequence[int] | None = None) -> list:
    """Prompt dicts keyed (frame, object id) -> ``sam2_core.track.Prompt`` objects; a mask prompt
    stands alone on its frame (optionally only the objects ``obj_ids``)."""
    from sam2_core.track import Prompt

    out = []
    for key in sorted(set(points) | set(boxes) | set(masks)):
        frame, obj = key
        if obj_ids is not None and obj not in obj_ids:
            continue
        p, m = points.get(key), masks.get(key)
        if m is not None:
            out.append(Prompt(frame, obj, mask=m))
        elif p is not None or boxes.get(key) is not None:
            out.append(Prompt(frame, obj, None if p is None else p[0], None if p is None else p[1], boxes.get(key)))
    return out


class SegmentationSession:
    """Interactive segmentation and tracking on one stack.

    Args:
        model: a ``SAM2Model`` (or anything ``load_model`` returns).
        fill_hole_area: passed to the video predictor.
        speed: the video predictor's tracking mode: "exact" (Meta's computation) or "fast"
            (each object tracked in a window around it; see docs/engine.md).
        precision: the predictor's arithmetic precision ("fp32", "bf16", "fp16", "auto"; None:
            fp32 in exact mode, auto in fast mode).
    """

    def __init__(self, model: Any, *, fill_hole_area: int = 8, speed: str = "exact",
                 cell_diameter: float | None = None, stabilize: bool = False, precision: str | None = None) -> None:
        from sam2_core.predictor.video import SAM2VideoPredictor
        from sam2_core.track import resolve_scale

        self.model = model
        self.speed = speed
        self.predictor = SAM2VideoPredictor(model, fill_hole_area=fill_hole_area, speed=speed, precision=precision)
        self.cell_diameter = cell_diameter or None
        #: frames are resized by this before tracking (from the cell diameter; 1 = as recorded)
        self.scale = resolve_scale(model, None, self.cell_diameter)
        self._tracker = None  # TiledTracker of stacks tracked in windows (large frames or a scale)
        #: stage drift removed before tracking (sam2_core.stabilize); the stack is then tracked in
        #: windows of a steady canvas, prompts and labels stay in each frame's pixels
        self.stabilize = bool(stabilize)
        self._canvas = None  # SteadyCanvas of the current stack (made with the tracker)
        #: end a track where its mask jumps or swells (sam2_core.continuity); False: SAM 2's masks
        self.continuity = True
        #: (object, frame) where the guard ended a track in the last propagation
        self.ended: list[tuple[int, int]] = []
        self._prompt_dicts: tuple[dict, dict, dict] = ({}, {}, {})
        self._cleared: set[tuple[int, int]] = set()  # (frame, obj) whose prompts the last sync removed
        self.lock = threading.RLock()
        self.state = None
        self.view: StackView | None = None
        self._data_id: tuple | None = None
        self._applied: dict[tuple[int, int], tuple] = {}  # (frame, obj) -> prompt fingerprint
        self._tiled = None  # TiledImagePredictor for single images larger than the model input
        self._tiled_id: tuple | None = None
        self._tiled_results: dict[int, tuple] = {}  # obj -> (prompt fingerprint, mask, score)

    # --- data --------------------------------------------------------------------------------

    def set_stack(self, data: Any, view: StackView, contrast_limits: Any = None) -> bool:
        """Use layer ``data`` seen through ``view``; returns True if tracking state was reset."""
        key = (id(data), view, None if contrast_limits is None else tuple(np.ravel(contrast_limits)))
        with self.lock:
            if key == self._data_id and self.state is not None:
                return False
            if self.state is not None:
                self.predictor.close_state(self.state)
            self.view = view
            if self._tracker is not None:
                self._tracker.close()
            self._tracker, self._canvas = None, None  # made from the new state's frames on first use
            self.state = self.predictor.init_state(view.stack_of(data), contrast_limits=contrast_limits)
            self._data_id = key
            self._applied.clear()
            return True

    # --- stacks tracked in windows ---------------------------------------------------------------

    def windowed(self, view: StackView | None = None) -> bool:
        """Whether the stack is tracked in windows of the model input at the scale of its pixels
        (frames larger than 1.25x the input, a cell diameter set, or stage drift removed): see
        ``sam2_core.tiled_track``."""
        from sam2_core.tiled_track import uses_windows

        view = view or self.view
        if view is None:
            return False
        if view.axis is None:  # a single image: windows only for a scale (else tiles, needs_tiles)
            return self.scale != 1.0
        return self.stabilize or uses_windows(*view.frame_shape, self.model.image_size, self.scale)

    def tracker(self):
        """The :class:`~sam2_core.tiled_track.TiledTracker` of the current stack (made on first use)."""
        from sam2_core.tiled_track import TiledTracker

        self._require()
        if self._tracker is None:
            source = self.state.frames
            if self.stabilize:  # one pass over the stack measures the drift (sam2_core.stabilize)
                from sam2_core.stabilize import SteadyCanvas, estimate_drift

                self._canvas = SteadyCanvas(source, estimate_drift(source))
                source = self._canvas.frames()
            self._tracker = TiledTracker(self.predictor, source, scale=self.scale)
        return self._tracker

    def _to_tracker(self, prompts: list) -> list:
        """Prompts on the frames' pixels -> the tracker's (the steady canvas when stabilizing)."""
        return prompts if self._canvas is None else [self._canvas.prompt_to_canvas(p) for p in prompts]

    def _from_tracker(self, labels: np.ndarray, frame: int) -> np.ndarray:
        """The tracker's labels of a frame -> the frame's own pixels."""
        return labels if self._canvas is None else self._canvas.labels_to_frame(labels, frame)

    def prompt_list(self, obj_ids: Sequence[int] | None = None) -> list:
        """The current prompts as ``sam2_core.track.Prompt`` objects (optionally of some objects)."""
        return prompt_objects(*self._prompt_dicts, obj_ids=obj_ids)

    def measure_diameter(self, data: Any, view: StackView, contrast_limits: Any,
                         points: dict, boxes: dict, masks: dict):
        """The cells' typical diameter (recorded pixels) from the prompts' masks: a
        :class:`sam2_core.diameter.DiameterEstimate` (``estimate_cell_diameter``)."""
        from sam2_core.diameter import estimate_cell_diameter
        from sam2_core.io.frames import FrameSource

        source = FrameSource(view.stack_of(data), contrast_limits=contrast_limits)
        with self.lock:
            return estimate_cell_diameter(self.predictor, source, prompt_objects(points, boxes, masks))

    def provenance(self) -> dict:
        """What produces the labels: the predictor's record plus the scale and windows used."""
        info = dict(self.predictor.provenance())
        if self.view is not None and (self.view.axis is not None or self.scale != 1.0):
            info["scale"] = self.scale
            info["windows"] = self.windowed()
            from sam2_core.stabilize import provenance

            info.update(provenance(self._canvas.drift) if self._canvas is not None else {"stabilize": self.stabilize})
            info["continuity"] = self.continuity
        return info

    # --- single large images -------------------------------------------------------------------

    def needs_tiles(self, view: StackView) -> bool:
        """A single 2-D image larger than the model input, at the recorded scale: prompts are
        segmented in tiles at the model's own scale instead of on the whole image resized to the
        input (with a cell diameter's scale, in windows as stacks are: :meth:`windowed`)."""
        from sam2_core.tiling import larger_than_input

        return view.axis is None and self.scale == 1.0 and larger_than_input(self.model.image_size, *view.frame_shape)

    def tiled_labels(self, data: Any, view: StackView, contrast_limits: Any,
                     points: dict, boxes: dict | None = None, masks: dict | None = None) -> tuple[np.ndarray, list[int]]:
        """(H, W) labels and object ids of a large single image: each object's clicks or box go to
        the tile that holds them (:class:`sam2_core.tiling.TiledImagePredictor`, only that tile
        is encoded); mask prompts are taken as they are. Where objects overlap, the one with the
        higher predicted IoU keeps the pixel."""
        from sam2_core.tiling import TiledImagePredictor
        from sam2_core.track import labels_dtype

        boxes, masks = boxes or {}, masks or {}
        key = (id(data), view, None if contrast_limits is None else tuple(np.ravel(contrast_limits)))
        with self.lock:
            if self._tiled is None:
                self._tiled = TiledImagePredictor(self.model)
            if key != self._tiled_id:
                self._tiled.set_image(np.asarray(view.stack_of(data)[0]), contrast_limits=contrast_limits)
                self._tiled_id = key
                self._tiled_results.clear()
            ids = sorted({obj for _, obj in set(points) | set(boxes) | set(masks)})
            shape = view.frame_shape
            labels = np.zeros(shape, labels_dtype(max(ids, default=0)))
            best = np.full(shape, -np.inf, np.float32)
            for obj in ids:
                k = (0, obj)
                fp = _fingerprint(k, points, boxes, masks)
                cached = self._tiled_results.get(obj)
                if cached is None or cached[0] != fp:  # new or changed prompts: decode them
                    cached = (fp, *self._tiled_mask(k, points, boxes, masks))
                    self._tiled_results[obj] = cached
                _, mask, (y0, x0), score = cached
                region = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
                win = mask & (score > best[region])
                labels[region][win], best[region][win] = obj, score
            self._tiled_results = {o: self._tiled_results[o] for o in ids}
            return labels, ids

    def _tiled_mask(self, k: tuple[int, int], points: dict, boxes: dict, masks: dict):
        """(mask cropped to where it can be, (y0, x0) of the crop, score) of one object's prompts."""
        if k in masks and k not in points and k not in boxes:
            mask = np.asarray(masks[k], bool)
            return mask, (0, 0), 1.0
        p = points.get(k)
        single = p is not None and len(p[0]) == 1 and k not in boxes
        out, scores, _ = self._tiled.predict(
            point_coords=None if p is None else p[0], point_labels=None if p is None else p[1],
            box=boxes.get(k), multimask_output=None if single else False)  # one click: the model's choice
        i = int(np.argmax(scores))
        y0, y1, x0, x1 = self._tiled.last_tile.outer  # the mask is empty outside its tile
        return out[i, y0:y1, x0:x1].copy(), (y0, x0), float(scores[i])  # not a view of the full mask

    def _require(self) -> None:
        if self.state is None:
            raise RuntimeError("no image chosen: select an Image layer first")

    def prefetch(self, frame: int) -> None:
        """Compute (and cache) the embedding of a frame, e.g. as soon as it is shown."""
        with self.lock:
            self._require()
            if 0 <= frame < self.state.num_frames and not self.windowed():  # windows encode on use
                self.state.features.get(frame)

    # --- prompts -----------------------------------------------------------------------------

    def sync_prompts(
        self,
        points: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
        boxes: dict[tuple[int, int], np.ndarray] | None = None,
        masks: dict[tuple[int, int], np.ndarray] | None = None,
    ) -> list[tuple[int, int]]:
        """Make the tracker's prompts equal the given ones; returns the (frame, obj) that changed.

        Unchanged prompts are not recomputed; prompts that disappeared are cleared.
        """
        boxes, masks = boxes or {}, masks or {}
        wanted = {key: _fingerprint(key, points, boxes, masks) for key in set(points) | set(boxes) | set(masks)}
        changed = []
        with self.lock:
            self._require()
            self._prompt_dicts = (dict(points), dict(boxes), dict(masks))
            if self.windowed():  # prompts are applied in their windows when shown or tracked
                changed = sorted(k for k in set(self._applied) | set(wanted) if self._applied.get(k) != wanted.get(k))
                self._cleared = set(self._applied) - set(wanted)
                self._applied = dict(wanted)
                return changed
            for key in sorted(set(self._applied) - set(wanted)):
                frame, obj = key
                if obj in self.state.objects:
                    self.predictor.clear_all_prompts_in_frame(self.state, frame, obj, need_output=False)
                del self._applied[key]
                changed.append(key)
            for key, fp in sorted(wanted.items()):
                if self._applied.get(key) == fp:
                    continue
                frame, obj = key
                if masks.get(key) is not None:
                    self.predictor.add_new_mask(self.state, frame, obj, masks[key])
                else:
                    p = points.get(key)
                    self.predictor.add_new_points_or_box(
                        self.state, frame, obj,
                        points=None if p is None else p[0], labels=None if p is None else p[1],
                        box=boxes.get(key),
                    )
                self._applied[key] = fp
                changed.append(key)
            for obj in [o for o in self.state.obj_ids if not any(k[1] == o for k in self._applied)]:
                self.predictor.remove_object(self.state, obj, need_output=False)
        return changed

    def frame_labels(self, frame: int) -> tuple[np.ndarray, list[int]]:
        """(H, W) labels of every object's current result on a frame, and the object ids."""
        from sam2_core.track import labels_dtype, logits_to_labels, prompted_on

        with self.lock:
            self._require()
            if self.windowed():
                return self._window_frame_labels(frame)
            ids = self.state.obj_ids
            if not ids:
                return np.zeros(self.view.frame_shape, np.uint16), []
            low = self.predictor.current_low_res(self.state, frame)
            return logits_to_labels(low, ids, self.view.frame_shape, labels_dtype(max(ids)),
                                    prompted=prompted_on(self.state, ids, frame),
                                    canvas=self.predictor.canvas_hw(self.state)), ids

    def _window_frame_labels(self, frame: int) -> tuple[np.ndarray, list[int]]:
        """Labels of the objects prompted on ``frame``, from their prompts in their windows (the
        objects of other frames keep the labels their tracking wrote)."""
        from sam2_core.tiled_track import merge_labels
        from sam2_core.track import labels_dtype

        prompts = [p for p in self.prompt_list() if p.frame == frame]
        ids = sorted({int(p.object_id) for p in prompts} | {k[1] for k in self._cleared if k[0] == frame})
        if not prompts:
            return np.zeros(self.view.frame_shape, np.uint16), ids
        tracker = self.tracker()
        results = tracker.preview(frame, self._to_tracker(prompts))
        return self._from_tracker(merge_labels(results, tracker.hw, labels_dtype(max(ids)), tracker.prompted(frame)),
                                  frame), ids

    def remove_object(self, obj_id: int) -> None:
        with self.lock:
            if self.state is not None:
                self.predictor.remove_object(self.state, obj_id, need_output=False)
            for key in [k for k in self._applied if k[1] == obj_id]:
                del self._applied[key]

    # --- propagation -------------------------------------------------------------------------

    def propagate(
        self,
        direction: str = "forward",
        start: int | None = None,
        max_frames: int | None = None,
        obj_ids: Sequence[int] | None = None,
    ) -> Iterator[tuple[int, np.ndarray, list[int]]]:
        """Track and yield (frame, (H, W) labels of the tracked objects, their ids) per frame.

        ``direction`` is forward, backward or both (forward, then backward from ``start``).
        Closing the generator stops after the current frame; the state stays valid.
        """
        from sam2_core.track import labels_dtype, logits_to_labels, prompted_on

        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be forward, backward or both, got {direction!r}")
        with self.lock:
            self._require()
            if self.view.axis is None:
                raise ValueError("this image is 2-D: there is nothing to propagate along (segment it instead)")
            if not self.state.objects and not self.prompt_list():
                raise ValueError("no prompts yet: click on an object first")
        if self.windowed():
            yield from self._propagate_windows(direction, start, max_frames, obj_ids)
            return
        seen: set[int] = set()
        guard = self._new_guard()

        def labels(item):
            f, ids, low = item
            prompted = prompted_on(self.state, ids, f)
            if guard is not None:  # an ended object stays among the ids: its old labels are cleared
                low = guard.filter_low_res(f, ids, low, prompted)
            if f in seen:
                return None
            seen.add(f)
            return f, logits_to_labels(low, ids, self.view.frame_shape, labels_dtype(max(ids)),
                                       prompted=prompted, canvas=self.predictor.canvas_hw(self.state)), ids

        for reverse in ([False, True] if direction == "both" else [direction == "backward"]):
            if guard is not None:
                guard.reset()
            yield from self._under_lock(
                self.predictor.propagate_low_res(self.state, start, max_frames, reverse, obj_ids,
                                                 skip=guard.has_ended if guard is not None else None), labels)

    def _under_lock(self, gen: Iterator, convert) -> Iterator:
        """``convert(item)`` for each item of ``gen``, both done under the session lock (clicks from
        the GUI thread may come between two frames); None results are skipped."""
        while True:
            with self.lock:
                try:
                    item = next(gen)
                except StopIteration:
                    return
                out = convert(item)
            if out is not None:
                yield out

    def _propagate_windows(self, direction: str, start: int | None, max_frames: int | None,
                           obj_ids: Sequence[int] | None) -> Iterator[tuple[int, np.ndarray, list[int]]]:
        """:meth:`propagate` of a stack tracked in windows (``sam2_core.tiled_track``)."""
        from sam2_core.tiled_track import iter_results, merge_labels
        from sam2_core.track import labels_dtype

        with self.lock:
            prompts = self.prompt_list(obj_ids)
            if not prompts:
                raise ValueError("no prompts for the chosen objects: click on an object first")
            tracker = self.tracker()
            prompts = self._to_tracker(prompts)
        dtype = labels_dtype(max(int(p.object_id) for p in prompts))
        if start is None:
            start = min(int(p.frame) for p in prompts)

        def labels(item):  # only objects the pass has reached: the others keep their labels there
            f, results, _ = item
            lab = self._from_tracker(merge_labels(results, tracker.hw, dtype, tracker.prompted(f)), f)
            return f, lab, sorted(r.obj_id for r in results)

        guard = self._new_guard()
        yield from self._under_lock(
            iter_results(tracker, prompts, direction=direction, max_frames=max_frames, start=start,
                         continuity=guard or False), labels)

    def _new_guard(self):
        """A propagation's continuity guard (None when off); :attr:`ended` follows its list."""
        from sam2_core.continuity import as_guard

        guard = as_guard(self.continuity)
        self.ended = guard.ended if guard is not None else []
        return guard

    def frames_in(self, direction: str, start: int | None, max_frames: int | None) -> int:
        """How many frames a propagation will yield (for progress bars)."""
        n = self.state.num_frames
        if start is None and self.windowed():
            start = min((int(p.frame) for p in self.prompt_list()), default=0)
        elif start is None:
            start = min((t for o in self.state.objects.values() for t in o.prompt_frames()), default=0)
        k = n if max_frames is None else max_frames
        fwd = min(start + k, n - 1) - start + 1
        bwd = start - max(start - k, 0) + 1 if start > 0 or self.windowed() else 0
        return {"forward": fwd, "backward": bwd, "both": fwd + max(bwd - 1, 0)}[direction]
