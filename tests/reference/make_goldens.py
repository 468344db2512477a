"""Golden outputs of Meta's SAM 2 image path and model modules, for tests/test_parity.py.

Run in the reference venv (see README.md here):
    REFVENV/bin/python tests/reference/make_goldens.py [--out tests/data]

Weights come from seeded_weights.py (the tests rebuild the same checkpoint from the seed).
Storage: arrays of at most 10000 elements are stored whole; larger float arrays as a fixed
sample -- NAME__shape, NAME__idx (4096 sorted flat indices drawn with
np.random.default_rng(crc32(NAME))), NAME__val, and whole-tensor NAME__mean / __std / __absmax.
Masks are stored whole as uint8.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from seeded_weights import write_checkpoint  # noqa: E402

FULL_LIMIT = 10000
SAMPLE = 4096
CONFIGS = {"sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2_hiera_tiny": "configs/sam2/sam2_hiera_t.yaml"}


def pack(d: dict, name: str, arr) -> None:
    a = arr.detach().float().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    if a.dtype == bool:
        d[name] = a.astype(np.uint8)
    elif a.size <= FULL_LIMIT:
        d[name] = a
    else:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        idx = np.sort(rng.choice(a.size, SAMPLE, replace=False))
        d[name + "__shape"] = np.array(a.shape)
        d[name + "__idx"] = idx.astype(np.int32)
        d[name + "__val"] = a.reshape(-1)[idx].astype(np.float32)
        d[name + "__mean"] = np.float64(a.mean())
        d[name + "__std"] = np.float64(a.std())
        d[name + "__absmax"] = np.float64(np.abs(a).max())


def test_image(h: int, w: int, seed: int = 11) -> np.ndarray:
    """Smooth gradient + coloured gaussian blobs + noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([40 + 60 * xx / w, 30 + 50 * yy / h, 50 + 20 * (xx + yy) / (w + h)], -1)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, min(h, w) / 6)
        colour = rng.uniform(60, 200, 3)
        img += colour * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def build(name, ckpt, size):
    from sam2.build_sam import build_sam2

    return build_sam2(CONFIGS[name], str(ckpt), device="cpu", hydra_overrides_extra=[f"++model.image_size={size}"])


def predictor_for(model, size):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    p = SAM2ImagePredictor(model)
    p._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    return p


def encoder_goldens(d, model, x):
    trunk = model.image_encoder.trunk(x)
    for i, t in enumerate(trunk):
        pack(d, f"trunk_{i}", t)
    enc = model.image_encoder(x)
    for i, (f, p) in enumerate(zip(enc["backbone_fpn"], enc["vision_pos_enc"])):
        pack(d, f"fpn_{i}", f)
        pack(d, f"pos_{i}", p)


def image_goldens(d, name, seed, size, out_dir):
    ckpt = out_dir / f"_tmp_{name}.pt"
    write_checkpoint(ckpt, name, seed, 10.0)
    model = build(name, ckpt, size)
    image = test_image(120, 160)
    d["image"] = image
    pred = predictor_for(model, size)
    captured = {}
    model.sam_mask_decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("obj", o[3]))
    pred.set_image(image)
    x = pred._transforms(image)[None]
    pack(d, "model_input", x)
    encoder_goldens(d, model, x)
    pack(d, "image_embed", pred._features["image_embed"])
    for i, f in enumerate(pred._features["high_res_feats"]):
        pack(d, f"high_res_{i}", f)
    box = np.array([30, 20, 120, 100], np.float32)
    cases = {
        "point": dict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]), multimask_output=True),
        "point_single": dict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]), multimask_output=False),
        "points_neg": dict(point_coords=np.array([[80, 60], [100, 70], [40, 30]]), point_labels=np.array([1, 1, 0]),
                           multimask_output=False),
        "box": dict(box=box, multimask_output=False),
        "box_points": dict(box=box, point_coords=np.array([[70, 50], [90, 80]]), point_labels=np.array([1, 0]),
                           multimask_output=False),
        "batch_points": dict(point_coords=np.array([[[80, 60]], [[30, 30]], [[140, 100]]]),
                             point_labels=np.ones((3, 1), int), multimask_output=True),
        "batch_boxes": dict(box=np.array([[30, 20, 120, 100], [10, 10, 60, 50]], np.float32), multimask_output=False),
    }
    for case, kw in cases.items():
        _store_case(d, case, pred, captured, kw)
    best = int(np.argmax(d["case_point__ious"]))
    kw = dict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]),
              mask_input=d["case_point__low_res"][best : best + 1], multimask_output=False)
    _store_case(d, "mask_input", pred, captured, kw)
    # the object-score head saying "absent": the image path must not blank the mask
    write_checkpoint(ckpt, name, seed, -10.0)
    absent = build(name, ckpt, size)
    ap = predictor_for(absent, size)
    absent.sam_mask_decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("obj", o[3]))
    ap.set_image(image)
    _store_case(d, "absent", ap, captured, cases["point"])
    ckpt.unlink()
    return model, pred


def _store_case(d, case, pred, captured, kw):
    masks, ious, low = pred.predict(**kw)
    p = f"case_{case}__"
    d[p + "masks"] = masks.astype(np.uint8)
    d[p + "ious"] = ious
    d[p + "low_res"] = low
    d[p + "obj_score"] = captured["obj"].numpy()
    logits, _, _ = pred.predict(**kw, return_logits=True)
    pack(d, p + "masks_logits", logits)
    for k in ("point_coords", "point_labels", "box", "mask_input"):
        if k in kw:
            d[p + k] = np.asarray(kw[k])
    d[p + "multimask"] = np.array(kw["multimask_output"])


def module_goldens(d, model, pred, size):
    """SAM heads, mask-as-output, memory encoder, pointer encodings."""
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    h = size // 16
    embed = pred._features["image_embed"]
    hr = pred._features["high_res_feats"]
    raw = embed - model.no_mem_embed.view(1, -1, 1, 1)
    pts = {"point_coords": torch.tensor([[[size * 0.45, size * 0.5]]]), "point_labels": torch.tensor([[1]], dtype=torch.int32)}
    names = ("low_res_multimasks", "high_res_multimasks", "ious", "low_res_masks", "high_res_masks", "obj_ptr", "object_score_logits")
    d["heads_point__coords"] = pts["point_coords"].numpy()
    heads = None
    for tag, p in (("heads_point", pts), ("heads_nopoint", None)):
        out = model._forward_sam_heads(backbone_features=embed, point_inputs=p, mask_inputs=None,
                                       high_res_features=hr, multimask_output=True)
        for n, v in zip(names, out):
            pack(d, f"{tag}__{n}", v)
        heads = out if heads is None else heads
    yy, xx = np.mgrid[0:size, 0:size]
    disc = torch.from_numpy(((yy - size * 0.4) ** 2 + (xx - size * 0.55) ** 2 <= (size * 0.15) ** 2)[None, None].astype(np.float32))
    d["mask_as_output__mask"] = disc.numpy().astype(np.uint8)
    for n, v in zip(names, model._use_mask_as_output(raw, hr, disc)):
        pack(d, f"mask_as_output__{n}", v)
    feats = [raw.flatten(2).permute(2, 0, 1)]
    sizes = [(h, h)]
    model.binarize_mask_from_pts_for_mem_enc = True
    mem_pts, pos = model._encode_new_memory(feats, sizes, heads[4], torch.tensor([[3.0]]), True)
    mem_abs, _ = model._encode_new_memory(feats, sizes, heads[4], torch.tensor([[-5.0]]), False)
    for tag, v in (("memenc_pts__maskmem_features", mem_pts), ("memenc_pts__maskmem_pos_enc", pos[-1]),
                   ("memenc_absent__maskmem_features", mem_abs)):
        pack(d, tag, v)
    d["memenc_pts__object_score"], d["memenc_absent__object_score"] = np.array([[3.0]]), np.array([[-5.0]])
    # (memory attention is compared step by step in the video goldens, make_video_goldens.py)
    if getattr(model, "proj_tpos_enc_in_obj_ptrs", False):
        rel = torch.tensor([0, 1, 2, 5, -3])
        d["tpos__rel"], d["tpos__max"] = rel.numpy(), np.array(15)
        pack(d, "tpos__out", model.obj_ptr_tpos_proj(get_1d_sine_pe(rel / 15, dim=256)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parent / "data"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    import sam2

    out_dir = Path(args.out)
    ref = np.array(f"sam2 {getattr(sam2, '__version__', '1.1.0')}, torch {torch.__version__}")
    with torch.inference_mode():
        for name, seed in (("sam2.1_hiera_tiny", 0), ("sam2_hiera_tiny", 1)):
            d = {"meta_variant": np.array(name), "meta_seed": np.array(seed), "meta_image_size": np.array(256),
                 "meta_obj_score_bias": np.array(10.0), "meta_reference": ref}
            model, pred = image_goldens(d, name, seed, 256, out_dir)
            module_goldens(d, model, pred, 256)
            path = out_dir / f"golden_{name}_256.npz"
            np.savez_compressed(path, **d)
            print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, {len(d)} arrays")
        # image encoder at the official 1024
        name = "sam2.1_hiera_tiny"
        ckpt = out_dir / "_tmp_1024.pt"
        write_checkpoint(ckpt, name, 2, 10.0)
        model = build(name, ckpt, 1024)
        ckpt.unlink()
        pred = predictor_for(model, 1024)
        image = test_image(300, 400)
        d = {"meta_variant": np.array(name), "meta_seed": np.array(2), "meta_image_size": np.array(1024),
             "meta_obj_score_bias": np.array(10.0), "meta_reference": ref, "image": image}
        x = pred._transforms(image)[None]
        pack(d, "model_input", x)
        encoder_goldens(d, model, x)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            pred.set_image(image)
            times.append(time.perf_counter() - t)
        d["ref_encoder_seconds"] = np.float64(np.median(times))
        pack(d, "image_embed", pred._features["image_embed"])
        for i, f in enumerate(pred._features["high_res_feats"]):
            pack(d, f"high_res_{i}", f)
        path = out_dir / f"golden_{name}_1024_encoder.npz"
        np.savez_compressed(path, **d)
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB; reference set_image {np.median(times):.2f} s")


if __name__ == "__main__":
    main()
