"""The dock widget "SAM 2 Segment & Track" (thin: the work is in _session, _layers and _actions)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from napari_sam2 import _actions as A
from napari_sam2._layers import OBJECT_ID, POSITIVE

if TYPE_CHECKING:
    import napari

OFFICIAL = (
    "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
    "sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large",
)
NEW_LAYER = "<new labels layer>"


class SAM2Widget(Container):
    """Click cells, segment them, propagate through time or z into a Labels layer.

    Keys (viewer-wide while the widget is open): N new object, T toggle click polarity,
    Shift+P propagate, Escape cancel. Control-click adds a negative point.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=True)
        self.viewer = napari_viewer
        self.controller = A.Controller(napari_viewer, notify=True)
        c = self.controller
        self.image = ComboBox(label="Image", choices=c.image_layer_names, tooltip="the image to segment")
        self.axis = ComboBox(label="Propagate along", choices=[], tooltip="the axis frames are taken along")
        self.model = ComboBox(label="Model", choices=("default", *OFFICIAL), tooltip=(
            "default: the bundled model; official models are downloaded once (SHA-256 checked); "
            "offline, copy the file in with `napari-sam2 models import FILE`"))
        self.checkpoint = FileEdit(label="or checkpoint", mode="r", filter="*.pt", value="")
        self.device = ComboBox(label="Device", choices=("auto", "cpu", "cuda", "mps"))
        self.object_id = SpinBox(label="Object id", min=1, max=2**31 - 2, value=1)
        self.negative = CheckBox(text="Negative clicks [T]", tooltip="or Control-click for one negative point")
        self.new_object = PushButton(text="New object [N]")
        self.delete_object = PushButton(text="Delete object")
        self.segment = PushButton(text="Segment this frame", tooltip="runs automatically after each click")
        self.direction = ComboBox(label="Direction", choices=("forward", "backward", "both"), value="both")
        self.all_objects = CheckBox(text="All objects", value=True)
        self.n_frames = SpinBox(label="Frames (0 = all)", min=0, max=10**7, value=0)
        self.propagate = PushButton(text="Propagate [Shift+P]")
        self.cancel = PushButton(text="Cancel [Esc]", enabled=False)
        self.output = ComboBox(label="Output labels", choices=c.labels_choices)
        self.tracks = CheckBox(text="Tracks layer of centroids")
        self.export_tiff = PushButton(text="Export TIFF…")
        self.export_ctc = PushButton(text="Export CTC…")
        self.status = Label(value="Choose an image, then click on a cell.")
        self.extend([
            self.image, self.axis, self.model, self.checkpoint, self.device, self.object_id, self.negative,
            Container(widgets=[self.new_object, self.delete_object], layout="horizontal", labels=False),
            self.segment, self.direction, self.all_objects, self.n_frames,
            Container(widgets=[self.propagate, self.cancel], layout="horizontal", labels=False),
            self.output, self.tracks,
            Container(widgets=[self.export_tiff, self.export_ctc], layout="horizontal", labels=False),
            self.status,
        ])
        self._connect()
        self._on_image_changed()
        self.native.destroyed.connect(lambda *_: self.controller.close())

    def _connect(self) -> None:
        c = self.controller
        self.image.changed.connect(self._on_image_changed)
        self.axis.changed.connect(lambda v: c.set_axis(v))
        for w in (self.model, self.checkpoint, self.device):
            w.changed.connect(lambda *_: c.set_model(self.model.value, self._checkpoint_path(), self.device.value))
        self.object_id.changed.connect(lambda v: c.set_object(v))
        self.negative.changed.connect(lambda v: c.set_negative(v))
        self.new_object.changed.connect(lambda: self.object_id.set_value(c.new_object()))
        self.delete_object.changed.connect(lambda: c.delete_object(self.object_id.value))
        self.segment.changed.connect(lambda: c.segment_current())
        self.propagate.changed.connect(self._on_propagate)
        self.cancel.changed.connect(c.cancel)
        self.output.changed.connect(lambda v: c.set_output(v))
        self.export_tiff.changed.connect(lambda: c.export_dialog("tiff"))
        self.export_ctc.changed.connect(lambda: c.export_dialog("ctc"))
        c.status_changed = lambda text: setattr(self.status, "value", text)
        c.busy_changed = self._on_busy
        c.object_changed = lambda oid: self.object_id.set_value(oid)
        c.negative_changed = lambda neg: self.negative.set_value(neg)
        self.viewer.layers.events.inserted.connect(self._refresh_choices)
        self.viewer.layers.events.removed.connect(self._refresh_choices)
        c.on_close.append(lambda: self.viewer.layers.events.inserted.disconnect(self._refresh_choices))
        c.on_close.append(lambda: self.viewer.layers.events.removed.disconnect(self._refresh_choices))
        for key, fn in (("n", lambda v: self.new_object.clicked.emit()), ("t", lambda v: c.set_negative(not c.negative)),
                        ("Shift-P", lambda v: self._on_propagate()), ("Escape", lambda v: c.cancel())):
            self.viewer.bind_key(key, fn, overwrite=True)

    def _checkpoint_path(self) -> str:
        """The chosen checkpoint file ("" when the field is empty or names a folder)."""
        value = self.checkpoint.value
        if not value or str(value) in ("", ".") or Path(value).is_dir():
            return ""
        return str(value)

    def _refresh_choices(self, *_) -> None:
        self.image.reset_choices()
        self.output.reset_choices()

    def _on_image_changed(self, *_) -> None:
        layer = self.controller.image_layer_by_name(self.image.value)
        self.axis.choices = self.controller.axis_choices(layer)
        self.controller.set_image(layer, self.axis.value)

    def _on_propagate(self) -> None:
        n = self.n_frames.value or None
        objs = None if self.all_objects.value else [self.object_id.value]
        self.controller.propagate(self.direction.value, max_frames=n, obj_ids=objs, tracks=self.tracks.value)

    def _on_busy(self, busy: bool) -> None:
        self.propagate.enabled = not busy
        self.cancel.enabled = busy


__all__ = ["OBJECT_ID", "POSITIVE", "SAM2Widget"]
