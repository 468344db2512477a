"""Screenshots for docs/user-guide.md, taken from a real napari viewer driven through the plugin.

Run under a (virtual) display from the repository root; it takes a few minutes on a CPU:

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/examples/make_screenshots.py [OUT_DIR]

Every state is built the way a user builds it: File > Open Sample (napari-sam2 nuclei_timelapse),
the "SAM 2 Segment & Track" dock widget with the bundled default model, clicks added to the
widget's "SAM2 prompts" layer (exactly what a mouse click adds), the widget's Propagate button,
and its "Segment all objects on this frame" button for the automatic result. The PNGs are written to
docs/images/ (or OUT_DIR), downscaled to stay small.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

from napari_sam2._layers import OBJECT_ID, POSITIVE
from napari_sam2._sample_data import sample_movie

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "images"
WINDOW = (1560, 960)
WIDTH = 1200  # width of the saved PNGs


def wait(controller, timeout: float = 900.0) -> None:
    """Let the event loop run until the controller's background work is done."""
    t0 = time.perf_counter()
    while True:
        for _ in range(5):
            QApplication.processEvents()
            time.sleep(0.02)
        if not controller.busy and not controller._after and controller._pending is None:
            break
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the plugin did not finish in time")
    for _ in range(20):  # let the canvas redraw
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer, name: str) -> Path:
    """Save the whole window (canvas, layer list, dock widget) as a small PNG."""
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.02)
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    img = Image.fromarray(np.asarray(rgba)[..., :3])
    if img.width > WIDTH:
        img = img.resize((WIDTH, round(img.height * WIDTH / img.width)), Image.LANCZOS)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB", flush=True)
    return path


def new_viewer():
    viewer = napari.Viewer(title="napari-sam2")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample("napari-sam2", "nuclei_timelapse")  # File > Open Sample > napari SAM 2
    dock, widget = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 Segment & Track")
    from qtpy.QtCore import Qt

    viewer.window._qt_window.resizeDocks([dock], [500], Qt.Orientation.Horizontal)  # as dragging its edge
    viewer.dims.current_step = (0, *viewer.dims.current_step[1:])
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.reset_view()
    return viewer, widget


def click(controller, t: int, y: float, x: float, oid: int, positive: bool = True) -> None:
    """What a click (positive) or Control-click (negative) on the image adds to the prompts layer."""
    controller.set_object(oid)
    layer = controller.prompts_layer()
    layer.feature_defaults = {OBJECT_ID: oid, POSITIVE: positive}
    layer.add([[t, y, x]])


def centroid(labels: np.ndarray, k: int) -> tuple[float, float]:
    ys, xs = np.nonzero(labels == k)
    return float(ys.mean()), float(xs.mean())


def main() -> None:
    _, truth = sample_movie()
    # (a) the sample and the docked widget
    viewer, w = new_viewer()
    c = w.controller
    assert w.model.value == "default"
    shot(viewer, "1-widget")

    # (b) four cells clicked on frame 0, one with a negative click beside it
    ids = [k for k in np.unique(truth[0]) if k and (truth[0] == k).sum() > 200]
    # well separated cells, away from the border
    chosen = []
    for k in ids:
        y, x = centroid(truth[0], k)
        if 30 < y < 226 and 30 < x < 226 and all(np.hypot(y - a, x - b) > 60 for a, b, _ in chosen):
            chosen.append((y, x, k))
        if len(chosen) == 4:
            break
    t0 = time.perf_counter()
    for oid, (y, x, _) in enumerate(chosen, start=1):
        if oid > 1:
            w.new_object.clicked.emit()  # the "New object [N]" button
        assert c.object_id == oid
        click(c, 0, y, x, oid)
        wait(c)
    # Control-click where object 1's mask spilled beyond its nucleus (else on the nearest neighbour)
    from scipy import ndimage

    y, x, k = chosen[0]
    spill, n_parts = ndimage.label((viewer.layers["SAM2 labels"].data[0] == 1) & (truth[0] != k))
    if n_parts:
        part = spill == 1 + int(np.argmax(ndimage.sum(spill > 0, spill, range(1, n_parts + 1))))
        py, px = np.nonzero(part)
        i = int(np.argmin(np.hypot(py - py.mean(), px - px.mean())))
        ny, nx = float(py[i]), float(px[i])
    else:
        others = [(np.hypot(*np.subtract(centroid(truth[0], j), (y, x))), j) for j in ids if j != k]
        ny, nx = centroid(truth[0], min(others)[1])
    click(c, 0, ny, nx, 1, positive=False)
    wait(c)
    labels = viewer.layers["SAM2 labels"]
    print(f"clicks: {time.perf_counter() - t0:.1f} s; frame 0 objects {sorted(set(np.unique(labels.data[0])) - {0})}")
    assert all((labels.data[0] == i).sum() > 50 for i in range(1, len(chosen) + 1)), "a click gave no mask"
    viewer.layers.selection.active = c.prompts_layer()
    shot(viewer, "2-clicks")

    # (c) propagate forward through the movie with a Tracks layer, shown on a later frame
    w.direction.value = "forward"
    w.tracks.value = True
    t0 = time.perf_counter()
    w.propagate.clicked.emit()
    wait(c)
    n = labels.data.shape[0]
    print(f"propagation: {time.perf_counter() - t0:.1f} s for {n} frames")
    per_frame = [len(set(np.unique(labels.data[t])) - {0}) for t in range(n)]
    print(f"objects per frame: {per_frame}")
    assert min(per_frame) >= 1, "propagation lost every object on some frame"
    viewer.dims.current_step = (20, *viewer.dims.current_step[1:])
    wait(c)  # the shown frame's embedding is prefetched in the background
    tracks = viewer.layers["SAM2 tracks"]
    tracks.tail_width, tracks.tail_length = 4, 30  # display only: easier to see when downscaled
    viewer.layers.selection.active = labels
    shot(viewer, "3-propagated")
    viewer.close()

    # (d) "segment all" on frame 0 of a fresh viewer: every nucleus becomes an object
    viewer, w = new_viewer()
    c = w.controller
    t0 = time.perf_counter()
    w.segment_all.clicked.emit()  # the "Segment all objects on this frame" button
    wait(c)
    labels = viewer.layers["SAM2 labels"]
    found = sorted(set(np.unique(labels.data[0])) - {0})
    print(f"segment all: {time.perf_counter() - t0:.1f} s, {len(found)} objects")
    assert len(found) >= 5, "segment all found (almost) nothing"
    shot(viewer, "4-segment-all")
    viewer.close()


if __name__ == "__main__":
    main()
