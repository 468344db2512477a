"""napari-sam2 batch: manifests, skipping finished outputs, failures isolated, local pool and Dask."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_sam2.batch import ManifestError, read_manifest
from napari_sam2.cli import main
from sam2_core import save_checkpoint
from sam2_core.config import DEFAULT_CONFIG
from sam2_core.modeling.sam2 import SAM2Model
from sam2_core.simulate import simulate_timelapse


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    torch.manual_seed(0)
    save_checkpoint(SAM2Model(DEFAULT_CONFIG), d / "model.pt")
    for k in range(2):
        movie, labels = simulate_timelapse(n_frames=4, shape=(64, 64), n_cells=2, seed=10 + k)
        tifffile.imwrite(d / f"m{k}.tif", movie, photometric="minisblack")
        ys, xs = np.nonzero(labels[0] == 1)
        (d / f"p{k}.csv").write_text(f"frame,object_id,x,y,label\n0,1,{xs.mean():.1f},{ys.mean():.1f},1\n")
    (d / "out").mkdir()
    (d / "jobs.csv").write_text(
        "movie,out,prompts,direction\n"
        "m0.tif,out/m0.tif,p0.csv,forward\n"
        "missing.tif,out/missing.tif,p0.csv,\n"
        "m1.tif,out/m1.zarr,p1.csv,both\n"
    )
    return d


def test_manifest_parsing(lab, tmp_path):
    jobs = read_manifest(lab / "jobs.csv")
    assert [j.direction for j in jobs] == ["forward", "both", "both"]
    assert jobs[0].movie == str(lab / "m0.tif") and jobs[2].out == str(lab / "out" / "m1.zarr")
    y = tmp_path / "jobs.yaml"
    y.write_text("jobs:\n  - {movie: a.tif, out: a_labels.tif, channels: '0 2', max_frames: 5}\n"
                 "  - {movie: b.tif, out: b_labels.tif, stabilize: true}\n")
    job, steady = read_manifest(y)
    assert job.channels == [0, 2] and job.max_frames == 5 and job.prompts is None and not job.stabilize
    assert steady.stabilize is True
    c = tmp_path / "flags.csv"
    c.write_text("movie,out,stabilize\na.tif,a.zarr,yes\nb.tif,b.zarr,0\nc.tif,c.zarr,\n")
    assert [j.stabilize for j in read_manifest(c)] == [True, False, False]
    assert steady.continuity is True  # the continuity guard is on unless a job turns it off
    c.write_text("movie,out,continuity\na.tif,a.zarr,no\nb.tif,b.zarr,\n")
    assert [j.continuity for j in read_manifest(c)] == [False, True]
    bad = tmp_path / "bad.csv"
    for text, needle in [("movie\na.tif\n", "'out' is required"), ("movie,out,colour\na,b,c\n", "unknown columns"),
                         ("movie,out\na,x.tif\nb,x.tif\n", "same output"),
                         ("movie,out,direction\na,b,sideways\n", "direction must be"),
                         ("movie,out,stabilize\na,b,maybe\n", "expected true or false")]:
        bad.write_text(text)
        with pytest.raises(ManifestError, match=needle):
            read_manifest(bad)


def test_batch_local_skips_finished_and_isolates_failures(lab, capsys):
    args = ["batch", str(lab / "jobs.csv"), "--model", str(lab / "model.pt"), "--report", str(lab / "report.csv")]
    assert main(args) == 1  # one movie is missing: reported, the others finish
    out, err = capsys.readouterr()
    assert "2 done, 0 skipped (output exists), 1 failed" in out and "missing.tif" in err
    assert tifffile.imread(lab / "out" / "m0.tif").shape == (4, 64, 64)
    assert (lab / "out" / "m1.zarr").exists() and not (lab / "out" / "missing.tif").exists()
    assert "failed" in (lab / "report.csv").read_text()
    assert main(args) == 1
    assert "0 done, 2 skipped (output exists), 1 failed" in capsys.readouterr().out


def test_batch_on_a_local_dask_cluster(lab, capsys):
    pytest.importorskip("distributed")
    args = ["batch", str(lab / "jobs.csv"), "--model", str(lab / "model.pt"), "--dask-workers", "2", "--force",
            "--threads", "1", "--speed", "fast", "--precision", "fp32"]
    assert main(args) == 1
    assert "2 done, 0 skipped (output exists), 1 failed" in capsys.readouterr().out
    assert tifffile.imread(lab / "out" / "m0.tif").max() >= 0
    from napari_sam2.export import read_labels_info

    info = read_labels_info(lab / "out" / "m0.tif")  # fast mode, whose own default is "auto"
    assert info["speed"] == "fast" and info["precision"] == "fp32"
