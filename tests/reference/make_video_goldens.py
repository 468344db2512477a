"""Golden outputs of Meta's video predictor, for tests/test_video_parity.py.

Run in the reference venv (see README.md in this folder):
    REFVENV/bin/python tests/reference/make_video_goldens.py [--out tests/data]

Scenario (uint8 RGB frames, so both sides preprocess them identically, image_size 256,
seeded weights from seeded_weights.py, fill_hole_area 0 since Meta's CPU path skips it):
  pass "fwd":  object 1 clicked on frame 0, object 2 given a box on frame 2 (objects prompted on
               different frames), propagate forward over all frames;
  pass "corr": a correction click for object 1 on frame 3 (clear_old_points=False), which with
               add_all_frames_to_correct_as_cond=True becomes a conditioning frame, then
               propagate forward from 3;
  pass "rev":  propagate in reverse from frame 3.
For each pass we store what Meta yielded per frame (binary masks at video size, packed bits)
and its memory bank after the pass (for every object and frame: low-res logits, object
pointer, object score and memory features; the latter as bfloat16 bit patterns, exactly as
Meta stores them). The tests replay Meta's memory bank into our predictor and compare each
tracking step ("teacher forcing"), and also run our predictor freely and compare the masks.
Meta's memory-attention input is cast to float32 at the entrance (see reference-venv notes).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from seeded_weights import write_checkpoint  # noqa: E402

VARIANTS = {
    "sam2.1_hiera_tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", 0),
    "sam2_hiera_tiny": ("configs/sam2/sam2_hiera_t.yaml", 1),
}
S = 256
N_FRAMES, H, W = 6, 96, 128


def make_movie(seed: int = 7) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """(T, H, W, 3) uint8 movie of 3 coloured discs drifting right; returns discs (y, x, r) at t=0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    discs = [(30.0, 30.0, 12.0), (60.0, 80.0, 14.0), (70.0, 30.0, 10.0)]
    colours = np.array([[230, 80, 60], [60, 200, 90], [80, 90, 230]], np.float32)
    frames = []
    for t in range(N_FRAMES):
        img = np.full((H, W, 3), 40.0, np.float32) + rng.normal(0, 6, (H, W, 3))
        for (y, x, r), c in zip(discs, colours):
            d = np.hypot(yy - y, xx - (x + 2.5 * t))
            img[d <= r] = c
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames), discs


def to_input(movie: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(movie).float().permute(0, 3, 1, 2) / 255.0
    x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def dump_bank(d: dict, prefix: str, state: dict, frames: list[int] | None = None) -> None:
    """Store Meta's memory bank (per object and frame) under prefix."""
    for oi, oid in enumerate(state["obj_ids"]):
        od = state["output_dict_per_obj"][oi]
        for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for f, out in od[kind].items():
                if frames is not None and f not in frames:
                    continue
                k = f"{prefix}__o{oid}_f{f}"
                d[k + "__cond"] = np.array(kind.startswith("cond"))
                d[k + "__pred"] = out["pred_masks"].float().numpy()
                d[k + "__ptr"] = out["obj_ptr"].float().numpy()
                d[k + "__score"] = out["object_score_logits"].float().numpy()
                mem = out["maskmem_features"]
                assert mem.dtype == torch.bfloat16
                d[k + "__mem_bf16"] = mem.view(torch.int16).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parent / "data"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    import sam2
    import sam2.sam2_video_predictor as rvp
    from sam2.build_sam import build_sam2_video_predictor
    from sam2.modeling.memory_attention import MemoryAttention

    orig = MemoryAttention.forward

    def fwd(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        return orig(self, curr, memory.float(), curr_pos, memory_pos.float(), num_obj_ptr_tokens)

    MemoryAttention.forward = fwd
    movie, discs = make_movie()
    inputs = to_input(movie)
    rvp.load_video_frames = lambda **kw: (inputs.clone(), H, W)
    out_dir = Path(args.out)
    for name, (cfg, seed) in VARIANTS.items():
        ckpt = out_dir / f"_tmp_{name}.pt"
        write_checkpoint(ckpt, name, seed, 10.0)
        pred = build_sam2_video_predictor(
            cfg, str(ckpt), device="cpu",
            hydra_overrides_extra=[f"++model.image_size={S}", "++model.add_all_frames_to_correct_as_cond=true",
                                   "++model.fill_hole_area=0"],
        )
        ckpt.unlink()
        d: dict[str, np.ndarray] = {
            "meta_variant": np.array(name), "meta_seed": np.array(seed), "meta_image_size": np.array(S),
            "meta_obj_score_bias": np.array(10.0), "meta_reference": np.array(f"sam2 {getattr(sam2, '__version__', '1.1.0')}, torch {torch.__version__}"),
            "movie": movie,
        }
        (y1, x1, _), (y2, x2, r2) = discs[0], discs[1]
        p1 = np.array([[x1, y1]], np.float32)
        box2 = np.array([x2 + 5 - r2 - 3, y2 - r2 - 3, x2 + 5 + r2 + 3, y2 + r2 + 3], np.float32)
        corr = np.array([[x1 + 2.5 * 3 + 4, y1 - 3]], np.float32)
        d.update({"prompt_o1_f0_points": p1, "prompt_o2_f2_box": box2, "prompt_o1_f3_points": corr})
        with torch.inference_mode():
            st = pred.init_state(video_path="unused")
            _, _, m = pred.add_new_points_or_box(st, 0, 1, points=p1, labels=np.array([1]))
            d["add_o1_f0__logits"] = m.numpy()
            _, _, m = pred.add_new_points_or_box(st, 2, 2, box=box2)
            d["add_o2_f2__logits"] = m.numpy()
            for f, _, m in pred.propagate_in_video(st):
                d[f"fwd__yield_f{f}"] = np.packbits(m.numpy() > 0)
            dump_bank(d, "fwd", st)
            _, _, m = pred.add_new_points_or_box(st, 3, 1, points=corr, labels=np.array([1]), clear_old_points=False)
            d["add_o1_f3__logits"] = m.numpy()
            for f, _, m in pred.propagate_in_video(st, start_frame_idx=3):
                d[f"corr__yield_f{f}"] = np.packbits(m.numpy() > 0)
            dump_bank(d, "corr", st, frames=list(range(3, N_FRAMES)))
            for f, _, m in pred.propagate_in_video(st, start_frame_idx=3, reverse=True):
                d[f"rev__yield_f{f}"] = np.packbits(m.numpy() > 0)
            dump_bank(d, "rev", st, frames=list(range(0, 4)))
        path = out_dir / f"golden_video_{name}_{S}.npz"
        np.savez_compressed(path, **d)
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, {len(d)} arrays")


if __name__ == "__main__":
    main()
