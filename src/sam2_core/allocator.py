"""Memory-allocator settings for CPU inference on Linux (glibc).

A tracked 1024-px frame allocates and frees dozens of tensors of 10-150 MB. By default glibc
serves large blocks with fresh pages from the kernel (``mmap``) and hands them back when they
are freed (its threshold starts at 128 KB and adapts), so every frame pays again for page faults
and for zeroing those pages: a process that builds the tiny model and encodes four 1024-px
frames took 1.2 million minor page faults, and a tenth of the encoder's time went to them
(docs/engine.md). :func:`tune_cpu_allocator`
raises the threshold to glibc's ceiling (32 MB) and lets freed memory stay in the process (up
to 512 MB above the heap top), so that one frame's blocks are reused by the next.
:func:`release_free_memory` gives the freed memory back when a propagation ends.

The settings are process-wide, made once, and only on glibc; elsewhere (macOS, Windows, musl)
both functions do nothing. ``NAPARI_SAM2_MALLOC=system`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: The values set: glibc's largest mmap threshold on 64-bit systems, then keep-and-reuse room.
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 512 << 20, M_TOP_PAD: 64 << 20}
ENV = "NAPARI_SAM2_MALLOC"

_libc: ctypes.CDLL | None = None
_tuned: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (has ``gnu_get_libc_version``, ``mallopt`` and ``malloc_trim``)."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if all(hasattr(lib, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
                _libc = lib
        except OSError:
            pass
    return _libc


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks for reuse (see the module's notes); once per process.

    Returns whether the settings are in force: False off glibc or with ``NAPARI_SAM2_MALLOC=system``.
    """
    global _tuned
    if _tuned is None:
        lib = None if os.environ.get(ENV, "").strip().lower() == "system" else _glibc()
        _tuned = lib is not None and all(lib.mallopt(k, v) == 1 for k, v in SETTINGS.items())
    return _tuned


def release_free_memory() -> None:
    """Return freed heap memory to the operating system (``malloc_trim``), if tuned."""
    if _tuned and _libc is not None:
        _libc.malloc_trim(0)
