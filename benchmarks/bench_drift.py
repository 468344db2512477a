"""Stage drift: tracking as recorded vs with ``stabilize=True`` (sam2_core.stabilize).

Usage:
    python benchmarks/bench_drift.py [--threads 2] [--movies 6] [--frames 50] [--drift 0.6,1.0]
                                     [--model default] [--memory 100,400]

Prints:
- a still 512 x 512 simulated field moving 1 px per frame (benchmarks/bench_windows.py's), 41
  frames, its 4 largest nuclei clicked on frame 0: mean IoU per frame while each nucleus is in
  the field, and how many frames after it left still carry its label;
- simulated 256 x 256 movies (seeds 20,200 and up: neither training, held-out nor calibration
  data) in which every cell also moves by ``--drift`` (dy, dx) px per frame (and without drift):
  the median over tracked cells of their mean IoU with the truth (8 cells clicked on frame 0,
  families counted after divisions, as ``sam2_core.train.evaluate``), with the estimated drift at
  the last frame against the true one, and the drift estimate's cost per frame.
``--memory 100,400`` instead prints the peak RSS of ``track(stabilize=True)`` through that many
frames of the still field (512 x 512, 1 px/frame, made on demand; labels discarded as written),
each count in its own process: memory must not grow with the number of frames.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


def still_field(model) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_windows import _Drifting

    from sam2_core.track import Prompt, track
    from sam2_core.train import prompts as P

    n, size = 41, 512
    field = _Drifting(n, size)
    movie = np.stack([field[t] for t in range(n)])
    first = field.labels0[:, :size]
    ids, areas = np.unique(first, return_counts=True)
    objs = [int(i) for i, _ in sorted(zip(ids, areas), key=lambda x: -x[1]) if i][:4]
    rng = np.random.default_rng(0)
    prompts = [Prompt(0, c, P.click_inside(first == c, rng, central=True), [1]) for c in objs]
    for stabilize in (False, True):
        t0 = time.perf_counter()
        lab = track(movie, prompts, model=model, stabilize=stabilize, cell_diameter=0)  # recorded scale
        sec = (time.perf_counter() - t0) / n
        ious, left, after = [], 0, 0
        for f in range(n):
            truth = field.labels0[:, f : f + size]
            for c in objs:
                t, m = truth == c, lab[f] == c
                if t.any():
                    ious.append((m & t).sum() / (m | t).sum())
                else:
                    after += 1
                    left += int(m.any())
        name = "stabilized" if stabilize else "as recorded"
        print(f"still field, 1 px/frame, {name}: mean IoU in the field {np.mean(ious):.3f} ({len(ious)} nucleus-frames); "
              f"after leaving, {left} of {after} frames still labelled; {sec:.2f} s/frame", flush=True)


def moving_cells(model, movies: int, frames: int, drift) -> None:
    from sam2_core.io.frames import FrameSource
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.stabilize import estimate_drift
    from sam2_core.track import Prompt, track
    from sam2_core.train import prompts as P
    from sam2_core.train.evaluate import _objects

    res: dict[bool, list[float]] = {False: [], True: []}
    errors, est_sec = [], []
    for i in range(movies):
        sim = simulate_cells(frames, (256, 256), seed=20_200 + i, drift=drift)
        rng = np.random.default_rng(20_200 + i)
        objs = _objects(sim, 0, 8, rng)
        prompts = [Prompt(0, c, P.click_inside(sim.labels[0] == c, rng, central=True), [1]) for c in objs]
        families = {c: list(sim.descendants(c)) for c in objs}
        t0 = time.perf_counter()
        d = estimate_drift(FrameSource(sim.movie))
        est_sec.append((time.perf_counter() - t0) / frames)
        errors.append(d[-1] - np.asarray(drift or (0.0, 0.0)) * (frames - 1))
        for stabilize in (False, True):
            lab = track(sim.movie, prompts, model=model, stabilize=stabilize, cell_diameter=0)
            for c in objs:
                v = []
                for f in range(frames):
                    t = np.isin(sim.labels[f], families[c])
                    if t.any():
                        m = lab[f] == c
                        v.append((m & t).sum() / (m | t).sum())
                if v:
                    res[stabilize].append(float(np.mean(v)))
    err = np.abs(np.array(errors))
    print(f"moving cells, drift {drift} px/frame, {movies} movies x {frames} frames: median propagated IoU "
          f"as recorded {np.median(res[False]):.3f} (mean {np.mean(res[False]):.3f}), stabilized "
          f"{np.median(res[True]):.3f} (mean {np.mean(res[True]):.3f}), {len(res[True])} cells; drift estimate "
          f"at the last frame off by {err.mean():.1f} px on average (largest {err.max():.1f}); "
          f"{1000 * np.mean(est_sec):.1f} ms/frame to estimate", flush=True)


class _Sink:
    """A labels output that keeps nothing (memory measurement)."""

    def __init__(self, n: int, size: int) -> None:
        self.shape, self.dtype = (n, size, size), np.dtype(np.uint16)

    def __setitem__(self, key, value) -> None:
        pass

    def __getitem__(self, key):
        return np.zeros(self.shape[1:], self.dtype)


def memory_one(n: int, model_name: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _procstat import peak_rss_mb
    from bench_windows import _Drifting

    from sam2_core import build_sam2
    from sam2_core.track import Prompt, track
    from sam2_core.train import prompts as P

    size = 512
    field = _Drifting(n, size)
    first = field.labels0[:, :size]
    ids, areas = np.unique(first, return_counts=True)
    objs = [int(i) for i, _ in sorted(zip(ids, areas), key=lambda x: -x[1]) if i][:4]
    rng = np.random.default_rng(0)
    prompts = [Prompt(0, c, P.click_inside(first == c, rng, central=True), [1]) for c in objs]
    t0 = time.perf_counter()
    track(field, prompts, model=build_sam2(model_name, device="cpu"), stabilize=True, out=_Sink(n, size),
          cell_diameter=0)
    print(f"{n} frames of {size} x {size}, stabilized, {len(objs)} nuclei: peak RSS {peak_rss_mb():.0f} MB, "
          f"{(time.perf_counter() - t0) / n:.2f} s/frame", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--movies", type=int, default=6)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--drift", default="0.6,1.0", help="dy,dx px per frame of the moving-cells movies")
    ap.add_argument("--model", default="default")
    ap.add_argument("--memory", default="", help="frame counts for the peak-RSS check, e.g. 100,400")
    ap.add_argument("--_one", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._one:
        return memory_one(args._one, args.model)
    if args.memory:
        import subprocess

        for n in [int(x) for x in args.memory.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--_one", str(n), "--threads", str(args.threads),
                                  "--model", args.model], capture_output=True, text=True, check=True).stdout.strip()
            print(out, flush=True)
        return
    from sam2_core import build_sam2

    model = build_sam2(checkpoint=args.model, device="cpu") if args.model.endswith(".pt") else build_sam2(args.model, device="cpu")
    print(f"model {args.model}, {args.threads} threads", flush=True)
    still_field(model)
    drift = tuple(float(v) for v in args.drift.split(","))
    moving_cells(model, args.movies, args.frames, None)
    moving_cells(model, args.movies, args.frames, drift)


if __name__ == "__main__":
    main()
