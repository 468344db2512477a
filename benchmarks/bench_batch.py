"""Objects per batch: seconds per tracked frame for several ``max_batch`` settings (exact mode).

Usage:
    python benchmarks/bench_batch.py [--model default] [--size 256] [--objects 20] [--frames 20]
                                     [--batches auto 16 8 4 1 none] [--threads 2]

``--model default`` tracks the bundled model on a simulated 256 x 256 movie of nuclei
(sam2_core.simulate_cells, seed 30,000), each object clicked at its centre on frame 0;
``--model sam2.1_hiera_tiny`` uses seeded random weights at ``--size`` on 512 x 512 16-bit frames
(as benchmarks/bench_video.py). ``--batches``: ``auto`` is the default (``max_batch=None``: about
BATCH_TOKENS query tokens per batch), a number caps the batch, ``none`` runs objects one by one
(``batch_objects=False``). Prints the median seconds per frame over the frames after
``num_maskmem`` (memory bank full), each setting once, in the order given (repeat a setting to see
the machine's noise). See docs/engine.md, "Batch size".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _inputs(args, tmp: Path):
    """(model, movie, [(x, y)] clicks) for the chosen model."""
    from sam2_core import build_sam2

    if args.model == "default":
        from sam2_core.simulate_cells import simulate_cells

        sim = simulate_cells(args.frames + 1, (256, 256), seed=30_000, n_cells=max(args.objects, 20))
        ids = [int(i) for i in np.unique(sim.labels[0]) if i][: args.objects]
        clicks = []
        for k in ids:
            ys, xs = np.nonzero(sim.labels[0] == k)
            clicks.append((float(xs.mean()), float(ys.mean())))
        return build_sam2("default", device="cpu"), sim.movie, clicks
    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_video import _movie
    from seeded_weights import write_checkpoint

    ckpt = write_checkpoint(tmp / "bench.pt", args.model, seed=0)
    model = build_sam2(args.model, checkpoint=ckpt, image_size=args.size, device="cpu")
    movie, points = _movie(args.frames + 1, (512, 512), args.objects)
    return model, movie, [tuple(p) for p in points[: args.objects]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", choices=["default", "sam2.1_hiera_tiny"])
    ap.add_argument("--size", type=int, default=512, help="input size for sam2.1_hiera_tiny")
    ap.add_argument("--objects", type=int, default=20)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--batches", nargs="+", default=["auto", "16", "8", "4", "1", "none"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    from sam2_core.predictor.video import SAM2VideoPredictor, batch_limit

    with tempfile.TemporaryDirectory() as tmp:
        model, movie, clicks = _inputs(args, Path(tmp))
    grid = model.image_size // 16
    skip = min(model.num_maskmem, max(args.frames - 2, 0))
    print(f"{args.model} at {model.image_size} ({grid} x {grid} tokens), {len(clicks)} objects, "
          f"{args.threads} threads; automatic batch: {batch_limit(grid * grid)} objects; "
          f"median s/frame over frames {skip + 1}-{args.frames}")
    for b in args.batches:
        kw = (dict(batch_objects=False) if b == "none" else dict(max_batch=None) if b == "auto"
              else dict(max_batch=int(b)))
        pred = SAM2VideoPredictor(model, **kw)
        state = pred.init_state(movie)
        times = []
        with torch.inference_mode():
            for k, (x, y) in enumerate(clicks, start=1):
                pred.add_new_points_or_box(state, 0, k, points=np.array([[x, y]], np.float32), labels=np.array([1]))
            t0 = time.perf_counter()
            for f, _, _ in pred.propagate_in_video(state):
                t1 = time.perf_counter()
                if f > skip:
                    times.append(t1 - t0)
                t0 = t1
        pred.close_state(state)
        print(f"  max_batch {b:>5}: {np.median(times):.3f} s/frame", flush=True)


if __name__ == "__main__":
    main()
