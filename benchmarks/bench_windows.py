"""Frames larger than the model input: resized whole (Meta's way) vs tracked in windows at their scale.

Usage:
    python benchmarks/bench_windows.py [--threads 2] [--size 512] [--movies 4] [--frames 30]
                                       [--objects 8] [--model default] [--diameter-sweep 0,20,24,28]

Prints, per setting, on simulated 16-bit movies of size x size frames (seeds 20,000 and up: neither
training nor the model card's held-out set) with the simulator's own nucleus sizes:
- the median over tracked cells of their mean IoU with the truth (each cell clicked once on
  frame 0, its whole family counted after a division), as in ``sam2_core.train.evaluate``;
- seconds per frame for all objects, and the number of windows the frame is cut into.
``--diameter-sweep`` also tracks with ``cell_diameter`` set from the simulated radii (0 = scale 1).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--movies", type=int, default=4)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--model", default="default")
    ap.add_argument("--diameter-sweep", default="", help="preferred diameters to try, e.g. 20,24,28")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sam2_core import build_sam2
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.tiled_track import TiledTracker
    from sam2_core.train import prompts as P
    from sam2_core.train.evaluate import _objects

    model = build_sam2(checkpoint=args.model, device="cpu") if args.model.endswith(".pt") else build_sam2(args.model, device="cpu")
    pred = SAM2VideoPredictor(model)
    settings = [("resized whole (windows=False)", None), ("windows, recorded scale", 1.0)]
    for d in [float(x) for x in args.diameter_sweep.split(",") if x.strip()]:
        settings.append((f"windows, cells brought to {d:g} px", d))
    print(f"model {args.model}: input {model.image_size}, {args.threads} threads, {args.movies} movies of "
          f"{args.frames} frames at {args.size} x {args.size}, {args.objects} cells each")
    for name, how in settings:
        tracked, seconds, frames, n_windows = [], 0.0, 0, set()
        for i in range(args.movies):
            sim = simulate_cells(args.frames, (args.size, args.size), seed=20_000 + i)
            rng = np.random.default_rng(20_000 + i)
            objs = _objects(sim, 0, args.objects, rng)
            clicks = {c: P.click_inside(sim.labels[0] == c, rng, central=True) for c in objs}
            fam = {c: list(sim.descendants(c)) for c in objs}
            per = {c: [] for c in objs}

            def score(f, cid, m):
                t = np.isin(sim.labels[f], fam[cid])
                if t.any():
                    per[cid].append((m & t).sum() / (m | t).sum())

            t0 = time.perf_counter()
            if how is None:
                state = pred.init_state(sim.movie)
                for c in objs:
                    pred.add_new_points_or_box(state, 0, c, points=clicks[c], labels=[1])
                for f, ids, logits in pred.propagate_in_video(state):
                    for c, m in zip(ids, logits[:, 0].numpy() > 0):
                        score(f, c, m)
                pred.close_state(state)
                n_windows.add(1)
            else:
                lo, hi = sim.params["radius"]
                scale = how / (lo + hi) if how > 1.0 else 1.0
                tracker = TiledTracker(pred, sim.movie, scale=scale)
                prompts = [dict(frame=0, object_id=c, points=clicks[c], labels=[1]) for c in objs]
                for f, results in tracker.run(prompts, 0):
                    for r in results:
                        score(f, r.obj_id, r.full_mask(tracker.hw))
                tracker.close()
                n_windows.add(len(tracker.windows))
            seconds += time.perf_counter() - t0
            frames += args.frames
            tracked += [float(np.mean(v)) for v in per.values() if v]
        print(f"{name}: median propagated IoU {np.median(tracked):.3f} (mean {np.mean(tracked):.3f}, "
              f"{len(tracked)} cells), {seconds / frames:.2f} s/frame, windows per frame {sorted(n_windows)}",
              flush=True)


if __name__ == "__main__":
    main()
