"""Video tracking speed and memory: ours vs Meta's reference, same weights and frames.

Usage:
    python benchmarks/bench_video.py speed [--sizes 1024 512] [--objects 1 3 10] [--frames 4] [--repeats 3]
        [--compile --frames 10 --warmup 6] [--precision bf16]
    python benchmarks/bench_video.py memory [--lengths 100 1000] [--size 256]
    common: [--threads 2] [--reference-venv PATH] [--no-reference]

speed: seconds per tracked frame (after the prompted frame, median) for N objects prompted on
       frame 0 of a generated 16-bit time-lapse, at each model input size. ``--compile`` runs
       ours with ``SAM2VideoPredictor(compile=True)`` (Meta's stays eager); ``--warmup N``
       leaves the first N tracked frames out of the median (compiling happens there, and again
       while the memory bank grows; the bank is full from frame num_maskmem = 7).
       ``--precision bf16`` runs ours under bfloat16 autocast (``SAM2VideoPredictor(precision=)``;
       not exact mode: fast on CPUs with AMX or AVX512-BF16, emulated and slow elsewhere);
       Meta's stays float32.
memory: peak RSS while tracking one object through T frames of a 512x512 uint16 TIFF.
Each measurement runs in a fresh subprocess. Meta's predictor is run only from this script's
worker (with the reference venv's python), never imported by the package.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procstat import peak_rss_mb  # noqa: E402

MODEL = "sam2.1_hiera_tiny"
REF_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (less sensitive than wall time to other load)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _movie(n_frames: int, shape: tuple[int, int], n_objects: int):
    sys.path.insert(0, str(ROOT / "src"))
    from sam2_core.simulate import simulate_timelapse

    movie, labels = simulate_timelapse(n_frames=n_frames, shape=shape, n_cells=n_objects, seed=0,
                                       radius=(shape[0] / 40, shape[0] / 22))
    import numpy as np

    points = []
    for k in range(1, int(labels[0].max()) + 1):
        ys, xs = np.nonzero(labels[0] == k)
        points.append([float(xs.mean()), float(ys.mean())])
    return movie, points


def worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    from sam2_core.io import FrameSource

    if args.mode == "speed":
        movie, points = _movie(args.frames + 1, (512, 512), args.objects)
    else:
        try:
            import tifffile

            movie = tifffile.memmap(args.tiff)  # frames are read lazily by ours; Meta loads them all
        except ImportError:  # the reference venv has no tifffile: the same frames, saved as .npy
            movie = np.load(Path(args.tiff).with_suffix(".npy"), mmap_mode="r")
        _, points = _movie(1, (512, 512), 1)
    source = FrameSource(movie)
    times: list[float] = []
    cpu: list[float] = []
    if args.impl == "ours":
        from sam2_core import build_sam2
        from sam2_core.predictor.video import SAM2VideoPredictor

        pred = SAM2VideoPredictor(build_sam2(MODEL, checkpoint=args.checkpoint, image_size=args.size, device="cpu"),
                                  compile=bool(getattr(args, "compile", False)), precision=args.precision)
        state = pred.init_state(source)
    else:
        import warnings

        warnings.filterwarnings("ignore")
        import sam2.sam2_video_predictor as rvp
        from sam2.build_sam import build_sam2_video_predictor
        from sam2.modeling.memory_attention import MemoryAttention

        orig = MemoryAttention.forward

        def fwd(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
            return orig(self, curr, memory.float(), curr_pos, memory_pos.float(), num_obj_ptr_tokens)

        MemoryAttention.forward = fwd

        def load(**kw):  # Meta loads and keeps every frame, as its own loader does
            return torch.cat([source.model_input(i, args.size) for i in range(len(source))]), source.height, source.width

        rvp.load_video_frames = load
        import tqdm

        tqdm.tqdm.__init__.__kwdefaults__ = None
        pred = build_sam2_video_predictor(REF_CONFIG, args.checkpoint, device="cpu",
                                          hydra_overrides_extra=[f"++model.image_size={args.size}"])
        state = pred.init_state(video_path="unused")
    with torch.inference_mode():
        for k, p in enumerate(points[: args.objects], start=1):
            pred.add_new_points_or_box(state, 0, k, points=np.array([p], np.float32), labels=np.array([1]))
        t0, c0 = time.perf_counter(), _cpu_s()
        for f, _, _ in pred.propagate_in_video(state):
            t1, c1 = time.perf_counter(), _cpu_s()
            if f > getattr(args, "warmup", 0):
                times.append(t1 - t0)
                cpu.append(c1 - c0)
            t0, c0 = t1, c1
    kernel = None
    if args.impl == "ours":
        from sam2_core.modeling import linear

        kernel = "onednn" if linear.onednn_faster() else "torch"  # modeling.linear's choice in this run
    return {"impl": args.impl, "linear": kernel, "median_s": float(np.median(times)) if times else None,
            "median_cpu_s": float(np.median(cpu)) if cpu else None,
            "frames": len(times) + 1, "peak_rss_mb": peak_rss_mb(), "torch": torch.__version__}


def run(impl: str, python: str, ckpt: Path, mode: str, extra: list[str]) -> dict:
    cmd = [python, __file__, mode, "--worker", impl, "--checkpoint", str(ckpt), *extra]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["speed", "memory"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 512])
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 3, 10])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="ours with torch.compile (Meta's eager)")
    ap.add_argument("--warmup", type=int, default=0, help="tracked frames left out of the median")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                    help="ours: autocast precision (Meta's stays float32)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1,
                    help="speed: runs per implementation, alternating; medians of the runs are reported")
    ap.add_argument("--reference-venv", default=os.environ.get("SAM2_REFERENCE_VENV", str(ROOT.parent / "refvenv")))
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--worker", choices=["ours", "meta"], help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--tiff", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.impl = args.worker
        if isinstance(args.objects, list):
            args.objects = args.objects[0]
        print(json.dumps(worker(args)))
        return

    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    from seeded_weights import write_checkpoint

    ref_py = Path(args.reference_venv) / "bin" / "python"
    impls = [("ours", sys.executable)]
    if not args.no_reference and ref_py.exists():
        impls.append(("meta", str(ref_py)))
    elif not args.no_reference:
        print(f"(no reference venv at {args.reference_venv}: Meta's column skipped)")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp) / "bench.pt", MODEL, seed=0)
        common = ["--threads", str(args.threads)]
        if args.mode == "speed":
            import numpy as np

            print(f"seconds per frame, {MODEL} (seeded random weights), {args.threads} threads, "
                  f"512x512 16-bit frames, median over tracked frames {args.warmup + 1}-{args.frames}"
                  + (f", median of {args.repeats} alternating runs each" if args.repeats > 1 else "")
                  + (" (ours compiled with torch.compile, Meta's eager)" if args.compile else "")
                  + (f" (ours in {args.precision}, Meta's in float32)" if args.precision != "fp32" else ""))
            print("wall = elapsed seconds; cpu = CPU seconds of the worker process (all threads), "
                  "less sensitive to other load on the machine")
            two = len(impls) > 1
            print(f"{'size':>5} {'objects':>7} " + " ".join(f"{i + ' wall':>10}" for i, _ in impls)
                  + ("   ratio" if two else "") + " " + " ".join(f"{i + ' cpu':>10}" for i, _ in impls)
                  + ("   ratio" if two else ""))
            for size in args.sizes:
                for n in args.objects:
                    extra = ["--warmup", str(args.warmup)]
                    runs: dict[str, list[dict]] = {i: [] for i, _ in impls}
                    for k in range(args.repeats):  # alternating order (ours, Meta's, Meta's, ours, ...)
                        for i, py in (impls if k % 2 == 0 else impls[::-1]):
                            runs[i].append(run(i, py, ckpt, "speed", [
                                *common, "--size", str(size), "--objects", str(n), "--frames", str(args.frames),
                                *extra, *(["--compile"] if args.compile and i == "ours" else []),
                                *(["--precision", args.precision] if i == "ours" else [])]))
                    r = {i: {key: float(np.median([x[key] for x in rs])) for key in ("median_s", "median_cpu_s")}
                         for i, rs in runs.items()}
                    line = f"{size:>5} {n:>7} " + " ".join(f"{r[i]['median_s']:10.2f}" for i, _ in impls)
                    if "meta" in r:
                        line += f"   {r['ours']['median_s'] / r['meta']['median_s']:.2f}x"
                    line += " " + " ".join(f"{r[i]['median_cpu_s']:10.2f}" for i, _ in impls)
                    if "meta" in r:
                        line += f"   {r['ours']['median_cpu_s'] / r['meta']['median_cpu_s']:.2f}x"
                        if args.repeats > 1:
                            each = [o["median_s"] / m["median_s"] for o, m in zip(runs["ours"], runs["meta"])]
                            line += f"   (wall ratio per repeat {min(each):.2f}-{max(each):.2f}x)"
                    kernels = sorted({x.get("linear") or "?" for x in runs["ours"]})
                    line += f"   [ours' linear kernel: {', '.join(kernels)}]"
                    print(line, flush=True)
        else:
            import numpy as np
            import tifffile

            print(f"peak RSS (MB) tracking 1 object, {MODEL} at {args.size}, 512x512 uint16 TIFF")
            print(f"{'frames':>7} " + " ".join(f"{i:>9}" for i, _ in impls))
            results = {}
            for n in args.lengths:
                movie, _ = _movie(min(n, 50), (512, 512), 1)
                tif = Path(tmp) / f"movie_{n}.tif"
                reps = -(-n // len(movie))
                stack = np.concatenate([movie] * reps)[:n]
                tifffile.imwrite(tif, stack)  # uncompressed: memmap-able
                np.save(tif.with_suffix(".npy"), stack)  # for a worker without tifffile (Meta's venv)
                del stack
                results[n] = {}
                for i, py in impls:
                    if i == "meta" and n > 400:
                        results[n][i] = None  # holds every frame: skipped past 400 frames
                        continue
                    results[n][i] = run(i, py, ckpt, "memory", [*common, "--size", str(args.size),
                                                      "--objects", "1", "--tiff", str(tif)])
                cells = [f"{results[n][i]['peak_rss_mb']:9.0f}" if results[n][i] else f"{'skipped':>9}" for i, _ in impls]
                print(f"{n:>7} " + " ".join(cells), flush=True)
            a, b = min(args.lengths), max(args.lengths)
            ratio = results[b]["ours"]["peak_rss_mb"] / results[a]["ours"]["peak_rss_mb"]
            print(f"ours: peak RSS {b} vs {a} frames: {ratio:.2f}x")


if __name__ == "__main__":
    main()
