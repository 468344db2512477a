"""The napari plugin under a real (virtual) display: manifest, clicks, propagation, cancel, undo."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_sam2 import _actions as A  # noqa: E402
from napari_sam2._layers import OBJECT_ID, POSITIVE  # noqa: E402
from sam2_core.simulate import simulate_timelapse  # noqa: E402

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """Our checkpoint format with image_size 256 (seeded weights; objects are 'present')."""
    from seeded_weights import write_checkpoint

    from sam2_core import build_sam2, save_checkpoint

    tmp = tmp_path_factory.mktemp("widget")
    meta = write_checkpoint(tmp / "meta.pt", "sam2.1_hiera_tiny", 0, 10.0)
    model = build_sam2(checkpoint=meta, image_size=256, device="cpu")
    return str(save_checkpoint(model, tmp / "tiny256.pt"))


@pytest.fixture
def movie():
    m, lab = simulate_timelapse(n_frames=6, shape=(64, 80), n_cells=3, seed=5)
    return m, lab


def _centroid(lab, t, k):
    ys, xs = np.nonzero(lab[t] == k)
    return float(ys.mean()), float(xs.mean())


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 Segment & Track")
    return widget


def _click(controller, t, y, x, oid=None, positive=True):
    layer = controller.prompts_layer()
    if oid is not None:
        controller.set_object(oid)
    layer.feature_defaults = {OBJECT_ID: controller.object_id, POSITIVE: positive}
    layer.add([[t, y, x]])


def _wait_idle(qtbot, c, timeout=60_000):
    qtbot.waitUntil(lambda: not c.busy, timeout=timeout)


def _errors():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity.name == "ERROR"]


def test_manifest_and_light_import():
    import subprocess
    import sys

    code = "import napari_sam2, sys; assert 'torch' not in sys.modules and 'napari' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-sam2")
    assert [w.display_name for w in manifest.contributions.widgets] == ["SAM 2 Segment & Track"]
    data = manifest.contributions.sample_data[0]
    layers = pm.get_command(data.command).exec()
    assert [lt for _, _, lt in layers] == ["image", "labels"]


def test_click_segment_propagate_undo(make_napari_viewer, qtbot, small_checkpoint, movie):
    m, lab = movie
    viewer = make_napari_viewer()
    viewer.add_image(m, name="cells")
    viewer.dims.current_step = (0, 0, 0)
    w = _dock(viewer)
    c = w.controller
    assert w.image.value == "cells" and c.axis == 0
    w.checkpoint.value = small_checkpoint
    y, x = _centroid(lab, 0, 1)
    _click(c, 0, y, x, oid=1)
    _wait_idle(qtbot, c)
    labels = viewer.layers[A.LABELS]
    assert (labels.data[0] == 1).sum() > 10, _errors()
    assert labels.data[1:].max() == 0
    # a second object, then propagate both ways from frame 0, streaming into the layer
    y2, x2 = _centroid(lab, 0, 2)
    _click(c, 0, y2, x2, oid=2)
    _wait_idle(qtbot, c)
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(20)
    w.direction.value = "forward"
    w.propagate.clicked.emit()
    assert c.busy
    _wait_idle(qtbot, c)
    timer.stop()
    assert len(ticks) >= 3, "the event loop must keep running during propagation"
    assert all((labels.data[t] > 0).any() for t in range(6)), _errors()
    assert set(np.unique(labels.data)) <= {0, 1, 2}
    # one undo step removes the whole propagation
    labels.undo()
    assert labels.data[1:].max() == 0 and (labels.data[0] == 1).any()


def test_cancel_keeps_frames_whole_and_existing_labels(make_napari_viewer, qtbot, small_checkpoint, movie):
    m, lab = movie
    long = np.concatenate([m] * 3)  # 18 frames
    viewer = make_napari_viewer()
    viewer.add_image(long, name="cells")
    viewer.dims.current_step = (0, 0, 0)
    existing = np.zeros(long.shape, np.uint16)
    existing[:, :6, :6] = 99  # the user's own labels
    viewer.add_labels(existing.copy(), name="mine")
    w = _dock(viewer)
    c = w.controller
    w.checkpoint.value = small_checkpoint
    w.output.value = "mine"
    y, x = _centroid(lab, 0, 1)
    _click(c, 0, y, x, oid=1)
    _wait_idle(qtbot, c)
    frames_done = []
    orig = c._write_frame

    def write(labels, view, f, frame_lab, ids):
        orig(labels, view, f, frame_lab, ids)
        frames_done.append(f)
        if len(frames_done) == 3:
            c.cancel()

    c._write_frame = write
    w.direction.value = "forward"
    w.propagate.clicked.emit()
    _wait_idle(qtbot, c)
    mine = viewer.layers["mine"].data
    assert 3 <= len(frames_done) < 18  # stopped within a frame or two of the cancel
    assert (mine[:, :6, :6] == 99).all()  # never erased
    untouched = [t for t in range(18) if t not in frames_done and t != 0]
    assert all(mine[t][6:, 6:].max() == 0 for t in untouched)
    assert _errors() == []


def test_bad_inputs_notify(make_napari_viewer, qtbot, small_checkpoint):
    viewer = make_napari_viewer()
    w = _dock(viewer)
    c = w.controller
    n0 = len(_errors())
    w.propagate.clicked.emit()  # no image
    assert len(_errors()) == n0 + 1 and "No image layer" in _errors()[-1]
    viewer.add_image(np.random.default_rng(0).integers(0, 1000, (64, 64)).astype(np.uint16), name="flat")
    w.image.value = "flat"
    w.checkpoint.value = small_checkpoint
    c.prompts_layer().add([[10, 10]])  # 2-D: a click segments...
    _wait_idle(qtbot, c)
    assert (viewer.layers[A.LABELS].data == 1).any(), _errors()
    w.propagate.clicked.emit()  # ...but there is nothing to propagate along
    assert "2-D" in _errors()[-1]
    w.checkpoint.value = ""
    w.model.value = "sam2.1_hiera_large"  # not cached, and tests run offline
    c.prompts_layer().add([[20, 20]])
    _wait_idle(qtbot, c)
    assert "not available" in _errors()[-1]
    assert len(c.prompts_layer().data) == 2  # prompts are kept
