"""Which stored frames an object's memory attention looks at, and which can be forgotten.

Pure functions over frame indices (ints), unit-tested on their own. The rules follow SAM 2:
all (or the closest few) conditioning frames, the last ``num_maskmem - 1`` frames in the
direction of travel, and up to ``max_ptrs`` object pointers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


def select_cond_frames(
    frame_idx: int, cond_frames: Iterable[int], max_cond: int
) -> tuple[list[int], list[int]]:
    """Split conditioning frames into (selected, unselected) for attention at ``frame_idx``.

    With ``max_cond == -1`` (SAM 2's default) all are selected. Otherwise: the closest one
    before, the closest one at or after, then the remaining closest by distance, up to
    ``max_cond`` (which must be >= 2).
    """
    cond = sorted(set(cond_frames))
    if max_cond == -1 or len(cond) <= max_cond:
        return cond, []
    if max_cond < 2:
        raise ValueError("max_cond must be -1 (all) or at least 2")
    selected: set[int] = set()
    before = [t for t in cond if t < frame_idx]
    after = [t for t in cond if t >= frame_idx]
    if before:
        selected.add(max(before))
    if after:
        selected.add(min(after))
    rest = sorted((t for t in cond if t not in selected), key=lambda t: abs(t - frame_idx))
    selected.update(rest[: max_cond - len(selected)])
    return sorted(selected), [t for t in cond if t not in selected]


def recent_frames(frame_idx: int, num_maskmem: int, reverse: bool, stride: int = 1) -> list[tuple[int, int]]:
    """(t_pos, frame) of the non-conditioning memory slots t_pos = 1 .. num_maskmem-1.

    t_pos = num_maskmem-1 is the adjacent frame (frame_idx -/+ 1); further slots step by
    ``stride`` from frame_idx -/+ 2 (rounded to multiples of ``stride``).
    """
    out = []
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx + 1 if reverse else frame_idx - 1
        elif reverse:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        else:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        out.append((t_pos, prev))
    return out


def pointer_frames(
    frame_idx: int,
    selected_cond: Iterable[int],
    num_frames: int,
    max_ptrs: int,
    reverse: bool,
    signed: bool,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Candidate object-pointer frames as (frame, temporal position).

    Returns:
        (from conditioning frames, only those in the past of the direction of travel;
         from the ``max_ptrs - 1`` frames just before in the direction of travel, by distance).
        The caller keeps the second list's frames that it has outputs for.
    """
    sign = -1 if reverse else 1
    cond = [
        (t, (frame_idx - t) * sign if signed else abs(frame_idx - t))
        for t in selected_cond
        if (t >= frame_idx if reverse else t <= frame_idx)
    ]
    recent = []
    for t_diff in range(1, max_ptrs):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or t >= num_frames:
            break
        recent.append((t, t_diff))
    return cond, recent


def frames_to_keep(
    current: int,
    reverse: bool,
    cond_frames: Collection[int],
    window: int,
) -> tuple[int, int, set[int]]:
    """What a non-conditioning memory store must keep to serve any later request.

    Keeps the ``window`` frames behind ``current`` in the direction of travel (the next frames'
    memory) and the ``window`` frames on each side of every conditioning frame (where a later
    propagation in either direction starts).

    Returns:
        (lo, hi, around): frames in [lo, hi] are kept, plus the frames in ``around``.
    """
    lo, hi = (current, current + window) if reverse else (current - window, current)
    around: set[int] = set()
    for c in cond_frames:
        around.update(range(c - window, c + window + 1))
    return lo, hi, around
