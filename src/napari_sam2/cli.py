"""Command-line interface: ``napari-sam2 demo | models``.

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line (``--debug`` for a traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_sam2._demo import run_demo

    run_demo(Path(args.out), model=args.model, device=args.device, frames=args.frames)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from sam2_core import weights
    from sam2_core.build import bundled_checkpoint

    if args.action == "list":
        bundled = bundled_checkpoint()
        print(f"{'default':26} {'bundled' if bundled else 'not installed':14} {bundled or ''}")
        for row in weights.list_weights():
            state = "cached" if row["cached"] else "not cached"
            print(f"{row['name']:26} {state:14} {row['path']}")
        return 0
    if args.action == "download":
        for name in args.names:
            path = weights.download(name, progress=True)
            print(f"{name}: {path}")
        return 0
    if args.action == "import":
        path = weights.import_checkpoint(args.file, name=args.name)
        print(f"imported {args.file} -> {path}")
        return 0
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-sam2", description="Segment and track cells with SAM 2.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the bundled model on the shipped sample time-lapse")
    d.add_argument("--out", default="napari-sam2-demo", help="output folder (default: %(default)s)")
    d.add_argument("--model", default="default", help="model name or checkpoint file")
    d.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
    d.add_argument("--frames", type=int, default=8, help="frames of the sample to process")
    d.set_defaults(func=_cmd_demo)

    m = sub.add_parser("models", help="list, download or import model weights")
    msub = m.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="models and where their weights are cached")
    dl = msub.add_parser("download", help="download official weights (SHA-256 checked)")
    dl.add_argument("names", nargs="+", help="official model names")
    im = msub.add_parser("import", help="copy a checkpoint file into the cache after checking it")
    im.add_argument("file", help="path of a downloaded .pt file")
    im.add_argument("--name", default=None, help="official name it must match (default: by hash)")
    m.set_defaults(func=_cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # one line, unless --debug
        if args.debug:
            raise
        print(f"napari-sam2: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
