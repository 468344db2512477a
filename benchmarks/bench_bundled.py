"""The bundled default model: tracking speed, click latency and the model card's accuracy.

Usage:
    python benchmarks/bench_bundled.py [--threads 2] [--objects 5] [--size 512] [--frames 20]
                                       [--eval-movies 8] [--eval-frames 50] [--model default]
                                       [--precision fp32|bf16|fp16|auto]

Prints, for the model on this machine:
- frames per second tracking N objects (prompted on frame 0) through a 16-bit movie of
  size x size frames (goal for the bundled model: >= 5 fps for 5 objects at 512 on 2 cores);
- single-click latency once the frame is encoded (decoder only), and the encoder time per frame;
- the held-out metrics of sam2_core.train.evaluate (skip with --eval-movies 0).
``--precision`` sets the tracking predictor's arithmetic (default fp32; bf16 is fast on CPUs with
AMX or AVX512-BF16); the click latency and encoder lines stay in float32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def median_step(frames) -> tuple[float, int]:
    """Median seconds between the frames an iterator yields, the first (prompted) frame left out;
    and how many steps were timed."""
    times = []
    t = time.perf_counter()
    for f in frames:
        now = time.perf_counter()
        if f > 0:
            times.append(now - t)
        t = now
    return float(np.median(times)), len(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--objects", type=int, default=5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--eval-movies", type=int, default=8)
    ap.add_argument("--eval-frames", type=int, default=50)
    ap.add_argument("--model", default="default")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sam2_core import build_sam2
    from sam2_core.predictor.image import SAM2ImagePredictor
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train import prompts as P

    from sam2_core.build import bundled_checkpoint

    if args.model.endswith(".pt"):
        model = build_sam2(checkpoint=args.model, device="cpu")
    elif args.model == "default" and bundled_checkpoint() is None:
        print("no bundled weights in this installation: the default ARCHITECTURE with random weights "
              "(speed figures hold, accuracy figures are meaningless)")
        torch.manual_seed(0)
        model = build_sam2("default", pretrained=False, device="cpu")
    else:
        model = build_sam2(args.model, device="cpu")
    n_par = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {model.config.name}, image_size {model.image_size}, {n_par / 1e6:.2f} M parameters, "
          f"{args.threads} threads, tracking in {args.precision}")
    sim = simulate_cells(args.frames, (args.size, args.size), n_cells=max(args.objects * 3, 10), seed=123,
                         radius=(args.size / 40, args.size / 25))
    ids, areas = np.unique(sim.labels[0], return_counts=True)
    objs = [int(i) for i, a in sorted(zip(ids, areas), key=lambda x: -x[1]) if i][: args.objects]
    pred = SAM2VideoPredictor(model, precision=args.precision)
    rng = np.random.default_rng(0)
    clicks = {c: P.click_inside(sim.labels[0] == c, rng, central=True) for c in objs}
    state = pred.init_state(sim.movie)
    for cid, pt in clicks.items():
        pred.add_new_points_or_box(state, 0, cid, points=pt, labels=[1])
    sec, n = median_step(f for f, _, _ in pred.propagate_in_video(state))
    print(f"tracking {len(objs)} objects on {args.size}x{args.size} frames, resized whole to the input: "
          f"{sec * 1000:.0f} ms/frame median = {1 / sec:.1f} frames/s ({n} frames)")
    pred.close_state(state)
    # the same clicks, tracked in windows of the input at the recorded scale (track()'s default for
    # frames larger than 1.25x the input)
    from sam2_core.tiled_track import TiledTracker

    tracker = TiledTracker(pred, sim.movie)
    prompts = [dict(frame=0, object_id=c, points=pt, labels=[1]) for c, pt in clicks.items()]
    sec, n = median_step(f for f, _ in tracker.run(prompts, 0))
    print(f"tracking {len(objs)} objects on {args.size}x{args.size} frames in windows ({len(tracker.states)} of "
          f"{len(tracker.windows)} encoded at the end): {sec * 1000:.0f} ms/frame median = {1 / sec:.1f} frames/s")
    tracker.close()
    # the same with the labels made as track() makes them (overlaps resolved, continuity guard)
    from sam2_core.tiled_track import iter_labels

    tracker = TiledTracker(pred, sim.movie)
    sec, n = median_step(f for f, _, _ in iter_labels(tracker, prompts))
    print(f"  the same with labels made as track() does (overlaps resolved, the continuity guard): "
          f"{sec * 1000:.0f} ms/frame median = {1 / sec:.1f} frames/s")
    tracker.close()

    ip = SAM2ImagePredictor(model)
    enc = []
    for k in range(3):
        t = time.perf_counter()
        ip.set_image(sim.movie[k])
        enc.append(time.perf_counter() - t)
    lat = []
    for cid in objs * 4:
        pt = P.click_inside(sim.labels[2] == cid, rng) if (sim.labels[2] == cid).any() else np.array([[5.0, 5.0]])
        t = time.perf_counter()
        ip.predict(point_coords=pt, point_labels=[1])
        lat.append(time.perf_counter() - t)
    print(f"encoder: {np.median(enc) * 1000:.0f} ms/frame; click (decoder only): {np.median(lat) * 1000:.1f} ms median")

    if args.eval_movies:
        from sam2_core.train.evaluate import evaluate

        t = time.perf_counter()
        m = evaluate(model, n_movies=args.eval_movies, n_frames=args.eval_frames)
        print(f"held-out simulated set ({args.eval_movies} movies x {args.eval_frames} frames, 256x256), "
              f"{time.perf_counter() - t:.0f} s:")
        for k, v in m.as_dict().items():
            print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")


if __name__ == "__main__":
    main()
