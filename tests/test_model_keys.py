"""State-dict keys and shapes equal Meta's for all eight official variants; shapes follow image_size."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import DATA
from sam2_core import OFFICIAL_CONFIGS, build_sam2, list_models
from sam2_core.checkpoint import expected_shapes

KEYFILE = {
    "tiny": "t",
    "small": "s",
    "base_plus": "b+",
    "large": "l",
}
OFFICIAL_NAMES = [
    "sam2.1_hiera_tiny",
    "sam2.1_hiera_small",
    "sam2.1_hiera_base_plus",
    "sam2.1_hiera_large",
    "sam2_hiera_tiny",
    "sam2_hiera_small",
    "sam2_hiera_base_plus",
    "sam2_hiera_large",
]


def _reference_keys(name: str) -> dict:
    table = json.loads((DATA / "sam2_state_dict_keys.json").read_text())
    prefix, size = name.split("_hiera_")
    return table[f"{prefix}_hiera_{KEYFILE[size]}"]


def test_registry_names():
    assert list(OFFICIAL_CONFIGS) == sorted(OFFICIAL_CONFIGS, key=OFFICIAL_NAMES.index)
    assert set(OFFICIAL_CONFIGS) == set(OFFICIAL_NAMES)
    assert set(list_models()) == {"default", *OFFICIAL_NAMES}


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_state_dict_equals_meta(name):
    ref = _reference_keys(name)
    ours = expected_shapes(OFFICIAL_CONFIGS[name])
    assert sorted(ours) == sorted(ref["keys"])
    for key, shape in ref["keys"].items():
        assert ours[key] == tuple(shape), key
    assert len(ours) == ref["num_keys"]
    assert sum(torch.Size(s).numel() for s in ours.values()) == ref["num_elements"]


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_keys_do_not_depend_on_image_size(name):
    cfg = OFFICIAL_CONFIGS[name]
    assert expected_shapes(cfg.replace(image_size=256)) == expected_shapes(cfg)


@pytest.mark.parametrize("size", [256, 512])
def test_forward_shapes_follow_image_size(size):
    model = build_sam2("sam2.1_hiera_tiny", pretrained=False, image_size=size, device="cpu")
    with torch.inference_mode():
        f = model.encode_image(torch.randn(2, 3, size, size))
        h = size // 16
        assert f.vision_features.shape == (2, 256, h, h)
        assert f.vision_pos.shape == (2, 256, h, h)
        assert [tuple(t.shape) for t in f.high_res] == [(2, 32, 4 * h, 4 * h), (2, 64, 2 * h, 2 * h)]
        out = model.forward_sam_heads(
            model.add_no_mem_embed(f.vision_features),
            torch.tensor([[[10.0, 20.0]], [[30.0, 5.0]]]),
            torch.ones(2, 1, dtype=torch.int32),
            high_res_features=f.high_res,
            multimask_output=True,
        )
        assert out.low_res_multimasks.shape == (2, 3, 4 * h, 4 * h)
        assert out.high_res_masks.shape == (2, 1, size, size)
        assert out.obj_ptr.shape == (2, 256)
        mem, pos = model.encode_memory(f.vision_features, out.high_res_masks, out.object_score_logits, True)
        assert mem.shape == pos.shape == (2, 64, h, h)
        assert torch.isfinite(mem).all()


def test_image_size_must_be_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        OFFICIAL_CONFIGS["sam2.1_hiera_tiny"].replace(image_size=300)
