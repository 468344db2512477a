"""The dock widget "SAM 2 Segment & Track" (thin: the work is in _session, _layers and _actions)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, SpinBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy

from napari_sam2 import _actions as A
from napari_sam2._layers import OBJECT_ID, POSITIVE
from napari_sam2.cli import CELL_DIAMETER_HELP, PRECISION_HELP, PRECISIONS, SPEED_HELP

if TYPE_CHECKING:
    import napari

WIDGET_DIAMETER_HELP = CELL_DIAMETER_HELP.split(". 0 or")[0] + (
    ". auto (0): measured from the first clicked cells (up to 5) for models that store the diameter they "
    "track best, such as the bundled one; type a diameter to fix it")

OFFICIAL = (
    "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
    "sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large",
)
NEW_LAYER = A.NEW_LAYER
SPEEDS = A.SPEEDS


class SAM2Widget(Container):
    """Click cells, segment them, propagate through time or z into a Labels layer.

    Keys (viewer-wide while the widget is open): N new object, T toggle click polarity,
    Shift+P propagate, Escape cancel. Control-click adds a negative point.
    Speed: exact or fast tracking (the video predictor's mode); the output Labels layer's
    ``metadata["napari_sam2"]`` records what produced it, and the exports store it.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # not scrollable: napari docks ``self.native``, which for a scrollable Container is the
        # inner widget (the scroll area is lost and the content slides under the dock's title bar)
        super().__init__()
        self.viewer = napari_viewer
        self.controller = A.Controller(napari_viewer, notify=True)
        c = self.controller
        self.image = ComboBox(label="Image", choices=c.image_layer_names, tooltip="the image to segment")
        # callable choices: napari calls reset_choices() on every layer change, which would empty a static list
        self.axis = ComboBox(label="Propagate along", choices=self._axis_choices,
                             tooltip="the axis frames are taken along (time, or z for a volume)")
        self.model = ComboBox(label="Model", choices=("default", *OFFICIAL), tooltip=(
            "default: the bundled model; official models are downloaded once (SHA-256 checked); "
            "offline, copy the file in with `napari-sam2 models import FILE`"))
        self.checkpoint = FileEdit(label="or checkpoint", mode="r", filter="*.pt", value="")
        self.checkpoint.tooltip = "a model checkpoint file (.pt); it wins over the Model name"
        self.device = ComboBox(label="Device", choices=("auto", "cpu", "cuda", "mps"),
                               tooltip="auto: CUDA or Apple MPS when present, else the CPU")
        self.object_id = SpinBox(label="Object id", min=1, max=2**31 - 2, value=1, tooltip=(
            "the object the next clicks belong to. Pick one on screen: select the output Labels layer "
            "and click the object with napari's colour picker (the pipette)"))
        self.negative = CheckBox(text="Negative clicks [T]", tooltip=(
            "clicks mark background for the current object [T toggles]; "
            "Control-click adds one negative point"))
        self.new_object = PushButton(text="New object [N]", tooltip="the next free object id [N]")
        self.delete_object = PushButton(text="Delete object",
                                        tooltip="remove the current object's prompts and labels")
        self.segment = PushButton(text="Segment this frame",
                                  tooltip="re-run the shown frame (runs automatically after each click)")
        self.draw_boxes = PushButton(text="Draw boxes", tooltip=(
            "a Shapes layer 'SAM2 boxes': each rectangle is a box prompt for the current object; "
            "select 'SAM2 prompts' again to click"))
        self.direction = ComboBox(label="Direction", choices=("forward", "backward", "both"), value="both",
                                  tooltip="from the shown frame")
        self.all_objects = CheckBox(text="All objects", value=True,
                                    tooltip="track every object (unticked: only the current one)")
        self.n_frames = SpinBox(label="Frames (0 = all)", min=0, max=10**7, value=0,
                                tooltip="how many frames to track in each direction")
        self.speed = ComboBox(label="Speed", choices=SPEEDS, value="exact", tooltip=SPEED_HELP)
        self.precision = ComboBox(label="Precision", choices=["default", *PRECISIONS], value="default",
                                  tooltip=PRECISION_HELP.replace("default:", "default (the choice 'default'):"))
        self.cell_diameter = FloatSpinBox(label="Cell diameter (px)", min=0.0, max=10000.0, step=1.0, value=0.0,
                                          tooltip=WIDGET_DIAMETER_HELP)
        spin = self.cell_diameter.native
        if hasattr(spin, "setSpecialValueText"):
            spin.setSpecialValueText("auto")  # 0: measured from the first clicked cells
        self.measure_diameter = PushButton(text="Measure cell diameter from prompts", tooltip=(
            "click a few typical cells first: their masks' median diameter becomes the Cell diameter"))
        self.stabilize = CheckBox(text="Correct stage drift", value=False, tooltip=(
            "the whole field moves between frames (a drifting stage): register the frames once and "
            "track on a steady canvas; labels stay where the cells are in each frame"))
        self.continuity = CheckBox(text="End tracks that jump", value=True, tooltip=(
            "a cell's label ends where its mask jumps away from its last place or swells past 4x its first "
            "size (it left the field, ended in a volume, or the tracker slid onto neighbours); untick to keep "
            "the model's masks as they come"))
        self.propagate = PushButton(text="Propagate [Shift+P]",
                                    tooltip="track the objects through the stack, frame by frame [Shift+P]")
        self.cancel = PushButton(text="Cancel [Esc]", enabled=False,
                                 tooltip="stop after the frame being computed; finished frames are kept [Esc]")
        self.segment_all = PushButton(text="Segment all objects on this frame", tooltip=(
            "find every object on the shown frame automatically; each becomes a new object"))
        self.track_all = PushButton(text="Track all", tooltip=(
            "segment all objects on the shown frame, then propagate them (Direction, Frames, Tracks)"))
        self.output = ComboBox(label="Output labels", choices=c.labels_choices,
                               tooltip="a new Labels layer, or an existing one: other labels are kept")
        self.labels_prompts = PushButton(text="Use labels as prompts", tooltip=(
            "the labels of the Output labels layer on the shown frame become mask prompts with their ids "
            "(to continue tracking corrected labels)"))
        self.tracks = CheckBox(text="Tracks layer of centroids", tooltip="also draw the objects' tracks")
        self.export_tiff = PushButton(text="Export TIFF…", tooltip="the labels as an ImageJ TIFF")
        self.export_ctc = PushButton(text="Export CTC…", tooltip="a Cell Tracking Challenge result folder")
        self.status = Label(value="Choose an image, then click on a cell.")
        self.status.native.setWordWrap(True)  # a long message must not widen the dock
        self.status.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        row = lambda *ws: Container(widgets=list(ws), layout="horizontal", labels=False)  # noqa: E731
        self.extend([
            self.image, self.axis, self.model, self.checkpoint, self.device, self.object_id, self.negative,
            row(self.new_object, self.delete_object),
            row(self.segment, self.draw_boxes),
            self.direction, self.all_objects, self.n_frames, self.speed, self.precision, self.cell_diameter,
            self.measure_diameter,
            row(self.stabilize, self.continuity),
            row(self.propagate, self.cancel),
            row(self.segment_all, self.track_all),
            self.output, self.labels_prompts, self.tracks,
            row(self.export_tiff, self.export_ctc),
            Container(widgets=[self.status], labels=False),  # the whole width of the dock
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
        self.speed.changed.connect(lambda v: c.set_speed(v))
        self.precision.changed.connect(lambda v: c.set_precision(None if v == "default" else v))
        self.cell_diameter.changed.connect(lambda v: c.set_cell_diameter(v))
        self.stabilize.changed.connect(lambda v: c.set_stabilize(v))
        self.continuity.changed.connect(lambda v: setattr(c, "continuity", bool(v)))
        self.measure_diameter.changed.connect(lambda: c.measure_cell_diameter())
        c.cell_diameter_changed = lambda d: self.cell_diameter.set_value(d)
        self.object_id.changed.connect(lambda v: c.set_object(v))
        self.negative.changed.connect(lambda v: c.set_negative(v))
        self.new_object.changed.connect(lambda: self.object_id.set_value(c.new_object()))
        self.delete_object.changed.connect(lambda: c.delete_object(self.object_id.value))
        self.segment.changed.connect(lambda: c.segment_current())
        self.draw_boxes.changed.connect(self._on_draw_boxes)
        self.propagate.changed.connect(self._on_propagate)
        self.cancel.changed.connect(c.cancel)
        self.segment_all.changed.connect(lambda: c.segment_all())
        self.track_all.changed.connect(lambda: c.track_all(
            self.direction.value, max_frames=self.n_frames.value or None, tracks=self.tracks.value))
        self.output.changed.connect(lambda v: c.set_output(v))
        self.labels_prompts.changed.connect(
            lambda: c.use_labels_as_prompts(None if self.output.value == NEW_LAYER else self.output.value))
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

    def _axis_choices(self, *_) -> list[tuple[str, int | None]]:
        return self.controller.axis_choices(self.controller.image_layer_by_name(self.image.value))

    def _on_image_changed(self, *_) -> None:
        layer = self.controller.image_layer_by_name(self.image.value)
        self.axis.reset_choices()  # keeps the chosen axis if the new image has it too
        self.controller.set_image(layer, self.axis.value)

    def _on_draw_boxes(self) -> None:
        """Make the "SAM2 boxes" Shapes layer (if needed) the active one, ready to draw rectangles."""
        c = self.controller
        if c._check_ready() is None:
            return
        layer = c.boxes_layer()
        layer.mode = "add_rectangle"
        self.viewer.layers.selection.active = layer
        c.status_changed(f"draw rectangles around object {c.object_id}; select 'SAM2 prompts' to click again")

    def _on_propagate(self) -> None:
        n = self.n_frames.value or None
        objs = None if self.all_objects.value else [self.object_id.value]
        self.controller.propagate(self.direction.value, max_frames=n, obj_ids=objs, tracks=self.tracks.value)

    def _on_busy(self, busy: bool) -> None:
        self.propagate.enabled = not busy
        self.cancel.enabled = busy


__all__ = ["OBJECT_ID", "POSITIVE", "SAM2Widget"]
