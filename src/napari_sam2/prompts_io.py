"""Reading prompts from CSV or JSON files (for the command line and batch jobs).

CSV columns: ``frame,object_id,x,y,label`` for clicks (label 1 positive, 0 negative) and/or
``frame,object_id,x0,y0,x1,y1`` for boxes; one file may hold both (leave the unused cells empty).
JSON: a list of objects ``{"frame", "object_id", "points": [[x, y], ...], "labels": [...],
"box": [x0, y0, x1, y1]}``. Coordinates are pixels of the original frames, x = column, y = row.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from sam2_core.track import Prompt


class PromptFileError(ValueError):
    """A prompts file that cannot be used; the message names the file and the line."""


def _num(row: dict, key: str, path: Path, line: int, kind=float):
    value = (row.get(key) or "").strip()
    if value == "":
        return None
    try:
        v = kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise PromptFileError(f"{path}:{line}: {key}={value!r} is not a number") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise PromptFileError(f"{path}:{line}: {key} must be finite")
    return v


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a .csv or .json file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(items, list):
            raise PromptFileError(f"{path}: expected a list of prompts")
        out = []
        for i, item in enumerate(items):
            try:
                out.append(Prompt(**{k: v for k, v in item.items() if k in
                                     ("frame", "object_id", "points", "labels", "box", "z")}))
            except (TypeError, ValueError) as e:
                raise PromptFileError(f"{path}: prompt #{i}: {e}") from None
        return out
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if not {"frame", "object_id"} <= cols or not ({"x", "y"} <= cols or {"x0", "y0", "x1", "y1"} <= cols):
            raise PromptFileError(
                f"{path}: needs columns frame,object_id and x,y[,label] and/or x0,y0,x1,y1; got {sorted(cols)}"
            )
        prompts = []
        for line, row in enumerate(reader, start=2):
            frame = _num(row, "frame", path, line, int)
            obj = _num(row, "object_id", path, line, int)
            if frame is None or obj is None:
                raise PromptFileError(f"{path}:{line}: frame and object_id are required")
            x, y = _num(row, "x", path, line), _num(row, "y", path, line)
            box = [_num(row, k, path, line) for k in ("x0", "y0", "x1", "y1")]
            label = _num(row, "label", path, line, int)
            try:
                if x is not None and y is not None:
                    if label not in (None, 0, 1):
                        raise PromptFileError(f"{path}:{line}: label must be 1 (positive) or 0 (negative)")
                    prompts.append(Prompt(frame, obj, points=[[x, y]], labels=[1 if label is None else label]))
                if all(v is not None for v in box):
                    prompts.append(Prompt(frame, obj, box=box))
            except ValueError as e:
                raise PromptFileError(f"{path}:{line}: {e}") from None
        if not prompts:
            raise PromptFileError(f"{path}: no prompts in the file")
        return prompts


def check_prompts(prompts: list[Prompt], num_frames: int, height: int, width: int) -> None:
    """Frames and pixels inside the movie, else PromptFileError naming the first bad prompt."""
    for p in prompts:
        if not 0 <= p.frame < num_frames:
            raise PromptFileError(f"prompt for object {p.object_id}: frame {p.frame} is outside the movie "
                                  f"(0..{num_frames - 1})")
        pts = [] if p.points is None else list(p.points)
        if p.box is not None:
            pts += [p.box[:2], p.box[2:]]
        for x, y in pts:
            if not (0 <= x < width and 0 <= y < height):
                raise PromptFileError(f"prompt for object {p.object_id} on frame {p.frame}: ({x}, {y}) is outside "
                                      f"the {width}x{height} frame")
