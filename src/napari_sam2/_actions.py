"""Controller: the plugin's behaviour on a viewer (layers, workers, notifications), without widgets.

The dock widget calls these methods; scripts can too. Only the GUI thread touches layers:
model work runs in napari thread workers that yield per frame, and the GUI thread writes the
yielded frames into the Labels layer (one undo step per propagation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam2 import _layers as L
from napari_sam2._session import ModelUnavailable, SegmentationSession, load_model

if TYPE_CHECKING:
    import napari

_logger = logging.getLogger(__name__)
PROMPTS = "SAM2 prompts"
BOXES = "SAM2 boxes"
LABELS = "SAM2 labels"
NEW_LAYER = "<new labels layer>"
SPEEDS = ("exact", "fast")
#: key of the output Labels layer's metadata holding what produced it (the predictor's provenance)
METADATA_KEY = "napari_sam2"
#: Problems with the user's input or environment: shown as notifications, never as crashes.
EXPECTED = (ModelUnavailable, ValueError, KeyError, IndexError, RuntimeError, OSError)


def _notify(kind: str, msg: str) -> None:
    from napari.utils import notifications

    {"error": notifications.show_error, "warning": notifications.show_warning}.get(kind, notifications.show_info)(msg)


class _thread_progress:
    """A napari progress bar fed from a worker thread (``bar(done, total)``; drawn on the GUI thread)."""

    def __init__(self, desc: str, unit: str = "", unit_scale: bool = False) -> None:
        from superqt.utils import ensure_main_thread

        self.desc, self.unit, self.unit_scale, self.bar = desc, unit, unit_scale, None
        self._update = ensure_main_thread(self._update_main)
        self._close = ensure_main_thread(self._close_main)

    def __call__(self, done: int, total: int | None) -> None:
        self._update(done, total)

    def close(self) -> None:
        self._close()

    def _update_main(self, done: int, total: int | None) -> None:
        from napari.utils import progress

        if self.bar is None:
            self.bar = progress(total=total, desc=self.desc, unit=self.unit, unit_scale=self.unit_scale)
        self.bar.update(done - self.bar.n)

    def _close_main(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: objects below this share of the model's preferred diameter get a Cell diameter hint
SMALL_CELL = 0.6


class Controller:
    """State of the plugin on one viewer.

    Args:
        viewer: the napari viewer.
        notify: show problems as napari notifications (True, GUI) or raise them (False, scripts).
        threaded: run model work in thread workers (False: synchronously, for scripts and tests).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, notify: bool = True, threaded: bool = True) -> None:
        self.viewer = viewer
        self.notify = notify
        self.threaded = threaded
        self.image_layer = None
        self.axis: int | None = None
        self.model_spec = ("default", "", "auto")
        self.speed = "exact"
        #: arithmetic precision of tracking ("fp32", "bf16", "fp16", "auto"); None: the speed
        #: mode's default (fp32 in exact mode, auto in fast mode)
        self.precision: str | None = None
        self.cell_diameter: float | None = None  # set by the user; None: measured (automatic) or off
        #: with no Cell diameter set, measure it from the first AUTO_OBJECTS prompted objects
        #: (models that store the diameter they track best only)
        self.auto_diameter = True
        self._auto: tuple[int, float | None] = (0, None)  # (objects measured, diameter the session uses)
        self._auto_frozen = False  # a propagation used the measured diameter: it is kept
        self.stabilize = False  # remove stage drift before tracking (sam2_core.stabilize)
        #: end a track where its mask jumps or swells (sam2_core.continuity); False: SAM 2's masks
        self.continuity = True
        self.session: SegmentationSession | None = None
        self.object_id = 1
        self.negative = False
        self.output_name = NEW_LAYER
        self.worker = None
        self._pending: Callable | None = None
        self._after: list[Callable[[], None]] = []  # run in order once no worker is running
        self._quiet = False  # the running worker is a background prefetch
        self._history: ExitStack | None = None
        self._tracked_ids: list[int] = []
        #: mask prompts {(frame, object id): (H, W) bool}: from "segment all" or a Labels layer
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self._pick_layers: list = []  # Labels layers whose picked label selects the object
        self._prompt_layers: list = []  # prompt layers whose events this controller handles
        self.status_changed: Callable[[str], None] = lambda text: None
        self.busy_changed: Callable[[bool], None] = lambda busy: None
        self.object_changed: Callable[[int], None] = lambda oid: None
        self.negative_changed: Callable[[bool], None] = lambda neg: None
        self.cell_diameter_changed: Callable[[float], None] = lambda d: None  # measured (widget shows it)
        self.on_close: list[Callable[[], None]] = []
        self._closed = False
        self.viewer.dims.events.current_step.connect(self._on_step)

    # --- choices ---------------------------------------------------------------------------

    def image_layer_names(self, *_: Any) -> list[str]:
        from napari.layers import Image

        return [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Image)]

    def labels_choices(self, *_: Any) -> list[str]:
        from napari.layers import Labels

        return [NEW_LAYER] + [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Labels)]

    def image_layer_by_name(self, name: str | None):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def axis_choices(self, layer) -> list[tuple[str, int | None]]:
        """(label, axis) pairs of the axes one can propagate along (none for a 2-D image)."""
        if layer is None:
            return [("(no image)", None)]
        nd = layer.ndim
        names = list(self.viewer.dims.axis_labels)[-nd:]

        def text(i: int) -> str:
            n = f"axis {i}: {layer.data.shape[i]} frames"
            unnamed = str(names[i]).lstrip("-").isdigit()  # napari's default labels are numbers
            return n if unnamed else f"{names[i]} ({n})"

        choices = [(text(i), i) for i in range(nd - 2)]
        default = L.default_axis(layer.data.shape, names, rgb=layer.rgb)
        choices.sort(key=lambda c: c[1] != default)
        return choices or [("(2-D image: single frame)", None)]

    # --- errors ------------------------------------------------------------------------------

    def _fail(self, msg: str, exc: type[Exception] = ValueError) -> None:
        self.status_changed(msg)
        if self.notify:
            _notify("error", msg)
        else:
            raise exc(msg)

    # --- setup -------------------------------------------------------------------------------

    def set_image(self, layer, axis: int | None = None) -> None:
        if axis is None and layer is not None:
            axis = L.default_axis(layer.data.shape, list(self.viewer.dims.axis_labels)[-layer.ndim:], layer.rgb)
        if layer is not self.image_layer or axis != self.axis:
            self._masks.clear()  # their frame indices belong to the previous stack
            if self._auto[1] is not None and self.session is not None:  # measured on the previous stack
                self.session = SegmentationSession(self.session.model, speed=self.speed, precision=self.precision,
                                                   cell_diameter=self.cell_diameter, stabilize=self.stabilize)
            self._auto, self._auto_frozen = (0, None), False
        self.image_layer = layer
        self.axis = axis
        if layer is not None:
            self.prompts_layer()
            if self._layer(BOXES) is not None:
                self.boxes_layer()  # take over the box prompts drawn earlier
            self.status_changed(f"{layer.name}: click on an object (Control-click: negative).")

    def set_axis(self, axis: int | None) -> None:
        self.set_image(self.image_layer, axis)

    def set_model(self, name: str, checkpoint: str = "", device: str = "auto") -> None:
        spec = (name, checkpoint if checkpoint and checkpoint != "." else "", device)
        if spec != self.model_spec:
            self.model_spec = spec
            self.session = None  # loaded again on next use

    def set_speed(self, speed: str) -> None:
        """Tracking mode of the video predictor: "exact" or "fast" (the model is not reloaded).

        A new session shares the loaded model; its tracking state is rebuilt from the prompt
        layers on the next action (as after a model change), so no prompt is lost. A job that is
        running keeps the session it started with.
        """
        if speed not in SPEEDS:
            self._fail(f"speed must be one of {', '.join(SPEEDS)}, not {speed!r}")
            return
        if speed == self.speed:
            return
        self.speed = speed
        self._renew_session()
        self.status_changed(f"speed: {speed} (used from the next segmentation or propagation)")

    def _renew_session(self) -> None:
        """A new session of the loaded model with the current speed, precision, diameter and drift
        settings; its tracking state is rebuilt from the prompt layers on the next action."""
        if self.session is not None:
            self.session = SegmentationSession(self.session.model, speed=self.speed, precision=self.precision,
                                               cell_diameter=self.session_diameter, stabilize=self.stabilize)

    def set_precision(self, precision: str | None) -> None:
        """Arithmetic precision of tracking (``SAM2VideoPredictor(precision=)``); None: the speed
        mode's default. Like a speed change, the model and every prompt are kept."""
        from sam2_core.precision import PRECISIONS

        if precision is not None and precision not in PRECISIONS:
            self._fail(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
            return
        if precision == self.precision:
            return
        self.precision = precision
        self._renew_session()
        self.status_changed(f"precision: {precision or 'the speed mode default'} (used from the next "
                            "segmentation or propagation)")

    @property
    def session_diameter(self) -> float | None:
        """The cell diameter the session resizes frames by: the user's, else the measured one."""
        return self.cell_diameter or self._auto[1]

    def set_cell_diameter(self, diameter: float | str | None) -> None:
        """The cells' typical diameter in pixels; 0 or None: automatic, "off": the recorded scale.

        Frames are then resized so that cells reach the diameter the model tracks best (stored
        with its weights) and tracked in windows of the model's input; see
        ``sam2_core.tiled_track``. Automatic (the default): for a model that stores that
        diameter, it is measured from the first prompted objects (``AUTO_OBJECTS``) as they
        are clicked, and kept once a propagation used it. Like a speed change, the model is kept
        and the tracking is rebuilt from the prompt layers on the next action."""
        off = isinstance(diameter, str) and diameter.strip().lower() in ("off", "none")
        diameter = None if off else (float(diameter) if diameter else None)
        if diameter == self.cell_diameter and self.auto_diameter != off:
            return
        if self.session is not None:
            try:
                session = SegmentationSession(self.session.model, speed=self.speed, precision=self.precision,
                                              cell_diameter=diameter,
                                              stabilize=self.stabilize)
            except ValueError as e:
                self._fail(f"Cell diameter: {e}")
                return
            self.session = session
        self.cell_diameter = diameter
        self.auto_diameter = not off
        self._auto, self._auto_frozen = (0, None), False
        text = f"{diameter:g} px" if diameter else ("off (recorded scale)" if off else "automatic (measured "
                                                    "from the first clicked cells)")
        self.status_changed(f"cell diameter: {text} (used from the next segmentation or propagation)")

    def _auto_session(self, session: SegmentationSession, view: L.StackView, data: Any, limits: Any,
                      points: dict, boxes: dict, masks: dict) -> tuple[SegmentationSession, str]:
        """The session to use, with the automatic Cell diameter measured from the prompts when it is
        on and the prompted objects are new (worker thread), and a status note ("" if unchanged).

        Measured while at most ``AUTO_OBJECTS`` objects are prompted, and until a propagation
        used it; the frames are resized again only when the scale moves by more than
        ``AUTO_TOLERANCE`` (each resize re-segments the prompted frames)."""
        from sam2_core.diameter import AUTO_OBJECTS, close_scales, has_positive
        from sam2_core.track import preferred_diameter

        pref = preferred_diameter(session.model)
        if self.cell_diameter or not self.auto_diameter or self._auto_frozen or pref is None:
            return session, ""
        from napari_sam2._session import prompt_objects

        n = len({int(p.object_id) for p in prompt_objects(points, boxes, masks) if has_positive(p)})
        if n == 0:
            self._auto = (0, self._auto[1])  # measured again from the next prompts
            return session, ""
        if n <= self._auto[0] or self._auto[0] >= AUTO_OBJECTS:
            return session, ""
        try:
            found = session.measure_diameter(data, view, limits, points, boxes, masks)
        except ValueError:  # nothing measurable (every mask empty): keep the scale
            return session, ""
        d = round(float(found.diameter), 1)
        scale = pref / d
        self._auto = (n, self._auto[1])
        note = f"; cell diameter measured from {len(found.per_object)} object(s): {d:g} px"
        if close_scales(scale, session.scale):
            return session, note
        try:
            new = SegmentationSession(session.model, speed=self.speed, precision=self.precision,
                                      cell_diameter=d, stabilize=self.stabilize)
        except ValueError:  # outside the range the frames may be resized by: keep the scale
            return session, note + " (outside the model's range: frames kept as recorded)"
        self._auto = (n, d)
        self.session = new
        return new, note + f", frames resized {new.scale:.2g}x"

    def measure_cell_diameter(self) -> None:
        """Measure the cells' typical diameter from the prompted objects (the median equivalent
        diameter of their masks, ``sam2_core.diameter``) and use it as the Cell diameter."""
        view = self._check_ready()
        if view is None:
            return
        data, limits = self.image_layer.data, self.image_layer.contrast_limits
        points, boxes, masks = self._prompts(view)
        if not (points or boxes or masks):
            self._fail("Cell diameter: click on a few typical cells (or draw boxes around them) first, then measure.")
            return

        def job():
            return self._ensure_session().measure_diameter(data, view, limits, points, boxes, masks)

        def done(found) -> None:
            d = round(float(found.diameter), 1)
            self.set_cell_diameter(d)
            if self.cell_diameter != d:  # refused (outside the model's range): set_cell_diameter said why
                return
            self.cell_diameter_changed(d)
            n = len(found.per_object)
            self.status_changed(f"cell diameter measured on {n} object{'s' if n != 1 else ''}: {d:g} px "
                                "(median; used from the next segmentation or propagation)")

        self._run(job, done)

    def set_stabilize(self, on: bool) -> None:
        """Remove stage drift (the whole field's translation) before tracking: the stack is
        registered once and tracked on a steady canvas; labels stay in each frame's pixels
        (``sam2_core.stabilize``). Like a speed change, the tracking is rebuilt from the prompt
        layers on the next action."""
        on = bool(on)
        if on == self.stabilize:
            return
        self.stabilize = on
        self._renew_session()
        self.status_changed("stage drift: " + ("removed before tracking" if on else "not corrected")
                            + " (used from the next segmentation or propagation)")

    def set_object(self, oid: int) -> None:
        self.object_id = int(oid)
        self._update_defaults()
        labels = self.labels_layer(create=False)
        if labels is not None and labels.selected_label != self.object_id:
            labels.selected_label = self.object_id  # painting corrections use the same id and colour

    def set_negative(self, negative: bool) -> None:
        self.negative = bool(negative)
        self._update_defaults()
        self.negative_changed(self.negative)

    def set_output(self, name: str) -> None:
        self.output_name = name or NEW_LAYER

    def new_object(self) -> int:
        used = set(self._all_object_ids())
        labels = self.labels_layer(create=False)
        if labels is not None:
            used.add(int(np.max(labels.data)) if labels.data.size else 0)
        self.object_id = max(used | {0}) + 1
        self._update_defaults()
        self.object_changed(self.object_id)
        return self.object_id

    def _all_object_ids(self) -> list[int]:
        pts = self._layer(PROMPTS)
        ids = [] if pts is None or not len(pts.data) else [int(i) for i in pts.features[L.OBJECT_ID]]
        boxes = self._layer(BOXES)
        if boxes is not None and len(boxes.data):
            ids += [int(i) for i in boxes.features[L.OBJECT_ID]]
        ids += [obj for _, obj in self._masks]
        return sorted(set(ids))

    # --- layers ------------------------------------------------------------------------------

    def _layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _nd(self) -> int:
        return self.image_layer.ndim

    def prompts_layer(self):
        """The Points layer holding the clicks (created on demand, aligned with the image)."""
        layer = self._layer(PROMPTS)
        if layer is None and self.image_layer is not None:
            img = self.image_layer
            nd = self._nd()
            layer = self.viewer.add_points(
                np.empty((0, nd)), name=PROMPTS, ndim=nd, scale=img.scale[:nd], translate=img.translate[:nd],
                features={L.OBJECT_ID: np.empty(0, int), L.POSITIVE: np.empty(0, bool)},
                size=max(4, min(img.data.shape[-2:]) // 40), border_width=0.15, border_width_is_relative=True,
            )
            layer.mode = "add"
            self._hook(layer)
            self._update_defaults()
            self.viewer.layers.selection.active = layer
        elif layer is not None:
            self._hook(layer)  # made earlier (e.g. by a widget since closed): this controller takes it over
        return layer

    def _hook(self, layer) -> None:
        """Handle a prompt layer's clicks and edits (undone by close())."""
        if any(lyr is layer for lyr, _ in self._prompt_layers):
            return
        boxes = layer.name == BOXES
        self._prompt_layers.append((layer, boxes))
        if boxes:
            layer.events.data.connect(self._on_boxes_data)
        else:
            layer.mouse_drag_callbacks.insert(0, self._on_points_press)
            layer.events.data.connect(self._on_points_data)

    def _unhook(self, layer, boxes: bool) -> None:
        if boxes:
            layer.events.data.disconnect(self._on_boxes_data)
        else:
            if self._on_points_press in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._on_points_press)
            layer.events.data.disconnect(self._on_points_data)

    def boxes_layer(self):
        """The Shapes layer whose rectangles are box prompts (created on demand)."""
        layer = self._layer(BOXES)
        if layer is None and self.image_layer is not None:
            img = self.image_layer
            nd = self._nd()
            layer = self.viewer.add_shapes(
                ndim=nd, name=BOXES, scale=img.scale[:nd], translate=img.translate[:nd],
                features={L.OBJECT_ID: np.empty(0, int)}, face_color="transparent", edge_width=2,
            )
            layer.mode = "add_rectangle"
            self._hook(layer)
            self._update_defaults()  # the box belongs to the current object (not to id 0)
        elif layer is not None:
            self._hook(layer)
        return layer

    def labels_layer(self, create: bool = True):
        """The output Labels layer (a new one is made on first use)."""
        if self.output_name != NEW_LAYER and self.output_name in self.viewer.layers:
            layer = self.viewer.layers[self.output_name]
        else:
            layer = self._layer(LABELS)
            if layer is None and create and self.image_layer is not None:
                img = self.image_layer
                nd = self._nd()
                shape = img.data.shape[:nd]
                layer = self.viewer.add_labels(np.zeros(shape, np.uint16), name=LABELS, scale=img.scale[:nd],
                                               translate=img.translate[:nd], opacity=0.5)
                layer.selected_label = self.object_id
                self.viewer.layers.selection.active = self.prompts_layer()
        if layer is not None and not any(lyr is layer for lyr in self._pick_layers):
            self._pick_layers.append(layer)
            layer.events.selected_label.connect(self._on_selected_label)
        return layer

    def _on_selected_label(self, event) -> None:
        """Picking a label in the output layer (its colour picker, or the label spin box) selects that object."""
        oid = int(event.source.selected_label)
        if oid > 0 and oid != self.object_id and not self._closed:
            self.object_id = oid
            self._update_defaults()
            self.object_changed(oid)
            self.status_changed(f"object {oid} selected: clicks now belong to it")

    def _update_defaults(self) -> None:
        layer = self._layer(PROMPTS)
        if layer is not None:
            layer.feature_defaults = {L.OBJECT_ID: self.object_id, L.POSITIVE: not self.negative}
        boxes = self._layer(BOXES)
        if boxes is not None:
            boxes.feature_defaults = {L.OBJECT_ID: self.object_id}

    def _restyle_points(self) -> None:
        """Object colours as in the Labels layer; positive points filled discs, negative crosses."""
        layer = self._layer(PROMPTS)
        if layer is None or not len(layer.data):
            return
        ids = layer.features[L.OBJECT_ID].to_numpy()
        pos = layer.features[L.POSITIVE].to_numpy().astype(bool)
        colours = L.label_colors(ids, self.labels_layer(create=False))
        with layer.events.data.blocker():
            layer.face_color = np.array([colours[int(i)] for i in ids])
            layer.border_color = np.where(pos[:, None], [[1, 1, 1, 1]], [[1, 0, 0, 1]])
            layer.symbol = np.where(pos, "disc", "x")

    # --- events ------------------------------------------------------------------------------

    def _on_points_press(self, layer, event) -> None:
        """Control-click adds a negative point (the click polarity for this one point only)."""
        if layer.mode == "add":
            negative = self.negative or "Control" in event.modifiers
            layer.feature_defaults = {L.OBJECT_ID: self.object_id, L.POSITIVE: not negative}

    def _on_points_data(self, event) -> None:
        if self._closed or getattr(event, "action", None) not in ("added", "removed", "changed"):
            return
        self._restyle_points()
        self._update_defaults()
        self.segment_current(frames=self._frames_of(event))

    def _on_boxes_data(self, event) -> None:
        if not self._closed and getattr(event, "action", None) in ("added", "removed", "changed"):
            self.segment_current()

    def _frames_of(self, event) -> list[int] | None:
        view = self._view()
        if view is None:
            return None
        idx = getattr(event, "data_indices", ()) or ()
        data = getattr(event, "value", None)
        frames = set()
        if data is not None and len(idx):
            for i in idx:
                if 0 <= i < len(data):
                    f = view.frame_index(np.asarray(data)[i])
                    if f is not None:
                        frames.add(f)
        return sorted(frames) or None

    def _on_step(self, event=None) -> None:
        """Start computing the shown frame's embedding in the background."""
        if self._closed or self.image_layer is None or self.image_layer not in self.viewer.layers:
            return  # no image shown (its layer removed, or the viewer closing): nothing to prefetch
        view = self._view()
        session = self.session
        if view is None or session is None or session.state is None or self.busy:
            return  # (a new session after a speed change has no stack until the next action)
        f = self._current_frame(view)
        self._run(lambda: session.prefetch(f), on_done=None, quiet=True)

    # --- model work --------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _view(self) -> L.StackView | None:
        if self.image_layer is None:
            return None
        try:
            return L.make_view(self.image_layer.data.shape, self.axis, self._current_index(), self.image_layer.rgb)
        except ValueError:
            return None

    def _current_index(self) -> tuple[int, ...]:
        step = self.viewer.dims.current_step
        return tuple(int(s) for s in step[-self._nd():])

    def _current_frame(self, view: L.StackView) -> int:
        return 0 if view.axis is None else self._current_index()[view.axis]

    def _ensure_session(self) -> SegmentationSession:
        if self.session is None:
            name, ckpt, device = self.model_spec
            progress = _thread_progress(f"downloading {name}", "B", True) if self.notify and not ckpt and name != "default" else None
            try:
                model = load_model(name, ckpt or None, None if device == "auto" else device,
                                   progress=progress)
            finally:
                if progress is not None:
                    progress.close()
            try:
                self.session = SegmentationSession(model, speed=self.speed, precision=self.precision,
                                                   cell_diameter=self.session_diameter,
                                                   stabilize=self.stabilize)
            except ValueError as e:  # a model without a preferred cell diameter
                raise ValueError(f"Cell diameter: {e}; set it to 0 for this model") from None
        return self.session

    def _prompts(self, view: L.StackView):
        """(points, boxes, masks) prompt dicts; a mask prompt gives way to clicks or a box on its frame."""
        pts = self._layer(PROMPTS)
        points = {}
        if pts is not None and len(pts.data):
            points = L.points_to_prompts(pts.data, pts.features[L.OBJECT_ID], pts.features[L.POSITIVE], view)
        boxes = {}
        shp = self._layer(BOXES)
        if shp is not None and len(shp.data):
            rects = [d for d, t in zip(shp.data, shp.shape_type) if t == "rectangle"]
            ids = [i for i, t in zip(shp.features[L.OBJECT_ID], shp.shape_type) if t == "rectangle"]
            boxes = L.rectangles_to_boxes(rects, ids, view)
        masks = {k: m for k, m in self._masks.items()
                 if k not in points and k not in boxes and 0 <= k[0] < view.num_frames}
        return points, boxes, masks

    def _check_ready(self) -> L.StackView | None:
        if self.image_layer is None or self.image_layer not in self.viewer.layers:
            self._fail("No image layer: open an image and choose it in the SAM 2 widget.")
            return None
        view = self._view()
        if view is None:
            self._fail("The chosen axis cannot be propagated along; choose a leading axis.")
        return view

    def segment_current(self, frames: Sequence[int] | None = None,
                        then: Callable[[], None] | None = None, note: str | None = None) -> None:
        """Apply the prompts and show the result on the frames that changed (instant feedback).

        ``note``: the status message once done (default: how many frames were segmented).
        """
        view = self._check_ready()
        if view is None:
            return
        data = self.image_layer.data
        limits = self.image_layer.contrast_limits
        points, boxes, masks = self._prompts(view)
        used: list = []

        notes: list[str] = []

        def job():
            session, note = self._auto_session(self._ensure_session(), view, data, limits, points, boxes, masks)
            notes.append(note)
            used.append(session)
            if session.needs_tiles(view):  # one large image: tiles at the model's own scale
                return [(0, *session.tiled_labels(data, view, limits, points, boxes, masks))]
            session.set_stack(data, view, contrast_limits=limits)
            changed = session.sync_prompts(points, boxes, masks)
            todo = sorted({f for f, _ in changed} | set(frames or []))
            return [(f, *session.frame_labels(f)) for f in todo]

        def done(results) -> None:
            ids = sorted({i for _, _, ids in results for i in ids} | set(self._tracked_ids))
            removed = [i for i in self._tracked_ids if i not in self._all_object_ids()]
            self._tracked_ids = [i for i in ids if i not in removed]
            labels = self.labels_layer()
            windowed = bool(used) and used[-1].windowed(view)
            for f, lab, res_ids in results:  # in windows a frame's result holds only its own prompted objects
                self._write_frame(labels, view, f, lab, sorted(set(res_ids if windowed else ids) | set(removed)))
            if results and used:
                self._record_provenance(labels, used[-1])
            self._restyle_points()
            hint = self._size_hint(results, used[-1]) if used else ""
            self.status_changed((note or f"segmented {len(results)} frame(s)") + "".join(notes) + hint)
            if then is not None:
                self._when_idle(then)

        self._run(job, done)

    def _size_hint(self, results, session: SegmentationSession) -> str:
        """A hint when, with no Cell diameter set, the current object of a stack came out much
        smaller than the diameter the model tracks best ("" otherwise)."""
        from sam2_core.diameter import equivalent_diameter
        from sam2_core.track import preferred_diameter

        pref = preferred_diameter(session.model)
        if self.session_diameter or self.auto_diameter or not pref or session.view is None:
            return ""
        for _, lab, _ in results:
            d = equivalent_diameter(np.asarray(lab) == self.object_id)
            if 0 < d < SMALL_CELL * pref:
                return (f"; object {self.object_id} is about {d:.0f} px across, small for this model: set Cell "
                        f"diameter or press 'Measure cell diameter from prompts' to track cells at {pref:g} px")
        return ""

    def segment_all(self, then: Callable[[], None] | None = None) -> None:
        """Find every object on the shown frame automatically; each becomes a new object (mask prompt)."""
        view = self._check_ready()
        if view is None:
            return
        frame = self._current_frame(view)
        data, limits = self.image_layer.data, self.image_layer.contrast_limits

        def job():
            from sam2_core.automatic import SAM2AutomaticMaskGenerator

            session = self._ensure_session()
            progress = _thread_progress("finding objects", "tile") if self.notify and self.threaded else None
            image = np.asarray(view.stack_of(data)[frame])
            with session.lock:
                # thresholds: those calibrated for the model's weights, else Meta's; frames larger
                # than the model input are seeded in tiles at the model's own scale
                gen = SAM2AutomaticMaskGenerator(session.model, seeding="blobs")
                try:
                    # at the Cell diameter's scale: the user's, the one measured from the clicks,
                    # else measured from the objects found at the recorded scale ("off": as recorded)
                    size = self.session_diameter or (None if self.auto_diameter else 0.0)
                    labels, _ = gen.generate_labels(image, contrast_limits=limits, progress=progress,
                                                    cell_diameter=size)
                finally:
                    if progress is not None:
                        progress.close()
            return labels

        def done(found: np.ndarray) -> None:
            ids = [int(i) for i in np.unique(found) if i]
            if not ids:
                self._fail("No objects found on this frame: click on them instead, or try another frame.")
                return
            labels = self.labels_layer(create=False)
            used = set(self._all_object_ids()) | set(self._tracked_ids)
            if labels is not None and labels.data.size:
                used.add(int(np.max(labels.data)))
            first = max(used | {0}) + 1
            for k, i in enumerate(ids):
                self._masks[(frame, first + k)] = found == i
            note = f"found {len(ids)} object(s) on frame {frame} (ids {first}-{first + len(ids) - 1})"
            self.status_changed(note + "…")
            self.segment_current(frames=[frame], then=then, note=note)

        self._run(job, done)

    def track_all(self, direction: str = "both", max_frames: int | None = None, tracks: bool = False) -> None:
        """Segment every object on the shown frame, then propagate them all."""
        self.segment_all(then=lambda: self.propagate(direction, max_frames=max_frames, tracks=tracks))

    def use_labels_as_prompts(self, layer_name: str | None = None) -> None:
        """Every label of a Labels layer on the shown frame becomes a mask prompt for that object id."""
        from napari.layers import Labels

        view = self._check_ready()
        if view is None:
            return
        layer = self._layer(layer_name) if layer_name else self.labels_layer(create=False)
        if not isinstance(layer, Labels):
            self._fail("Choose a Labels layer whose labels should become mask prompts.")
            return
        if tuple(layer.data.shape[: self._nd()]) != tuple(view.shape):
            self._fail(f"Labels layer {layer.name!r} has shape {layer.data.shape}, the image {view.shape}: "
                       "they must match.")
            return
        frame = self._current_frame(view)
        lab = np.asarray(layer.data[view.stack_index(frame)])
        ids = [int(i) for i in np.unique(lab) if i]
        if not ids:
            self._fail(f"Labels layer {layer.name!r} has no labels on this frame: go to a labelled frame.")
            return
        for i in ids:
            self._masks[(frame, i)] = lab == i
        note = f"{len(ids)} label(s) of {layer.name!r} on frame {frame} are now mask prompts"
        self.status_changed(note)
        self.segment_current(frames=[frame], note=note)

    def delete_object(self, oid: int) -> None:
        """Remove an object's prompts and its labels (one undo step)."""
        pts = self._layer(PROMPTS)
        if pts is not None and len(pts.data):
            keep = pts.features[L.OBJECT_ID].to_numpy() != oid
            features = pts.features[keep].reset_index(drop=True)  # before napari resizes them with the data
            with pts.events.data.blocker():
                pts.data = pts.data[keep]
                pts.features = features
        shp = self._layer(BOXES)
        if shp is not None and len(shp.data):
            drop = set(np.nonzero(shp.features[L.OBJECT_ID].to_numpy() == oid)[0].tolist())
            if drop:
                with shp.events.data.blocker():
                    shp.selected_data = drop
                    shp.remove_selected()
        labels = self.labels_layer(create=False)
        if labels is not None and self.image_layer is not None:
            idx = np.nonzero(labels.data == oid)
            if idx[0].size:
                labels.data_setitem(idx, 0)
        for key in [k for k in self._masks if k[1] == oid]:
            del self._masks[key]
        if self.session is not None:
            self.session.remove_object(oid)
        self._tracked_ids = [i for i in self._tracked_ids if i != oid]
        self.status_changed(f"deleted object {oid}")

    def propagate(self, direction: str = "both", max_frames: int | None = None,
                  obj_ids: Sequence[int] | None = None, tracks: bool = False,
                  start: int | str | None = "current") -> None:
        """Track the prompted objects through the stack; frames stream into the Labels layer.

        ``start``: the frame to propagate from: "current" (the shown frame), an index, or None
        (the first frame carrying prompts).
        """
        view = self._check_ready()
        if view is None:
            return
        if view.axis is None:
            self._fail("This image is 2-D: there is nothing to propagate along. Use the clicks to segment it.")
            return
        points, boxes, masks = self._prompts(view)
        if not points and not boxes and not masks:
            self._fail("No prompts on this stack yet: click on an object first.")
            return
        if self.busy:
            if self._quiet or self._history is None:  # a prefetch or a click's segmentation: go next
                self._when_idle(lambda: self.propagate(direction, max_frames, obj_ids, tracks, start))
                self.status_changed("propagation starts when the current computation ends…")
                return
            self._fail("Still propagating: wait, or press Cancel.")
            return
        data, limits = self.image_layer.data, self.image_layer.contrast_limits
        if start == "current":
            start = self._current_frame(view)
        session_box: list = []

        def gen():
            session, _ = self._auto_session(self._ensure_session(), view, data, limits, points, boxes, masks)
            self._auto_frozen = True  # labels were tracked at this scale: the measured diameter is kept
            session.set_stack(data, view, contrast_limits=limits)
            session.sync_prompts(points, boxes, masks)
            session_box.append(session)
            session.continuity = self.continuity
            yield ("total", session.frames_in(direction, start, max_frames))
            yield from session.propagate(direction, start, max_frames, obj_ids)

        labels = self.labels_layer()
        self._history = ExitStack()
        self._history.enter_context(labels.block_history())
        count = [0]

        def on_frame(item) -> None:
            if item[0] == "total":
                self.status_changed(f"propagating over {item[1]} frame(s)…")
                return
            f, lab, ids = item
            self._tracked_ids = sorted(set(self._tracked_ids) | set(ids))
            self._write_frame(labels, view, f, lab, ids)
            count[0] += 1
            self.status_changed(f"frame {f}: {count[0]} done")

        def finished() -> None:
            if self._history is not None:
                self._history.close()
                self._history = None
            if count[0] and session_box:
                self._record_provenance(labels, session_box[0])
            if tracks and count[0]:
                self._tracks_layer(labels, view)
            self._restyle_points()
            ended = session_box[0].ended if session_box else []
            if ended:
                from sam2_core.continuity import describe_ended

                self.status_changed(f"propagated {count[0]} frame(s); {len(ended)} track(s) ended where the mask "
                                    f"jumped or swelled: {describe_ended(ended)} (a click on a later frame "
                                    "continues one; untick 'End tracks that jump' to keep them)")
            else:
                self.status_changed(f"propagated {count[0]} frame(s)")

        self._run_generator(gen, on_frame, finished)

    def cancel(self) -> None:
        """Stop the running propagation after the current frame (and drop what was queued after it)."""
        self._after.clear()
        if self.worker is not None and hasattr(self.worker, "quit"):
            self.worker.quit()
            self.status_changed("cancelling after this frame…")

    # --- writing -----------------------------------------------------------------------------

    @staticmethod
    def _record_provenance(labels, session: SegmentationSession) -> None:
        """Note what produced the labels (model, speed, precision) in the layer's metadata (GUI thread)."""
        labels.metadata = {**labels.metadata, METADATA_KEY: session.provenance()}

    def _write_frame(self, labels, view: L.StackView, frame: int, lab: np.ndarray, ids: Sequence[int]) -> None:
        """Write one frame of results for ``ids``; other labels stay untouched (undoable)."""
        if lab.max(initial=0) > np.iinfo(labels.data.dtype).max:
            labels.data = labels.data.astype(np.uint32)
        idx = view.stack_index(frame)
        old = np.asarray(labels.data[idx])
        (rows, cols), values = L.merge_frame_labels(old, lab, ids)
        if rows.size == 0:
            return
        full = []
        for ax, i in enumerate(idx):
            if isinstance(i, slice):
                full.append(rows if ax == labels.ndim - 2 else cols)
            else:
                full.append(np.full(rows.shape, i))
        labels.data_setitem(tuple(full), values)

    def _tracks_layer(self, labels, view: L.StackView) -> None:
        from napari_sam2.export import centroid_tracks

        stack = np.stack([np.asarray(labels.data[view.stack_index(f)]) for f in range(view.num_frames)])
        data = centroid_tracks(stack)
        if len(data):
            name = "SAM2 tracks"
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
            else:
                self.viewer.add_tracks(data, name=name)

    def export(self, kind: str, path: str) -> None:
        """Write the output labels as a TIFF or a Cell Tracking Challenge folder."""
        from napari_sam2 import export

        labels = self.labels_layer(create=False)
        if labels is None:
            self._fail("Nothing to export yet: segment or propagate first.")
            return
        data = np.asarray(labels.data)
        info = labels.metadata.get(METADATA_KEY)  # what produced them: stored in the files
        view = self._view()
        if kind == "ctc":
            stack = data if view is None or view.axis is None else np.stack(
                [data[view.stack_index(f)] for f in range(view.num_frames)])
            export.write_ctc(path, stack if stack.ndim == 3 else stack[None], info=info)
        else:
            export.write_labels_tiff(path, data, info=info)
        self.status_changed(f"exported to {path}")

    def export_dialog(self, kind: str) -> None:
        from magicgui.widgets import request_values

        values = request_values(path={"annotation": str, "label": "TIFF file" if kind == "tiff" else "CTC folder",
                                      "value": "labels.tif" if kind == "tiff" else "01_RES"})
        if values:
            try:
                self.export(kind, values["path"])
            except OSError as e:
                self._fail(f"could not write {values['path']}: {e}")

    # --- workers -----------------------------------------------------------------------------

    def _run(self, job: Callable, on_done: Callable | None, quiet: bool = False) -> None:
        """Run ``job`` off the GUI thread (one at a time; the latest waiting job runs next)."""
        if not self.threaded:
            try:
                result = job()
            except ModelUnavailable as e:
                self._fail(str(e), ModelUnavailable)
                return
            if on_done:
                on_done(result)
            return
        if self.busy:
            if not quiet:
                self._pending = lambda: self._run(job, on_done)
            return
        from napari.qt.threading import create_worker

        def guarded():
            try:
                return ("ok", job())
            except EXPECTED as e:  # reported as a notification, not as a crash
                return ("error", e)

        def returned(result) -> None:
            kind, value = result
            if kind == "error":
                self._on_error(value)
            elif on_done:
                on_done(value)

        worker = create_worker(guarded)
        worker.returned.connect(returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._set_worker(worker, quiet)
        worker.start()

    def _run_generator(self, gen: Callable, on_yield: Callable, finished: Callable) -> None:
        if not self.threaded:
            try:
                for item in gen():
                    on_yield(item)
            except ModelUnavailable as e:
                finished()
                self._fail(str(e), ModelUnavailable)
                return
            except Exception:
                finished()
                raise
            finished()
            return
        from napari.qt.threading import create_worker

        def guarded():
            try:
                yield from gen()
            except EXPECTED as e:
                yield ("error", e)

        def yielded(item) -> None:
            if item[0] == "error":
                self._on_error(item[1])
            else:
                on_yield(item)

        worker = create_worker(guarded, _progress={"desc": "SAM 2 propagation"})
        worker.yielded.connect(yielded)
        worker.errored.connect(self._on_error)
        worker.finished.connect(finished)
        worker.finished.connect(self._on_finished)
        self._set_worker(worker)
        worker.start()

    def _when_idle(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` now, or after the running worker (and the job waiting for it) finished."""
        if self.busy:
            self._after.append(fn)
        else:
            fn()

    def _set_worker(self, worker, quiet: bool = False) -> None:
        self.worker = worker
        self._quiet = quiet
        if not quiet:  # a background prefetch does not make the widget look busy
            self.busy_changed(True)

    def _on_finished(self) -> None:
        self.worker = None
        if self._closed:
            return
        self.busy_changed(False)
        pending, self._pending = self._pending, None
        if pending is not None:
            pending()
        while self._after and not self.busy:
            self._after.pop(0)()

    def _on_error(self, exc: Exception) -> None:
        self._after.clear()  # what was to follow the failed job
        if self._history is not None:
            self._history.close()
            self._history = None
        msg = str(exc) if isinstance(exc, EXPECTED) else f"{type(exc).__name__}: {exc}"
        self.status_changed(msg)
        _notify("error", msg)

    def close(self) -> None:
        """Stop work and detach from the viewer (the widget was closed)."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self._pending = None
        self._after.clear()
        self.status_changed = self.object_changed = self.negative_changed = lambda *_: None
        self.busy_changed = lambda *_: None
        unpick = [lambda lyr=lyr: lyr.events.selected_label.disconnect(self._on_selected_label)
                  for lyr in self._pick_layers]
        unpick += [lambda lyr=lyr, b=b: self._unhook(lyr, b) for lyr, b in self._prompt_layers]
        for fn in [lambda: self.viewer.dims.events.current_step.disconnect(self._on_step), *unpick, *self.on_close]:
            try:
                fn()
            except (TypeError, ValueError, RuntimeError):
                pass
