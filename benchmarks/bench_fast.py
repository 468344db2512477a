"""Fast mode (local windows, reduced precision) vs the exact path: fidelity and speed.

Usage:
    python benchmarks/bench_fast.py fidelity [--model default] [--movies 4] [--frames 50] [--objects 12]
                                             [--tested fast|exact] [--precision fp32|bf16|fp16]
    python benchmarks/bench_fast.py speed [--size 1024] [--objects 1 20 100] [--frames 4]
    python benchmarks/bench_fast.py compile [--model default] [--size 512] [--objects 5] [--frames 6]
    common: [--threads 2]

fidelity: held-out simulated movies (sam2_core.simulate_cells, seeds from 10000) with true labels
    and lineages. The same objects (one central click each on frame 0) are tracked by the exact
    fp32 predictor and by the one under test (--tested, --precision: e.g. fast fp32, or exact bf16
    for the reduced-precision report). Prints the median over objects and frames of the mask IoU
    fast vs exact, and per path the median track IoU vs the truth (per object, the mean IoU over
    the frames where it is visible; a divided cell's truth is its daughters' union).
speed: seconds per tracked frame (median) for sam2.1_hiera_tiny (seeded random weights) on
    size x size 16-bit frames, objects prompted with their true masks on frame 0: the exact path
    for 1 object, the fast path for each object count. Random weights give arbitrary, sprawling
    masks that would grow every window to the whole grid, so the fast runs cap windows at the
    side the largest true cell needs (max_window_side: its box x 1.5 plus the margin; printed),
    as a user with cells of known size would; the fidelity run measures what window growth
    costs and gains with a trained model.
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


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _run(pred, movie, clicks) -> tuple[dict[int, dict[int, np.ndarray]], float, int]:
    """Track clicked objects; returns {frame: {obj: mask}}, seconds per frame, windowed steps."""
    state = pred.init_state(movie)
    for cid, pt in clicks.items():
        pred.add_new_points_or_box(state, 0, cid, points=pt, labels=[1])
    out, times = {}, []
    t = time.perf_counter()
    windowed = 0
    for f, ids, logits in pred.propagate_in_video(state):
        now = time.perf_counter()
        if f > 0:
            times.append(now - t)
            windowed += sum(o.non_cond[f].window is not None for o in state.objects.values() if f in o.non_cond)
        out[f] = {cid: m for cid, m in zip(ids, (logits[:, 0] > 0).numpy())}
        t = time.perf_counter()
    pred.close_state(state)
    return out, float(np.median(times)), windowed


def fidelity(args) -> None:
    from sam2_core import build_sam2
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train import prompts as P
    from sam2_core.train.evaluate import HELD_OUT_SEED, _objects

    model = build_sam2(args.model, device="cpu")
    exact = SAM2VideoPredictor(model)
    fast = SAM2VideoPredictor(model, speed=args.tested, precision=args.precision, window_margin=args.margin)
    grid = model.image_size // 16
    print(f"model {args.model} (image_size {model.image_size}, {grid}x{grid} token grid); under test: {args.tested} "
          f"mode, margin {args.margin if args.margin is not None else 'auto'}, precision {args.precision}; "
          f"{args.threads} threads")
    vs_exact, track_exact, track_fast, spf_e, spf_f, n_win, n_steps = [], [], [], [], [], 0, 0
    for i in range(args.movies):
        seed = HELD_OUT_SEED + i
        sim = simulate_cells(args.frames, (args.size, args.size), seed=seed)
        rng = np.random.default_rng(seed)
        objs = _objects(sim, 0, args.objects, rng)
        clicks = {cid: P.click_inside(sim.labels[0] == cid, rng, central=True) for cid in objs}
        res_e, t_e, _ = _run(exact, sim.movie, clicks)
        res_f, t_f, windowed = _run(fast, sim.movie, clicks)
        spf_e.append(t_e)
        spf_f.append(t_f)
        n_win += windowed
        n_steps += len(objs) * (len(res_f) - 1)
        fam = {cid: sim.descendants(cid) for cid in objs}
        for cid in objs:
            te, tf = [], []
            for f in res_e:
                a, b = res_e[f][cid], res_f[f][cid]
                if f > 0 and (a.any() or b.any()):
                    vs_exact.append(_iou(a, b))
                truth = np.isin(sim.labels[f], list(fam[cid]))
                if truth.any():
                    te.append(_iou(a, truth))
                    tf.append(_iou(b, truth))
            if te:
                track_exact.append(float(np.mean(te)))
                track_fast.append(float(np.mean(tf)))
        print(f"movie {i + 1}/{args.movies} (seed {seed}, {len(objs)} objects): mask IoU tested vs exact "
              f"{np.median(vs_exact):.3f} so far; s/frame exact {t_e:.3f}, tested {t_f:.3f}", flush=True)
    print(f"objects {len(track_exact)}, object-frames compared {len(vs_exact)}, "
          f"windowed steps {n_win}/{n_steps} ({100 * n_win / max(n_steps, 1):.0f}%)")
    print(f"median mask IoU tested vs exact: {np.median(vs_exact):.3f} (mean {np.mean(vs_exact):.3f}, "
          f"10th percentile {np.percentile(vs_exact, 10):.3f})  goal >= 0.95")
    d = np.median(track_fast) - np.median(track_exact)
    print(f"median track IoU vs truth: exact {np.median(track_exact):.3f}, tested {np.median(track_fast):.3f} "
          f"(difference {d:+.3f}; goal >= -0.02)")
    print(f"seconds per frame (median over movies): exact {np.median(spf_e):.3f}, tested {np.median(spf_f):.3f}")


def speed(args) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    from seeded_weights import write_checkpoint

    from sam2_core import build_sam2
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.simulate_cells import simulate_cells

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp) / "tiny.pt", "sam2.1_hiera_tiny", seed=0)
        model = build_sam2("sam2.1_hiera_tiny", checkpoint=ckpt, image_size=args.size, device="cpu")
    n_max = max(args.objects)
    sim = simulate_cells(args.frames + 1, (args.size, args.size), n_cells=int(n_max * 1.3), seed=3,
                         radius=(args.size / 100, args.size / 60), speed=1.0, division_rate=0.0)
    ids, areas = np.unique(sim.labels[0], return_counts=True)
    cells = [int(i) for i, a in sorted(zip(ids, areas), key=lambda x: -x[1]) if i][:n_max]
    print(f"sam2.1_hiera_tiny (seeded random weights) at {args.size}, {args.threads} threads, "
          f"{args.size}x{args.size} frames, {len(cells)} cells available, median over {args.frames} frames")

    from sam2_core.predictor import windows as win

    grid = args.size // win.INPUT_PER_TOKEN
    box_px = max(max(np.ptp(np.nonzero(sim.labels[0] == c)[0]), np.ptp(np.nonzero(sim.labels[0] == c)[1])) + 1
                 for c in cells)
    cap = win.window_side(1.5 * box_px / win.INPUT_PER_TOKEN, win.auto_margin(grid))
    print(f"largest cell box {box_px} px = {box_px / win.INPUT_PER_TOKEN:.1f} tokens; fast runs: "
          f"max_window_side {cap} tokens of the {grid}-token grid")

    def measure(speed_mode: str, n: int) -> tuple[float, int]:
        kw = {"speed": speed_mode}
        if speed_mode == "fast":
            kw.update(reacquire=False, max_window_side=cap)
        pred = SAM2VideoPredictor(model, **kw)
        state = pred.init_state(sim.movie)
        for cid in cells[:n]:
            pred.add_new_mask(state, 0, cid, sim.labels[0] == cid)
        times, windowed = [], 0
        t = time.perf_counter()
        for f, _, _ in pred.propagate_low_res(state):
            now = time.perf_counter()
            if f > 0:
                times.append(now - t)
                windowed += sum(o.non_cond[f].window is not None for o in state.objects.values())
            t = time.perf_counter()
        pred.close_state(state)
        return float(np.median(times)), windowed

    base, _ = measure("exact", 1)
    print(f"exact, 1 object: {base:.2f} s/frame")
    for n in args.objects:
        sec, windowed = measure("fast", n)
        goal = {20: 2.0, 100: 5.0}.get(n)
        print(f"fast, {n} objects: {sec:.2f} s/frame = {sec / base:.2f}x exact-1"
              + (f" (goal <= {goal}x)" if goal else "") + f"; windowed steps {windowed}/{n * args.frames}",
              flush=True)


def compile_bench(args) -> None:
    from sam2_core import build_sam2
    from sam2_core.compile import compile_model
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train import prompts as P

    sim = simulate_cells(args.frames + 1, (args.size, args.size), seed=10_003)
    rng = np.random.default_rng(0)
    ids, areas = np.unique(sim.labels[0], return_counts=True)
    cells = [int(i) for i, a in sorted(zip(ids, areas), key=lambda x: -x[1]) if i][: args.objects]
    clicks = {c: P.click_inside(sim.labels[0] == c, rng, central=True) for c in cells}
    print(f"torch.compile vs eager: model {args.model}, {args.size}x{args.size} frames, {len(cells)} objects, "
          f"{args.frames} tracked frames, {args.threads} threads, torch {torch.__version__}")
    results = {}
    for mode in ("eager", "compiled"):
        model = build_sam2(args.model, device="cpu")
        if mode == "compiled":
            compile_model(model)
        pred = SAM2VideoPredictor(model)
        state = pred.init_state(sim.movie)
        t = time.perf_counter()
        for cid, pt in clicks.items():
            pred.add_new_points_or_box(state, 0, cid, points=pt, labels=[1])
        times, last = [time.perf_counter() - t], None
        t = time.perf_counter()
        for f, _, logits in pred.propagate_in_video(state):
            if f > 0:
                times.append(time.perf_counter() - t)
            last = logits
            t = time.perf_counter()
        results[mode] = (times, last)
        print(f"{mode:>9}: prompts {times[0]:.2f} s (first encoder call), first tracked frame {times[1]:.2f} s, "
              f"later frames median {np.median(times[2:]):.3f} s/frame", flush=True)
    e, c = results["eager"], results["compiled"]
    print(f"compiled / eager, later frames: {np.median(c[0][2:]) / np.median(e[0][2:]):.2f}x; "
          f"largest |logit difference| on the last frame: {float((e[1] - c[1]).abs().max()):.2e}; "
          f"masks equal on {float(((e[1] > 0) == (c[1] > 0)).float().mean()):.4%} of pixels")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["fidelity", "speed", "compile"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--movies", type=int, default=4)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--objects", type=int, nargs="+", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--margin", type=int, default=None)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--tested", choices=["fast", "exact"], default="fast", help="fidelity: the mode under test")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "fidelity":
        args.frames = args.frames or 50
        args.objects = (args.objects or [12])[0]
        args.size = args.size or 256
        fidelity(args)
    elif args.mode == "compile":
        args.frames = args.frames or 6
        args.objects = (args.objects or [5])[0]
        args.size = args.size or 512
        compile_bench(args)
    else:
        args.frames = args.frames or 4
        args.objects = args.objects or [1, 20, 100]
        args.size = args.size or 1024
        speed(args)


if __name__ == "__main__":
    main()
