"""Memory of the running benchmark process (Linux /proc, with a portable fallback)."""

from __future__ import annotations

import os


def peak_rss_mb() -> float:
    """Peak RSS of this process: VmHWM of /proc/self/status. Not getrusage's ru_maxrss, which
    survives fork + execve: a worker would report its parent's peak (a parent holding a
    1000-frame stack made tracking look 1.42x bigger than it was)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory of this process now (MB), NaN where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")
