"""Lazy access to image stacks on disk or in memory."""

from sam2_core.io.frames import FrameSource, open_stack

__all__ = ["FrameSource", "open_stack"]
