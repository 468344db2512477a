"""Image-encoder speed and peak memory: ours vs Meta's reference, same weights and image.

Usage:
    python benchmarks/bench_image_encoder.py [--model sam2.1_hiera_tiny] [--size 1024]
        [--threads 2] [--repeats 5] [--reference-venv PATH]

Each implementation runs in its own subprocess (so peak RSS is its own). Both load the same
seeded random checkpoint (tests/reference/seeded_weights.py) and encode the same image. Meta's
runs only when a reference venv is given (or found at $SAM2_REFERENCE_VENV / ../refvenv); it is
imported by this script's worker only, never by the package.
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

REF_CONFIGS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def worker(impl: str, ckpt: str, model: str, size: int, threads: int, repeats: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "src"))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32))
    if impl == "ours":
        from sam2_core import build_sam2

        net = build_sam2(model, checkpoint=ckpt, image_size=size, device="cpu")
        run = net.encode_image
    else:
        from sam2.build_sam import build_sam2 as ref_build

        net = ref_build(REF_CONFIGS[model], ckpt, device="cpu",
                        hydra_overrides_extra=[f"++model.image_size={size}"])
        run = net.forward_image
    rss_before = peak_rss_mb()
    times = []
    with torch.inference_mode():
        run(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t0)
    return {
        "impl": impl,
        "torch": torch.__version__,
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam2.1_hiera_tiny", choices=sorted(REF_CONFIGS))
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference-venv", default=os.environ.get("SAM2_REFERENCE_VENV", str(ROOT.parent / "refvenv")))
    ap.add_argument("--worker", choices=["ours", "meta"], help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.worker, args.checkpoint, args.model, args.size, args.threads, args.repeats)
        print(json.dumps(res))
        return

    sys.path.insert(0, str(ROOT / "tests" / "reference"))
    from seeded_weights import write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp) / "bench.pt", args.model, seed=0)
        runs = [("ours", sys.executable)]
        ref_py = Path(args.reference_venv) / "bin" / "python"
        if ref_py.exists():
            runs.append(("meta", str(ref_py)))
        else:
            print(f"(no reference venv at {args.reference_venv}: Meta's column skipped; "
                  "build one with ../shared/tools/reference-venv DIR)")
        results = {}
        for impl, py in runs:
            cmd = [py, __file__, "--worker", impl, "--checkpoint", str(ckpt), "--model", args.model,
                   "--size", str(args.size), "--threads", str(args.threads), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[impl] = json.loads(out.strip().splitlines()[-1])

    print(f"image encoder, {args.model} at {args.size}x{args.size}, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'impl':6} {'torch':16} {'median s':>9} {'min s':>7} {'peak RSS MB':>12}")
    for r in results.values():
        print(f"{r['impl']:6} {r['torch']:16} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['peak_rss_mb']:12.0f}")
    if "meta" in results:
        o, m = results["ours"], results["meta"]
        print(f"ratio ours/meta: time {o['median_s'] / m['median_s']:.2f}x, "
              f"peak RSS {o['peak_rss_mb'] / m['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
