"""Frames larger than the model input: resized whole (Meta's way) vs tracked in windows at their scale.

Usage:
    python benchmarks/bench_windows.py [--threads 2] [--size 512] [--movies 4] [--frames 30]
                                       [--objects 8] [--model default] [--diameter-sweep 0,20,24,28] [--auto]

Prints, per setting, on simulated 16-bit movies of size x size frames (seeds 20,000 and up: neither
training nor the model card's held-out set) with the simulator's own nucleus sizes:
- the median over tracked cells of their mean IoU with the truth (each cell clicked once on
  frame 0, its whole family counted after a division), as in ``sam2_core.train.evaluate``;
- seconds per frame for all objects, and the number of windows the frame is cut into.
``--diameter-sweep`` also tracks with ``cell_diameter`` set from the simulated radii (0 = scale 1).
``--auto`` also tracks with the diameter estimated from the clicks (``cell_diameter="auto"``,
:mod:`sam2_core.diameter`; the estimate's time counts) and prints the estimate / the simulated one.
``--memory 100,400`` instead prints the peak RSS of tracking 4 nuclei in windows through that
many 512 x 512 frames (each count in its own process; frames made on demand, so the stack itself
takes no memory): memory must not grow with the number of frames.
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
    ap.add_argument("--auto", action="store_true", help="also: the diameter estimated from the clicks")
    ap.add_argument("--memory", default="", help="frame counts for the peak-RSS check, e.g. 100,400")
    ap.add_argument("--_one", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._one:
        return memory_one(args._one, args.size, args.model)
    if args.memory:
        import subprocess
        import sys

        for n in [int(x) for x in args.memory.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--_one", str(n), "--size", str(args.size),
                                  "--threads", str(args.threads), "--model", args.model],
                                 capture_output=True, text=True, check=True).stdout.strip()
            print(out, flush=True)
        return

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
    if args.auto:
        settings.append(("windows, diameter estimated from the clicks", "auto"))
    from sam2_core.diameter import estimate_cell_diameter
    from sam2_core.track import preferred_diameter
    print(f"model {args.model}: input {model.image_size}, {args.threads} threads, {args.movies} movies of "
          f"{args.frames} frames at {args.size} x {args.size}, {args.objects} cells each")
    for name, how in settings:
        tracked, seconds, frames, n_windows, encoded, ratios = [], 0.0, 0, set(), [], []
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
                encoded += [1] * args.frames
            else:
                lo, hi = sim.params["radius"]
                prompts = [dict(frame=0, object_id=c, points=clicks[c], labels=[1]) for c in objs]
                if how == "auto":
                    d = estimate_cell_diameter(pred, sim.movie, prompts).diameter
                    ratios.append(d / (lo + hi))
                    scale = preferred_diameter(model) / d
                else:
                    scale = how / (lo + hi) if how > 1.0 else 1.0
                tracker = TiledTracker(pred, sim.movie, scale=scale)
                for f, results in tracker.run(prompts, 0):
                    encoded.append(sum(1 for st in tracker.states.values() if st.objects))
                    for r in results:
                        score(f, r.obj_id, r.full_mask(tracker.hw))
                tracker.close()
                n_windows.add(len(tracker.windows))
            seconds += time.perf_counter() - t0
            frames += args.frames
            tracked += [float(np.mean(v)) for v in per.values() if v]
        print(f"{name}: median propagated IoU {np.median(tracked):.3f} (mean {np.mean(tracked):.3f}, "
              f"{len(tracked)} cells), {seconds / frames:.2f} s/frame, windows in the lattice {sorted(n_windows)}, "
              f"encoded per frame {np.mean(encoded):.1f}"
              + (f", estimated / simulated diameter {np.round(ratios, 2).tolist()}" if ratios else ""),
              flush=True)


class _Drifting:
    """A (T, H, W) uint16 movie of one simulated field drifting 1 px per frame, made on demand."""

    def __init__(self, n: int, size: int) -> None:
        from sam2_core.simulate_cells import simulate_cells

        big = simulate_cells(1, (size, size + n), seed=20_100)
        self.field, self.labels0 = big.movie[0], big.labels[0]
        self.shape, self.dtype, self.ndim, self.size = (n, size, size), np.dtype(np.uint16), 3, size

    def __getitem__(self, t: int) -> np.ndarray:
        return self.field[:, int(t) : int(t) + self.size]


def memory_one(n: int, size: int, model_name: str) -> None:
    import sys

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from _procstat import peak_rss_mb

    from sam2_core import build_sam2
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.tiled_track import TiledTracker
    from sam2_core.train import prompts as P

    model = build_sam2(model_name, device="cpu")
    movie = _Drifting(n, size)
    lab = movie.labels0[:, :size]
    ids, areas = np.unique(lab, return_counts=True)
    objs = [int(i) for i, a in sorted(zip(ids, areas), key=lambda x: -x[1]) if i][:4]
    rng = np.random.default_rng(0)
    prompts = [dict(frame=0, object_id=c, points=P.click_inside(lab == c, rng, central=True), labels=[1]) for c in objs]
    tracker = TiledTracker(SAM2VideoPredictor(model), movie)
    t0 = time.perf_counter()
    frames = sum(1 for _ in tracker.run(prompts, 0))
    print(f"{frames} frames of {size} x {size} in windows, {len(objs)} nuclei: peak RSS {peak_rss_mb():.0f} MB, "
          f"{(time.perf_counter() - t0) / frames:.2f} s/frame, {tracker.handovers} handovers")


if __name__ == "__main__":
    main()
