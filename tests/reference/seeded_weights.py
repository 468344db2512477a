"""Deterministic random SAM 2 weights, generated from a seed and the key list alone.

Used on both sides of the parity tests: the golden-output script (run in a separate venv with
Meta's reference implementation) and our tests build the *same* checkpoint from the same seed,
so no large weight file has to be stored in the repository.

Only numpy (PCG64, stable across versions) decides the values; torch only wraps them.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

KEYS_FILE = Path(__file__).resolve().parents[1] / "data" / "sam2_state_dict_keys.json"

#: Variant names in the key file for our registry names.
KEYFILE_NAMES = {
    "sam2.1_hiera_tiny": "sam2.1_hiera_t",
    "sam2.1_hiera_small": "sam2.1_hiera_s",
    "sam2.1_hiera_base_plus": "sam2.1_hiera_b+",
    "sam2.1_hiera_large": "sam2.1_hiera_l",
    "sam2_hiera_tiny": "sam2_hiera_t",
    "sam2_hiera_small": "sam2_hiera_s",
    "sam2_hiera_base_plus": "sam2_hiera_b+",
    "sam2_hiera_large": "sam2_hiera_l",
}

OBJ_SCORE_BIAS_KEY = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
_TOKEN_KEYS = ("point_embeddings", "not_a_point_embed", "no_mask_embed", "_token")


def official_shapes(name: str) -> dict[str, list[int]]:
    """Key -> shape of an official variant, from the stored key list."""
    table = json.loads(KEYS_FILE.read_text())
    return table[KEYFILE_NAMES.get(name, name)]["keys"]


def _values(key: str, shape: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    z = rng.standard_normal(size=shape)  # float64, then cast: stable across numpy versions
    if key.endswith("positional_encoding_gaussian_matrix") or any(t in key for t in _TOKEN_KEYS):
        out = z
    elif key.endswith(".gamma"):
        out = 0.5 + 0.1 * z
    elif len(shape) == 1 and key.endswith("weight"):  # LayerNorm scale
        out = 1.0 + 0.1 * z
    elif len(shape) == 1:  # biases
        out = 0.02 * z
    else:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        out = z / np.sqrt(max(fan_in, 1))
    return out.astype(np.float32)


def seeded_state_dict(name: str, seed: int = 0, obj_score_bias: float | None = 10.0) -> dict:
    """A state dict (torch tensors) with deterministic pseudo-random values.

    Args:
        name: registry name of an official variant (e.g. ``"sam2.1_hiera_tiny"``).
        seed: base seed; every tensor is drawn from ``(seed, crc32(key))``.
        obj_score_bias: value for the object-score head's last bias. Random weights make every
            object "absent" otherwise; ``None`` keeps the drawn (small) value.
    """
    import torch

    sd = {}
    for key, shape in official_shapes(name).items():
        sd[key] = torch.from_numpy(_values(key, shape, seed))
    if obj_score_bias is not None:
        sd[OBJ_SCORE_BIAS_KEY] = torch.full_like(sd[OBJ_SCORE_BIAS_KEY], float(obj_score_bias))
    return sd


def write_checkpoint(path: str | Path, name: str, seed: int = 0, obj_score_bias: float | None = 10.0):
    """Write Meta's checkpoint format ({"model": state_dict}) for a seeded variant."""
    import torch

    torch.save({"model": seeded_state_dict(name, seed, obj_score_bias)}, str(path))
    return Path(path)
