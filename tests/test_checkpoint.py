"""build_sam2 and checkpoint loading: recognition, strictness, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from sam2_core import CheckpointError, build_sam2, save_checkpoint, select_device
from sam2_core.checkpoint import identify_variant, read_checkpoint
from sam2_core.config import HieraConfig, SAM2Config


def test_recognises_variant_from_keys(seeded_checkpoint):
    for name in ("sam2.1_hiera_tiny", "sam2_hiera_tiny"):
        state, cfg = read_checkpoint(seeded_checkpoint(name, 0))
        assert cfg is None
        assert identify_variant(state) == name
        model = build_sam2(checkpoint=seeded_checkpoint(name, 0), image_size=256, device="cpu")
        assert model.config.name == name
        assert model.config.image_size == 256
        assert not model.training
        assert torch.equal(model.no_mem_embed, state["no_mem_embed"])


def test_checkpoint_wins_over_wrong_name(seeded_checkpoint):
    model = build_sam2("sam2_hiera_tiny", checkpoint=seeded_checkpoint("sam2.1_hiera_tiny", 0), device="cpu")
    assert model.config.name == "sam2.1_hiera_tiny"  # 2.1 keys recognised despite the 2.0 name


def test_our_format_round_trip_with_custom_config(tmp_path):
    cfg = SAM2Config(
        name="mini",
        trunk=HieraConfig(embed_dim=32, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,)),
        image_size=128,
        memory_attention_layers=2,
        memory_attention_ffn=256,
        decoder_mlp_dim=256,
    )
    model = build_sam2(config=cfg, pretrained=False, device="cpu")
    path = save_checkpoint(model, tmp_path / "mini.pt", extra={"note": "test"})
    state, stored = read_checkpoint(path)
    assert stored == cfg
    again = build_sam2(checkpoint=path, device="cpu")
    assert again.config == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert not list(tmp_path.glob("*.part"))


def test_recommended_settings_round_trip_and_reach_the_generator(tmp_path):
    """Thresholds calibrated for a model's weights travel in its checkpoint to the generator."""
    from sam2_core import SAM2AutomaticMaskGenerator
    from sam2_core.checkpoint import read_checkpoint_full

    model = build_sam2("default", pretrained=False, device="cpu")
    assert model.recommended == {}
    assert SAM2AutomaticMaskGenerator(model).pred_iou_thresh == 0.7  # Meta's when nothing is stored
    model.recommended = {"pred_iou_thresh": 0.4, "stability_score_thresh": 0.8}
    path = save_checkpoint(model, tmp_path / "m.pt")
    assert read_checkpoint_full(path)[2] == model.recommended
    again = build_sam2(checkpoint=path, device="cpu")
    assert again.recommended == model.recommended
    gen = SAM2AutomaticMaskGenerator(again)
    assert (gen.pred_iou_thresh, gen.stability_score_thresh) == (0.4, 0.8)
    explicit = SAM2AutomaticMaskGenerator(again, pred_iou_thresh=0.9, stability_score_thresh=0.95)
    assert (explicit.pred_iou_thresh, explicit.stability_score_thresh) == (0.9, 0.95)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_sam2(checkpoint="/definitely/nope.pt")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="notes.pt.*not a readable PyTorch checkpoint"):
        build_sam2(checkpoint=bad)


def test_truncated_checkpoint(tmp_path, seeded_checkpoint):
    data = seeded_checkpoint("sam2.1_hiera_tiny", 0).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        build_sam2(checkpoint=cut)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError):
        build_sam2(checkpoint=path)


def test_other_model_is_refused_with_key_listing(tmp_path, seeded_checkpoint):
    state, _ = read_checkpoint(seeded_checkpoint("sam2.1_hiera_tiny", 0))
    state = dict(state)
    del state["no_mem_embed"]
    state["extra.head.weight"] = torch.zeros(3)
    state["obj_ptr_proj.layers.0.weight"] = torch.zeros(5, 5)
    path = tmp_path / "other.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        build_sam2("sam2.1_hiera_tiny", checkpoint=path)
    msg = str(err.value)
    assert "other.pt" in msg
    assert "missing keys: no_mem_embed" in msg
    assert "unexpected keys: extra.head.weight" in msg
    assert "obj_ptr_proj.layers.0.weight (5, 5)" in msg


def test_state_dict_without_model_key(tmp_path, seeded_checkpoint):
    state, _ = read_checkpoint(seeded_checkpoint("sam2_hiera_tiny", 0))
    path = tmp_path / "bare.pt"
    torch.save(state, path)
    assert build_sam2(checkpoint=path, device="cpu").config.name == "sam2_hiera_tiny"
    torch.save({"optimizer": {"lr": 1.0}}, path)
    with pytest.raises(CheckpointError, match="no SAM 2 state dict"):
        build_sam2(checkpoint=path)


def test_unknown_name():
    with pytest.raises(KeyError, match="sam2.1_hiera_tiny"):
        build_sam2("sam3_giant", pretrained=False)


def test_random_init_and_device():
    model = build_sam2("sam2_hiera_tiny", pretrained=False, image_size=256)
    assert model.device == select_device(None)
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")
