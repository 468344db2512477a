"""Shared fixtures: isolated config/cache dirs, seeded checkpoints, small models."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
sys.path.insert(0, str(TESTS / "reference"))

# Isolate every run from the user's napari settings and caches (before napari is imported).
_tmp_home = tempfile.mkdtemp(prefix="napari-sam2-tests-")
atexit.register(shutil.rmtree, _tmp_home, ignore_errors=True)
for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"), ("NAPARI_SAM2_HOME", "sam2")):
    os.environ[var] = os.path.join(_tmp_home, sub)
os.environ.setdefault("NAPARI_SAM2_OFFLINE", "1")  # tests never reach the internet

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory):
    """Factory: path of a Meta-format checkpoint for (variant, seed, obj_score_bias), cached."""
    from seeded_weights import write_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[tuple, Path] = {}

    def make(name: str = "sam2.1_hiera_tiny", seed: int = 0, obj_score_bias: float | None = 10.0):
        key = (name, seed, obj_score_bias)
        if key not in made:
            made[key] = write_checkpoint(root / f"{name}_{seed}_{obj_score_bias}.pt", name, seed, obj_score_bias)
        return made[key]

    yield make
    shutil.rmtree(root, ignore_errors=True)  # ~1 GB of checkpoints: not left in /tmp


@pytest.fixture(scope="session")
def tiny256(seeded_checkpoint):
    """sam2.1 tiny at image_size 256 with seeded weights (seed 0), CPU, eval."""
    from sam2_core import build_sam2

    return build_sam2(checkpoint=seeded_checkpoint("sam2.1_hiera_tiny", 0), image_size=256, device="cpu")


@contextlib.contextmanager
def perturbed_weights(model, rel: float = 1e-6, seed: int = 0):
    """Temporarily multiply every parameter by (1 + rel * N(0, 1)).

    Random weights amplify float rounding by orders of magnitude (a 1e-6 relative change can move
    decoder logits by 1e-3 of their scale), and Meta's reference itself gives outputs that differ
    by that much between CPUs. Parity tests therefore measure how far such a perturbation moves
    *our* output and allow a few times that, on top of their fixed tolerance: a real discrepancy
    (a wrong eps, activation or scale) is orders of magnitude larger.
    """
    gen = torch.Generator().manual_seed(seed)
    saved = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + rel * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved):
                p.copy_(s)
