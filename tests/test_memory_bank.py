"""Pure memory-selection rules."""

from sam2_core.predictor import memory_bank as mb


def test_select_cond_frames_all_and_limited():
    assert mb.select_cond_frames(10, [0, 5, 20, 30], -1) == ([0, 5, 20, 30], [])
    sel, unsel = mb.select_cond_frames(10, [0, 5, 20, 30, 9], 3)
    assert 9 in sel and 20 in sel and len(sel) == 3  # closest before, closest at/after, then nearest
    assert sel == [5, 9, 20] and unsel == [0, 30]
    assert mb.select_cond_frames(10, [10, 3], 2) == ([3, 10], [])


def test_recent_frames_forward_reverse_stride():
    assert mb.recent_frames(10, 7, reverse=False) == [(1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 9)][:0] + [
        (1, 4), (2, 5), (3, 6), (4, 7), (5, 8), (6, 9)]
    assert mb.recent_frames(10, 7, reverse=True) == [(1, 16), (2, 15), (3, 14), (4, 13), (5, 12), (6, 11)]
    assert mb.recent_frames(10, 4, reverse=False, stride=2) == [(1, 6), (2, 8), (3, 9)]


def test_pointer_frames_only_past_and_signed():
    cond, recent = mb.pointer_frames(5, [0, 8], num_frames=20, max_ptrs=4, reverse=False, signed=True)
    assert cond == [(0, 5)]  # frame 8 is in the future
    assert recent == [(4, 1), (3, 2), (2, 3)]
    cond, recent = mb.pointer_frames(5, [0, 8], num_frames=20, max_ptrs=4, reverse=True, signed=True)
    assert cond == [(8, 3)]  # (5 - 8) * -1
    assert recent == [(6, 1), (7, 2), (8, 3)]
    cond, _ = mb.pointer_frames(5, [8], num_frames=20, max_ptrs=4, reverse=True, signed=False)
    assert cond == [(8, 3)]
    _, recent = mb.pointer_frames(1, [], num_frames=20, max_ptrs=16, reverse=False, signed=True)
    assert recent == [(0, 1)]  # stops at the start of the stack


def test_frames_to_keep():
    lo, hi, near = mb.frames_to_keep(50, False, [10], 6)
    assert (lo, hi) == (44, 50) and near == set(range(4, 17))
    lo, hi, _ = mb.frames_to_keep(50, True, [], 6)
    assert (lo, hi) == (50, 56)
