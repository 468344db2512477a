"""Exports of labels stacks: ImageJ TIFF, Cell Tracking Challenge, centroid tracks, CSV."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_labels_tiff(path: str | os.PathLike, labels: np.ndarray, axes: str | None = None,
                      info: dict | None = None) -> Path:
    """ImageJ-compatible TIFF of a labels stack, written to a temporary name then renamed.

    ``info`` (e.g. the predictor's provenance: model, speed mode, precision) is stored as JSON:
    in ImageJ's "Info" property, or in the description of a plain (32-bit) TIFF; read it back
    with :func:`read_labels_info`.
    """
    import tifffile

    path = Path(path)
    labels = np.asarray(labels)
    if labels.dtype not in (np.uint8, np.uint16) and labels.max() <= np.iinfo(np.uint16).max:
        labels = labels.astype(np.uint16)
    axes = axes or {2: "YX", 3: "TYX", 4: "TZYX"}.get(labels.ndim)
    tmp = _atomic_path(path)
    try:
        text = json.dumps(info) if info else None
        if labels.dtype in (np.uint8, np.uint16) and axes:
            tifffile.imwrite(tmp, labels, imagej=True, metadata={"axes": axes, **({"Info": text} if text else {})})
        else:  # ImageJ has no 32-bit integer labels: a plain TIFF keeps them exact
            meta = {**({"axes": axes} if axes else {}), **({"napari_sam2": text} if text else {})}
            tifffile.imwrite(tmp, labels, metadata=meta or None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_labels_info(path: str | os.PathLike) -> dict | None:
    """The ``info`` dict that :func:`write_labels_tiff` stored, or None."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        text = (tif.imagej_metadata or {}).get("Info")
        if text is None and tif.shaped_metadata:
            text = tif.shaped_metadata[0].get("napari_sam2")
    return json.loads(text) if text else None


def ctc_tracks(labels: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Relabel a (T, ...) stack so every track is continuous, as the CTC format requires.

    An object that vanishes and comes back continues under a new label whose parent is the
    label before the gap.

    Returns:
        (relabelled stack, [(label, begin, end, parent)]).
    """
    out = np.zeros_like(labels, dtype=np.uint16 if labels.max() < 65535 else np.uint32)
    records: list[tuple[int, int, int, int]] = []
    present = {int(i): [t for t in range(len(labels)) if (labels[t] == i).any()] for i in np.unique(labels) if i}
    next_label = max(present, default=0) + 1
    for obj, frames in sorted(present.items()):
        segments, start = [], frames[0]
        for a, b in zip(frames, frames[1:] + [None]):
            if b is None or b != a + 1:
                segments.append((start, a))
                start = b
        parent = 0
        for k, (b0, b1) in enumerate(segments):
            lab = obj if k == 0 else next_label
            if k:
                next_label += 1
            for t in range(b0, b1 + 1):
                out[t][labels[t] == obj] = lab
            records.append((lab, b0, b1, parent))
            parent = lab
    return out, sorted(records)


def write_ctc(folder: str | os.PathLike, labels: np.ndarray, info: dict | None = None) -> Path:
    """Cell Tracking Challenge result folder: mask000.tif ... and res_track.txt.

    ``info`` (what produced the result) goes to napari-sam2.json beside them.
    """
    import tifffile

    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent if folder.parent.exists() else None))
    try:
        relabelled, records = ctc_tracks(np.asarray(labels))
        digits = max(3, len(str(len(relabelled) - 1)))
        for t, frame in enumerate(relabelled):
            tifffile.imwrite(tmp / f"mask{t:0{digits}d}.tif", frame.astype(np.uint16))
        (tmp / "res_track.txt").write_text("".join(f"{l} {b} {e} {p}\n" for l, b, e, p in records))
        if info:
            (tmp / "napari-sam2.json").write_text(json.dumps(info, indent=1))
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def centroid_tracks(labels: np.ndarray, frame_axis: int = 0) -> np.ndarray:
    """napari Tracks data (N, 2 + ndim-1): track_id, t, then the centroid coordinates."""
    from scipy import ndimage

    labels = np.moveaxis(np.asarray(labels), frame_axis, 0)
    rows = []
    for t, frame in enumerate(labels):
        ids = [int(i) for i in np.unique(frame) if i]
        if not ids:
            continue
        cents = ndimage.center_of_mass(np.ones_like(frame, dtype=np.uint8), frame, ids)
        rows.extend([i, t, *c] for i, c in zip(ids, cents))
    return np.asarray(rows, dtype=float).reshape(-1, 1 + labels.ndim)


def measurements_csv(path: str | os.PathLike, labels: np.ndarray, image: np.ndarray | None = None) -> Path:
    """Per-object, per-frame area, centroid, bbox and mean intensity per channel (CSV)."""
    import csv

    from skimage.measure import regionprops_table

    path = Path(path)
    labels = np.asarray(labels)
    rows: list[dict] = []
    for t in range(len(labels)):
        kw = {}
        props = ["label", "area", "centroid", "bbox"]
        if image is not None:
            kw["intensity_image"] = np.asarray(image[t])
            props.append("intensity_mean")
        table = regionprops_table(labels[t], properties=props, **kw)
        n = len(table["label"])
        for i in range(n):
            rows.append({"frame": t, **{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in table.items()}})
    tmp = _atomic_path(path)
    try:
        with open(tmp, "w", newline="") as f:
            fields = list(rows[0]) if rows else ["frame", "label", "area"]
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
