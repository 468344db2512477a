"""Batch tracking of many movies: a manifest, one job per movie, locally or on a Dask cluster.

Manifest (CSV with a header, or YAML: a list of mappings, or ``{jobs: [...]}``), one job per row:

- ``movie`` (required): TIFF/OME-TIFF, zarr or folder of frames; relative paths are taken from
  the manifest's folder;
- ``out`` (required): labels output, ``.tif``/``.tiff`` (ImageJ) or ``.zarr``;
- ``prompts``: CSV/JSON prompts file (see :mod:`napari_sam2.prompts_io`); without it the job seeds
  every object automatically (``auto``);
- optional ``seed_frame``, ``direction``, ``max_frames``, ``model``, ``channels`` (e.g. ``0 2``),
  ``cell_diameter`` (px: frames are resized so that cells reach the size the model tracks best;
  ``auto``: measured from the prompts or seeds, the default for a model that stores the diameter
  it tracks best; ``off`` or 0: the recorded scale; see :func:`sam2_core.track.track`),
  ``stabilize`` (true/false: remove stage drift before
  tracking; :mod:`sam2_core.stabilize`), ``continuity`` (true/false, default true: end a track
  where its mask jumps or swells; :mod:`sam2_core.continuity`).

A job whose ``out`` exists is skipped (outputs are written under a temporary name and renamed,
so an existing output is a finished one); a failing job is reported and the others go on.
"""

from __future__ import annotations

import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_FIELDS = ("movie", "out", "prompts", "seed_frame", "direction", "max_frames", "model", "channels", "cell_diameter",
           "stabilize", "continuity")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the row."""


@dataclass
class Job:
    movie: str
    out: str
    prompts: str | None = None
    seed_frame: int = 0
    direction: str = "both"
    max_frames: int | None = None
    model: str | None = None
    channels: list[int] | None = None
    cell_diameter: float | str | None = None  # px, or "auto"
    stabilize: bool = False
    continuity: bool = True


def _flag(value: Any) -> bool:
    """A manifest's true/false cell (CSV text or YAML bool)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y"):
        return True
    if text in ("0", "false", "no", "n"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


@dataclass
class JobResult:
    movie: str
    out: str
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0
    objects: int = 0
    error: str = ""


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _job(row: dict[str, Any], base: Path, where: str) -> Job:
    from sam2_core.track import as_diameter

    unknown = set(row) - set(_FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown columns {sorted(unknown)}; known: {', '.join(_FIELDS)}")
    row = {k: v for k, v in row.items() if v not in (None, "")}
    for key in ("movie", "out"):
        if key not in row:
            raise ManifestError(f"{where}: '{key}' is required")
    try:
        channels = row.get("channels")
        if isinstance(channels, str):
            channels = [int(c) for c in channels.replace(",", " ").split()]
        direction = str(row.get("direction", "both"))
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be forward, backward or both, got {direction!r}")
        return Job(
            movie=_resolve(base, str(row["movie"])),
            out=_resolve(base, str(row["out"])),
            prompts=_resolve(base, str(row["prompts"])) if "prompts" in row else None,
            seed_frame=int(row.get("seed_frame", 0)),
            direction=direction,
            max_frames=int(row["max_frames"]) if "max_frames" in row else None,
            model=str(row["model"]) if "model" in row else None,
            channels=[int(c) for c in channels] if channels is not None else None,
            cell_diameter=as_diameter(row.get("cell_diameter")),
            stabilize=_flag(row["stabilize"]) if "stabilize" in row else False,
            continuity=_flag(row["continuity"]) if row.get("continuity") not in (None, "") else True,
        )
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{where}: {e}") from None


def read_manifest(path: str | os.PathLike) -> list[Job]:
    """Jobs of a CSV or YAML manifest; relative paths are relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    base = path.parent
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ManifestError(f"{path}: not valid YAML ({e})") from None
        if isinstance(data, dict) and "jobs" in data:
            data = data["jobs"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ManifestError(f"{path}: expected a list of jobs (mappings with movie, out, ...)")
        jobs = [_job(r, base, f"{path}: job #{i + 1}") for i, r in enumerate(data)]
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        jobs = [_job(r, base, f"{path}:{i + 2}") for i, r in enumerate(rows)]
    if not jobs:
        raise ManifestError(f"{path}: no jobs in the manifest")
    outs = [j.out for j in jobs]
    dup = {o for o in outs if outs.count(o) > 1}
    if dup:
        raise ManifestError(f"{path}: several jobs write the same output: {sorted(dup)}")
    return jobs


def run_job(job: Job, model: str = "default", device: str | None = None, threads: int | None = None,
            force: bool = False, speed: str = "exact", precision: str | None = None) -> JobResult:
    """Track one movie; never raises (a failure is returned as status "failed").
    ``precision``: as ``SAM2VideoPredictor``'s (None: fp32 in exact mode, auto in fast mode)."""
    t0 = time.perf_counter()
    if Path(job.out).exists() and not force:
        return JobResult(job.movie, job.out, "skipped")
    try:
        import numpy as np

        from napari_sam2.cli import _build, _drift, _write_labels, window_provenance
        from napari_sam2.prompts_io import check_prompts, read_prompts
        from sam2_core.io import FrameSource
        from sam2_core.predictor.video import SAM2VideoPredictor
        from sam2_core.stabilize import provenance as stabilize_provenance
        from sam2_core.track import track

        if threads:
            import torch

            torch.set_num_threads(threads)
        out = Path(job.out)
        if not out.parent.is_dir():
            raise FileNotFoundError(f"output folder {out.parent} does not exist")
        source = FrameSource(job.movie, channels=job.channels)
        predictor = SAM2VideoPredictor(_build(job.model or model, device), speed=speed, precision=precision)
        drift, seen = _drift(source, job.stabilize)
        decided: dict = {}
        if job.prompts:
            prompts = read_prompts(job.prompts)
            check_prompts(prompts, source.num_frames, source.height, source.width)
            labels = track(source, prompts, model=predictor, direction=job.direction, max_frames=job.max_frames,
                           cell_diameter=job.cell_diameter, stabilize=drift, continuity=job.continuity,
                           info=decided)
        else:
            from sam2_core.automatic import track_all

            labels = track_all(source, job.seed_frame, model=predictor, direction=job.direction,
                               max_frames=job.max_frames, cell_diameter=job.cell_diameter,
                               stabilize=drift, continuity=job.continuity, info=decided)
        info = window_provenance(predictor, seen, None, job.cell_diameter, decided=decided)
        info.update(stabilize_provenance(drift), continuity=job.continuity)
        _write_labels(out, labels, info)
        return JobResult(job.movie, job.out, "done", time.perf_counter() - t0, len(np.unique(labels)) - 1)
    except Exception as e:  # reported, the batch goes on
        return JobResult(job.movie, job.out, "failed", time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")


def run_batch(
    jobs: list[Job],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    dask_workers: int | None = None,
    model: str = "default",
    device: str | None = None,
    threads: int | None = None,
    force: bool = False,
    speed: str = "exact",
    precision: str | None = None,
    on_result=None,
) -> list[JobResult]:
    """Run every job: in this process (``workers=1``), a local process pool, or on Dask.

    ``scheduler`` connects to a running Dask scheduler; ``dask_workers`` starts a local Dask
    cluster on 127.0.0.1 with that many single-threaded worker processes. One task per movie.
    """
    kw = dict(model=model, device=device, threads=threads, force=force, speed=speed, precision=precision)
    results: list[JobResult] = []

    def done(r: JobResult) -> None:
        results.append(r)
        if on_result is not None:
            on_result(r)

    if scheduler or dask_workers:
        try:
            from dask.distributed import Client, LocalCluster, as_completed as dask_completed
        except ImportError:
            raise RuntimeError("Dask's distributed scheduler is not installed: pip install 'napari-sam2[dask]'") from None
        cluster = None
        if scheduler:
            client = Client(scheduler, timeout="10s")
        else:
            cluster = LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
            client = Client(cluster)
        try:
            futures = client.map(run_job, jobs, pure=False, **kw)
            for fut in dask_completed(futures):
                done(fut.result())
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    elif workers > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_job, j, **kw) for j in jobs]
            for fut in as_completed(futures):
                done(fut.result())
    else:
        for j in jobs:
            done(run_job(j, **kw))
    order = {j.out: i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[r.out])


def write_report(path: str | os.PathLike, results: list[JobResult]) -> Path:
    """CSV with one row per job: movie, out, status, seconds, objects, error."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(results[0])) if results else ["movie"])
        w.writeheader()
        w.writerows(asdict(r) for r in results)
    return path
