"""Reduced precision: which dtype to compute in, and a context that applies it.

``resolve("auto", device)`` picks bfloat16 on CUDA (float16 where bfloat16 is not supported),
float16 on Apple MPS, and on a CPU bfloat16 only if a quick probe shows its matrix products
are faster than float32 there (CPUs with AVX512-BF16 or AMX; on others torch emulates it
many times slower). Explicit "bf16"/"fp16" are honoured, with a warning where they are slow.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_speedup(dtype: torch.dtype = torch.bfloat16, n: int = 256) -> float:
    """float32 time / ``dtype`` time of an n x n x n matrix product on this CPU (> 1: faster)."""

    def best(dt: torch.dtype) -> float:
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        a @ b
        times = []
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.float32) / best(dtype)


def resolve(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The compute dtype for a precision name on a device; None means plain float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "mps":
            return torch.float16
        return torch.bfloat16 if kind == "cpu" and cpu_speedup(torch.bfloat16) > 1.2 else None
    dtype = _DTYPES[precision]
    if kind == "cpu" and cpu_speedup(dtype) < 1.0:
        warnings.warn(f"{precision} matrix products are slower than float32 on this CPU "
                      f"({cpu_speedup(dtype):.2f}x its speed); use precision='fp32' or 'auto'", stacklevel=3)
    return dtype


def name(dtype: torch.dtype | None) -> str:
    """"fp32", "bf16" or "fp16" for a resolved dtype."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """torch.autocast for a resolved dtype (a no-op context for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
