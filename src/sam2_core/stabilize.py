"""Stage drift: estimate how the whole field moves between frames, and track on a steady canvas.

A microscope stage (or the sample in its dish) often drifts by a pixel or more per frame. The
tracker's memory then trails the field: measured on a simulated 512 x 512 field translated 1 px
per frame, most nuclei were lost within 20-40 frames (docs/model-card.md). Registering the frames
first is what microscopists do in Fiji; ``track(stabilize=True)`` (CLI ``--stabilize``) does it here:

- :func:`estimate_drift` measures the field's translation between consecutive frames by
  cross-correlation (scikit-image's ``phase_cross_correlation`` without phase normalisation, on
  mean-free frames under a Hann window, sub-pixel, reduced to at most ``max_side`` px) and sums
  it: ``drift[t]`` = (dy, dx) of the field on frame t relative to frame 0. Of the variants tried
  on simulated fields moved by known sub-pixel steps, this one erred least (tests);
- :class:`SteadyCanvas` places every frame, shifted by whole pixels (no resampling), on a canvas
  that covers every position the field takes, so a cell stays where it is; pixels no frame
  covers are filled with the frame's background level;
- prompts move onto the canvas (:meth:`SteadyCanvas.prompt_to_canvas`) and labels come back to
  each frame's recorded pixels (:meth:`SteadyCanvas.labels_to_frame`).

Cells' own motion stays; only the common translation is removed. Rotation and zoom are not
corrected. Pure numpy + scikit-image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

#: background fill: this percentile of each frame's (normalised) pixels
FILL_PERCENTILE = 10.0


def _gray(frame: np.ndarray, k: int) -> np.ndarray:
    """(Y, X, 3) unit RGB -> (Y/k, X/k) float32 mean of channels, block-averaged by k, mean-free."""
    g = np.asarray(frame, np.float32)
    g = g.mean(axis=-1) if g.ndim == 3 else g
    if k > 1:
        h, w = (g.shape[0] // k) * k, (g.shape[1] // k) * k
        g = g[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    return g - g.mean()


def estimate_drift(source: Any, *, max_side: int = 512, upsample: int = 10,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The field's translation on each frame relative to frame 0: (T, 2) float (dy, dx) pixels.

    Args:
        source: a :class:`sam2_core.io.frames.FrameSource` (frames are read once, in order).
        max_side: frames are block-averaged to at most about this side before correlating.
        upsample: sub-pixel precision 1/upsample px (on the reduced frames).
        progress: called as ``progress(done, total)`` per frame.
    """
    from skimage.filters import window
    from skimage.registration import phase_cross_correlation

    n = source.num_frames
    k = max(1, int(np.ceil(max(source.height, source.width) / max_side)))
    drift = np.zeros((n, 2), np.float64)
    prev = _gray(source.unit_rgb(0), k)
    # a Hann taper: the frame's edges must not correlate at zero shift
    taper = window("hann", prev.shape).astype(np.float32)
    prev, last, prev_has = prev * taper, 0, bool(prev.std() > 0)
    for t in range(1, n):
        cur = _gray(source.unit_rgb(t), k) * taper
        has = bool(cur.std() > 0)  # a constant frame carries no position: skipped
        drift[t] = drift[t - 1]
        if has and prev_has:
            # the shift that registers cur onto the last frame with content = minus the field's
            # motion since then
            shift, _, _ = phase_cross_correlation(prev, cur, upsample_factor=upsample, normalization=None)
            drift[t] = drift[last] - np.asarray(shift, np.float64) * k
        if has or not prev_has:
            prev, last, prev_has = cur, t, has
        if progress is not None:
            progress(t, n - 1)
    return drift


def provenance(drift: np.ndarray | None) -> dict:
    """What the labels' metadata records about stabilization: whether it was used and, if so,
    the drift removed ((dy, dx) per frame, 0.01 px)."""
    if drift is None:
        return {"stabilize": False}
    return {"stabilize": True, "drift": np.round(np.asarray(drift, np.float64), 2).tolist()}


class SteadyCanvas:
    """A (T, H', W', 3) float32 stack of a FrameSource's normalised frames, each placed on a
    canvas at its whole-pixel offset so that the field stays still (module doc).

    ``offset(t)`` = (oy, ox): frame t's pixel (y, x) is canvas pixel (y + oy, x + ox).
    Give it to a predictor or tracker as frames with ``contrast_limits=(0, 1)``.
    """

    def __init__(self, source: Any, drift: np.ndarray) -> None:
        drift = np.asarray(drift, np.float64)
        if drift.shape != (source.num_frames, 2) or not np.isfinite(drift).all():
            raise ValueError(f"drift must be finite (dy, dx) per frame, shape ({source.num_frames}, 2); "
                             f"got {drift.shape}")
        whole = np.rint(drift).astype(np.int64)
        self.source, self.drift = source, drift
        self.offsets = whole.max(axis=0)[None, :] - whole  # (T, 2) >= 0
        self.height = int(source.height + self.offsets[:, 0].max())
        self.width = int(source.width + self.offsets[:, 1].max())
        self.num_frames = source.num_frames
        self.shape = (self.num_frames, self.height, self.width, 3)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __len__(self) -> int:
        return self.num_frames

    def offset(self, t: int) -> tuple[int, int]:
        oy, ox = self.offsets[int(t)]
        return int(oy), int(ox)

    def __getitem__(self, t: int) -> np.ndarray:
        frame = self.source.unit_rgb(int(t))
        oy, ox = self.offset(t)
        h, w = frame.shape[:2]
        fill = np.percentile(frame[:: max(1, h // 128), :: max(1, w // 128)], FILL_PERCENTILE, axis=(0, 1))
        out = np.empty((self.height, self.width, 3), np.float32)
        out[...] = fill
        out[oy : oy + h, ox : ox + w] = frame
        return out

    def labels_to_frame(self, labels: np.ndarray, t: int) -> np.ndarray:
        """Canvas labels (H', W') of frame t -> the frame's recorded pixels (H, W)."""
        oy, ox = self.offset(t)
        return labels[oy : oy + self.source.height, ox : ox + self.source.width]

    def frames(self) -> Any:
        """The canvas as a :class:`sam2_core.io.frames.FrameSource` (already normalised), what
        the predictors and the tracker take."""
        from sam2_core.io.frames import FrameSource

        return FrameSource(self, contrast_limits=(0.0, 1.0))

    def prompt_to_canvas(self, prompt: Any) -> Any:
        """A :class:`sam2_core.track.Prompt` on its frame's recorded pixels -> canvas pixels
        (frames, points and boxes checked as tracking checks them)."""
        from sam2_core.tiled_track import check_in_frame

        if not 0 <= int(prompt.frame) < self.num_frames:
            raise IndexError(f"prompts on frames [{int(prompt.frame)}] are outside the stack "
                             f"(0 .. {self.num_frames - 1})")
        h, w = self.source.height, self.source.width
        check_in_frame([prompt], h, w)
        oy, ox = self.offset(prompt.frame)
        changes: dict[str, Any] = {}
        if prompt.points is not None:
            changes["points"] = np.asarray(prompt.points, np.float64).reshape(-1, 2) + [ox, oy]
        if prompt.box is not None:
            changes["box"] = np.asarray(prompt.box, np.float64).reshape(-1) + [ox, oy, ox, oy]
        if prompt.mask is not None:
            mask = np.asarray(prompt.mask, bool)
            if mask.shape != (h, w):
                raise ValueError(f"object {prompt.object_id}, frame {prompt.frame}: mask of shape {mask.shape}, "
                                 f"expected the frame's {(h, w)}")
            big = np.zeros((self.height, self.width), bool)
            big[oy : oy + h, ox : ox + w] = mask
            changes["mask"] = big
        return dataclasses.replace(prompt, **changes)
