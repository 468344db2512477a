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
#: Problems with the user's input or environment: shown as notifications, never as crashes.
EXPECTED = (ModelUnavailable, ValueError, KeyError, IndexError, RuntimeError, OSError)


def _notify(kind: str, msg: str) -> None:
    from napari.utils import notifications

    {"error": notifications.show_error, "warning": notifications.show_warning}.get(kind, notifications.show_info)(msg)


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
        self.session: SegmentationSession | None = None
        self.object_id = 1
        self.negative = False
        self.output_name = NEW_LAYER
        self.worker = None
        self._pending: Callable | None = None
        self._history: ExitStack | None = None
        self._tracked_ids: list[int] = []
        self.status_changed: Callable[[str], None] = lambda text: None
        self.busy_changed: Callable[[bool], None] = lambda busy: None
        self.object_changed: Callable[[int], None] = lambda oid: None
        self.negative_changed: Callable[[bool], None] = lambda neg: None
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
        choices = [(f"{names[i]} (axis {i}, {layer.data.shape[i]})", i) for i in range(nd - 2)]
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
        self.image_layer = layer
        self.axis = axis if axis is not None else (
            L.default_axis(layer.data.shape, list(self.viewer.dims.axis_labels)[-layer.ndim:], layer.rgb) if layer else None)
        if layer is not None:
            self.prompts_layer()
            self.status_changed(f"{layer.name}: click on an object (Control-click: negative).")

    def set_axis(self, axis: int | None) -> None:
        self.set_image(self.image_layer, axis)

    def set_model(self, name: str, checkpoint: str = "", device: str = "auto") -> None:
        spec = (name, checkpoint if checkpoint and checkpoint != "." else "", device)
        if spec != self.model_spec:
            self.model_spec = spec
            self.session = None  # loaded again on next use

    def set_object(self, oid: int) -> None:
        self.object_id = int(oid)
        self._update_defaults()

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
            layer.mouse_drag_callbacks.insert(0, self._on_points_press)
            layer.events.data.connect(self._on_points_data)
            self._update_defaults()
            self.viewer.layers.selection.active = layer
        return layer

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
            layer.events.data.connect(self._on_boxes_data)
        return layer

    def labels_layer(self, create: bool = True):
        """The output Labels layer (a new one is made on first use)."""
        if self.output_name != NEW_LAYER and self.output_name in self.viewer.layers:
            return self.viewer.layers[self.output_name]
        layer = self._layer(LABELS)
        if layer is None and create and self.image_layer is not None:
            img = self.image_layer
            nd = self._nd()
            shape = img.data.shape[:nd]
            layer = self.viewer.add_labels(np.zeros(shape, np.uint16), name=LABELS, scale=img.scale[:nd],
                                           translate=img.translate[:nd], opacity=0.5)
            self.viewer.layers.selection.active = self.prompts_layer()
        return layer

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
        if getattr(event, "action", None) not in ("added", "removed", "changed"):
            return
        self._restyle_points()
        self._update_defaults()
        self.segment_current(frames=self._frames_of(event))

    def _on_boxes_data(self, event) -> None:
        if getattr(event, "action", None) in ("added", "removed", "changed"):
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
        if self._closed:
            return
        view = self._view()
        if view is None or self.session is None or self.busy:
            return
        f = self._current_frame(view)
        self._run(lambda: self.session.prefetch(f), on_done=None, quiet=True)

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
            model = load_model(name, ckpt or None, None if device == "auto" else device)
            self.session = SegmentationSession(model)
        return self.session

    def _prompts(self, view: L.StackView):
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
        return points, boxes

    def _check_ready(self) -> L.StackView | None:
        if self.image_layer is None or self.image_layer not in self.viewer.layers:
            self._fail("No image layer: open an image and choose it in the SAM 2 widget.")
            return None
        view = self._view()
        if view is None:
            self._fail("The chosen axis cannot be propagated along; choose a leading axis.")
        return view

    def segment_current(self, frames: Sequence[int] | None = None) -> None:
        """Apply the prompts and show the result on the frames that changed (instant feedback)."""
        view = self._check_ready()
        if view is None:
            return
        data = self.image_layer.data
        limits = self.image_layer.contrast_limits
        points, boxes = self._prompts(view)

        def job():
            session = self._ensure_session()
            session.set_stack(data, view, contrast_limits=limits)
            changed = session.sync_prompts(points, boxes)
            todo = sorted({f for f, _ in changed} | set(frames or []))
            return [(f, *session.frame_labels(f)) for f in todo]

        def done(results) -> None:
            ids = sorted({i for _, _, ids in results for i in ids} | set(self._tracked_ids))
            removed = [i for i in self._tracked_ids if i not in self._all_object_ids()]
            self._tracked_ids = [i for i in ids if i not in removed]
            labels = self.labels_layer()
            for f, lab, _ in results:
                self._write_frame(labels, view, f, lab, sorted(set(ids) | set(removed)))
            self._restyle_points()
            self.status_changed(f"segmented {len(results)} frame(s)")

        self._run(job, done)

    def delete_object(self, oid: int) -> None:
        """Remove an object's prompts and its labels (one undo step)."""
        pts = self._layer(PROMPTS)
        if pts is not None and len(pts.data):
            keep = pts.features[L.OBJECT_ID].to_numpy() != oid
            with pts.events.data.blocker():
                pts.data = pts.data[keep]
                pts.features = pts.features[keep].reset_index(drop=True)
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
        if self.session is not None:
            self.session.remove_object(oid)
        self._tracked_ids = [i for i in self._tracked_ids if i != oid]
        self.status_changed(f"deleted object {oid}")

    def propagate(self, direction: str = "both", max_frames: int | None = None,
                  obj_ids: Sequence[int] | None = None, tracks: bool = False) -> None:
        """Track the prompted objects through the stack; frames stream into the Labels layer."""
        view = self._check_ready()
        if view is None:
            return
        if view.axis is None:
            self._fail("This image is 2-D: there is nothing to propagate along. Use the clicks to segment it.")
            return
        points, boxes = self._prompts(view)
        if not points and not boxes:
            self._fail("No prompts on this stack yet: click on an object first.")
            return
        if self.busy:
            self._fail("Still working: wait, or press Cancel.")
            return
        data, limits = self.image_layer.data, self.image_layer.contrast_limits
        start = self._current_frame(view)
        session_box: list = []

        def gen():
            session = self._ensure_session()
            session.set_stack(data, view, contrast_limits=limits)
            session.sync_prompts(points, boxes)
            session_box.append(session)
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
            if tracks and count[0]:
                self._tracks_layer(labels, view)
            self._restyle_points()
            self.status_changed(f"propagated {count[0]} frame(s)")

        self._run_generator(gen, on_frame, finished)

    def cancel(self) -> None:
        """Stop the running propagation after the current frame."""
        if self.worker is not None and hasattr(self.worker, "quit"):
            self.worker.quit()
            self.status_changed("cancelling after this frame…")

    # --- writing -----------------------------------------------------------------------------

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
        view = self._view()
        if kind == "ctc":
            stack = data if view is None or view.axis is None else np.stack(
                [data[view.stack_index(f)] for f in range(view.num_frames)])
            export.write_ctc(path, stack if stack.ndim == 3 else stack[None])
        else:
            export.write_labels_tiff(path, data)
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
        self._set_worker(worker)
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

    def _set_worker(self, worker) -> None:
        self.worker = worker
        self.busy_changed(True)

    def _on_finished(self) -> None:
        self.worker = None
        if self._closed:
            return
        self.busy_changed(False)
        pending, self._pending = self._pending, None
        if pending is not None:
            pending()

    def _on_error(self, exc: Exception) -> None:
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
        self.status_changed = self.object_changed = self.negative_changed = lambda *_: None
        self.busy_changed = lambda *_: None
        for fn in [lambda: self.viewer.dims.events.current_step.disconnect(self._on_step), *self.on_close]:
            try:
                fn()
            except (TypeError, ValueError, RuntimeError):
                pass
