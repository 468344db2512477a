"""Optional ``torch.compile`` of the heavy parts of a model, never required.

``compile_model(model)`` compiles the image encoder and the memory attention in place. The
first call of each compiled part takes a while (and needs a C++ compiler on the CPU); if
compiling or running the compiled code fails, that part falls back to eager mode with a
warning, so a missing compiler never stops tracking. ``benchmarks/bench_fast.py compile``
measures what it gains on a machine.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

PARTS = ("image_encoder", "memory_attention")


def compile_model(model: nn.Module, parts: tuple[str, ...] = PARTS, **compile_kwargs) -> nn.Module:
    """Compile ``parts`` of a SAM2Model in place (idempotent); returns the model."""
    for name in parts:
        module = getattr(model, name)
        if getattr(module, "_sam2_compiled", False):
            continue
        eager = module.forward
        compiled = torch.compile(eager, **compile_kwargs)

        def forward(*args, _compiled=compiled, _eager=eager, _module=module, _name=name, **kwargs):
            try:
                return _compiled(*args, **kwargs)
            except Exception as e:  # no compiler, unsupported op, ...: eager from now on
                warnings.warn(f"torch.compile of {_name} failed ({type(e).__name__}: {e}); running it eagerly",
                              stacklevel=2)
                _module.forward = _eager
                return _eager(*args, **kwargs)

        module.forward = forward
        module._sam2_compiled = True
    return model
