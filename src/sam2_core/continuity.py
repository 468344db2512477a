"""The continuity guard: end an object's track where its mask jumps or swells.

A tracked cell moves a fraction of its size per frame, so its mask on one frame lies mostly
inside its mask on the frame before. When the cell leaves the field, ends (the last slice of a
nucleus in a volume) or is lost, SAM 2 often does not report it absent: the mask jumps to a
neighbour, or spreads over the neighbours around the place where the cell was. The guard watches
each object's mask along a propagation pass and ends the track (empty masks for the rest of the
pass) when

- less than ``min_overlap`` of the new mask lies inside the object's last non-empty mask, or
  inside that mask moved on by the object's last step (constant velocity: a cell that moves
  fast but steadily is kept), a jump;
- or the mask covers more than ``max_growth`` times its area on the object's first frame of the
  pass (a spread over neighbours; a dividing cell's two daughters stay well under 4x).

A frame on which the user prompted the object starts it afresh (the prompt is the truth). The
guard works on masks cropped to their bounding box with the box's offset, in any one pixel grid
per pass (low-res logits of whole frames, or recorded pixels of windows).

Measured on the calibration movies (docs/model-card.md, "The continuity guard"): it never fired
on the tracked cells of the 12 movies, and it raised the share of frames on which cells that
left the field, or nuclei that ended in a volume, are reported absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: the defaults, chosen on the calibration movies (seeds 30,000+; model card)
MIN_OVERLAP = 0.2
MAX_GROWTH = 4.0
#: logits written for an object whose track ended (below any threshold; Meta's "no object" value)
ENDED = -1024.0


@dataclass
class _Track:
    y0: int = 0
    x0: int = 0
    mask: np.ndarray | None = None  # the last non-empty mask, cropped to its box
    centre: tuple[float, float] | None = None  # its centroid
    step: tuple[float, float] | None = None  # centroid motion per frame between the last two masks
    frame: int = 0  # the frame of the last mask
    first_area: int = 0
    ended: bool = False


def _crop(mask: np.ndarray, y0: int, x0: int) -> tuple[int, int, np.ndarray] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return (y0 + int(rows[0]), x0 + int(cols[0]), mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def _inside(a: tuple[int, int, np.ndarray], b: tuple[int, int, np.ndarray]) -> int:
    """Pixels of mask ``a`` that lie inside mask ``b`` (both (y0, x0, cropped mask))."""
    (ay, ax, am), (by, bx, bm) = a, b
    y0, x0 = max(ay, by), max(ax, bx)
    y1, x1 = min(ay + am.shape[0], by + bm.shape[0]), min(ax + am.shape[1], bx + bm.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    return int((am[y0 - ay : y1 - ay, x0 - ax : x1 - ax] & bm[y0 - by : y1 - by, x0 - bx : x1 - bx]).sum())


class ContinuityGuard:
    """Per-object state of one propagation pass (see the module). ``reset()`` between passes."""

    def __init__(self, min_overlap: float = MIN_OVERLAP, max_growth: float = MAX_GROWTH) -> None:
        if not 0.0 <= min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
        if max_growth <= 1.0:
            raise ValueError(f"max_growth must be above 1, got {max_growth}")
        self.min_overlap, self.max_growth = float(min_overlap), float(max_growth)
        self.tracks: dict[int, _Track] = {}
        self.ended: list[tuple[int, int]] = []  # (object, frame) where a track was ended

    def reset(self) -> None:
        """A new pass: every object starts afresh."""
        self.tracks.clear()

    def check(self, obj_id: int, mask: np.ndarray, frame: int = -1, *, y0: int = 0, x0: int = 0,
              prompted: bool = False) -> bool:
        """Whether the object's (h, w) bool ``mask`` at offset (y0, x0) continues its track;
        False: the track has ended (on this frame or before) and the mask must be dropped."""
        track = self.tracks.get(obj_id)
        if track is None or prompted:
            track = self.tracks[obj_id] = _Track()
        if track.ended:
            return False
        box = _crop(np.asarray(mask, bool), y0, x0)
        if box is None:  # absent: nothing to compare; the last mask stays the reference
            return True
        area = int(box[2].sum())
        ys, xs = np.nonzero(box[2])
        centre = (box[0] + float(ys.mean()), box[1] + float(xs.mean()))
        gap = max(1, abs(int(frame) - track.frame))
        if track.mask is not None:
            inside = _inside(box, (track.y0, track.x0, track.mask))
            if track.step is not None and inside < self.min_overlap * area:  # the last step, repeated
                dy, dx = (int(round(v * gap)) for v in track.step)
                inside = max(inside, _inside(box, (track.y0 + dy, track.x0 + dx, track.mask)))
            jumped = inside < self.min_overlap * area
            swelled = track.first_area > 0 and area > self.max_growth * track.first_area
            if jumped or swelled:
                track.ended = True
                self.ended.append((int(obj_id), int(frame)))
                return False
        if track.first_area == 0:
            track.first_area = area
        if track.centre is not None:
            track.step = ((centre[0] - track.centre[0]) / gap, (centre[1] - track.centre[1]) / gap)
        track.y0, track.x0, track.mask = box
        track.centre, track.frame = centre, int(frame)
        return True

    def has_ended(self, obj_id: int) -> bool:
        """Whether the object's track was ended in this pass."""
        track = self.tracks.get(obj_id)
        return track is not None and track.ended

    def filter_low_res(self, frame: int, obj_ids, low: torch.Tensor, prompted=None) -> torch.Tensor:
        """(N, 1, h, w) logits of one frame -> the same with ended objects' logits at ``ENDED``."""
        masks = (low[:, 0] > 0).cpu().numpy()
        keep = [self.check(int(o), m, frame, prompted=bool(prompted[i]) if prompted is not None else False)
                for i, (o, m) in enumerate(zip(obj_ids, masks))]
        if all(keep):
            return low
        low = low.clone()
        low[torch.as_tensor([not k for k in keep], device=low.device)] = ENDED
        return low


def as_guard(continuity: "bool | ContinuityGuard") -> ContinuityGuard | None:
    """A caller's ``continuity`` argument: True (a new guard), False (None) or a guard to use
    (whose ``ended`` list the caller reads afterwards)."""
    if isinstance(continuity, ContinuityGuard):
        return continuity
    return ContinuityGuard() if continuity else None


def describe_ended(ended: list[tuple[int, int]], most: int = 8) -> str:
    """'object 3 at frame 12, object 7 at frame 30' (the first ``most``, then how many more)."""
    text = ", ".join(f"object {o} at frame {f}" for o, f in ended[:most])
    return text + (f" and {len(ended) - most} more" if len(ended) > most else "")
