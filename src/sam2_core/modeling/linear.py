"""Float32 linear layers on the CPU through oneDNN, where its products are faster.

torch's float32 ``nn.Linear`` on the CPU calls its BLAS (MKL in the x86 builds). On some CPUs
oneDNN's product is clearly faster for this model's shapes: on an AMD EPYC (Zen 4) it ran the
Hiera blocks' projections 10-45 % faster and memory attention's ``q k^T`` blocks 25-40 % faster
(benchmarks in docs/engine.md). :func:`linear` takes oneDNN's kernel
(``torch.ops.mkldnn._linear_pointwise``, the one inductor's frozen graphs call) when all hold:

- the input is float32 on the CPU, no autocast and no autograd (the op has no backward), not
  inside ``torch.compile`` (inductor chooses its own kernels);
- oneDNN is built into torch;
- a one-time probe on this machine did not find it slower than torch's default
  (:func:`onednn_faster`).

Otherwise it is ``F.linear``. Both accumulate in float32: the same function up to float rounding.
:func:`linear_act` also fuses a following ReLU or GELU into oneDNN's kernel (the MLPs' hidden
layers).
``NAPARI_SAM2_LINEAR=onednn`` or ``=torch`` skips the probe and forces one of the two.
"""

from __future__ import annotations

import functools
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

#: oneDNN is used unless the probe finds it slower than torch's default (the probe varies by
#: +-0.2 between runs on a busy machine, so a margin would leave the choice to chance where it
#: is clearly faster over the whole model; where the two are equal either is right).
MIN_SPEEDUP = 1.0


def _onednn_op():
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


def _best_seconds(fns, rounds: int = 9) -> list[float]:
    """Each function's best time over ``rounds`` rounds, the functions alternating within each
    round (so that a slow spell of the machine does not fall on one of them only)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


@functools.lru_cache(maxsize=None)
def probe_speedup() -> float:
    """torch's time / oneDNN's for two of the model's products (a Hiera projection and a
    memory-attention score block) on this CPU, at torch's current thread count, best of 9
    alternating rounds (about 0.3 s, once per process); 0.0 without a usable oneDNN kernel."""
    op = _onednn_op()
    if op is None:
        return 0.0
    g = torch.Generator().manual_seed(0)
    shapes = [(4096, 384, 1152, True), (1024, 256, 2048, False)]
    ours = theirs = 0.0
    with torch.no_grad():
        for rows, k, n, bias in shapes:
            x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
            b = torch.randn(n, generator=g) if bias else None
            try:
                t_torch, t_onednn = _best_seconds([lambda: F.linear(x, w, b), lambda: op(x, w, b, "none", [], "")])
            except RuntimeError:  # registered but not usable on this CPU or build: keep torch's kernel
                return 0.0
            theirs, ours = theirs + t_torch, ours + t_onednn
    return theirs / ours


def onednn_faster() -> bool:
    """Whether :func:`linear` may use oneDNN here (``NAPARI_SAM2_LINEAR``, else the probe)."""
    choice = os.environ.get("NAPARI_SAM2_LINEAR", "").strip().lower()
    if choice in ("onednn", "torch"):
        return choice == "onednn" and _onednn_op() is not None
    if choice:
        raise ValueError(f"NAPARI_SAM2_LINEAR must be 'onednn', 'torch' or unset, got {choice!r}")
    return probe_speedup() >= MIN_SPEEDUP


def applies(x: torch.Tensor) -> bool:
    """Whether :func:`linear` takes oneDNN's kernel for input ``x``."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and x.numel() > 0 and onednn_faster())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    if applies(x) and weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_act(x: torch.Tensor, layer: nn.Linear, act: nn.Module) -> torch.Tensor:
    """``act(layer(x))``; a ReLU or exact GELU is fused into oneDNN's kernel where
    :func:`linear` takes it (one pass less over the hidden activations)."""
    kind = "relu" if type(act) is nn.ReLU else "gelu" if type(act) is nn.GELU and act.approximate == "none" else None
    if kind is None or not applies(x) or layer.weight.dtype != torch.float32:
        return act(layer(x))
    return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, kind, [], "none" if kind == "gelu" else "")


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
