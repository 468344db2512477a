"""The napari-sam2 command line: track, segment, embed, models, demo; exit codes and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_sam2.cli import main
from napari_sam2.export import read_labels_info, write_labels_tiff
from napari_sam2.prompts_io import PromptFileError, read_prompts

MIN_AUTO_F1 = 0.85  # bundled model, held-out 256x256 image: measured F1 0.985 (32 of 33 nuclei, no extra mask)
MIN_TILED_F1 = 0.85  # 512x512 fields in native tiles: measured F1 0.96 on held-out seed 10,007
from sam2_core.simulate import simulate_timelapse


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_ckpt_path):
    d = tmp_path_factory.mktemp("cli")
    movie, labels = simulate_timelapse(n_frames=5, shape=(64, 80), n_cells=3, seed=4)
    tifffile.imwrite(d / "movie.tif", movie)
    rows = ["frame,object_id,x,y,label,x0,y0,x1,y1"]
    for k in (1, 2):
        ys, xs = np.nonzero(labels[0] == k)
        rows.append(f"0,{k},{xs.mean():.1f},{ys.mean():.1f},1,,,,")
    ys, xs = np.nonzero(labels[2] == 3)
    rows.append(f"2,3,,,,{xs.min()},{ys.min()},{xs.max()},{ys.max()}")
    (d / "prompts.csv").write_text("\n".join(rows) + "\n")
    return d, movie, labels, small_ckpt_path


@pytest.fixture(scope="module")
def small_ckpt_path(tmp_path_factory, seeded_checkpoint):
    from sam2_core import build_sam2, save_checkpoint

    model = build_sam2(checkpoint=seeded_checkpoint("sam2.1_hiera_tiny", 0), image_size=256, device="cpu")
    return str(save_checkpoint(model, tmp_path_factory.mktemp("ck") / "tiny256.pt"))


def test_help_and_usage_exit_codes(capsys):
    for cmd in ([], ["track", "--help"], ["segment", "--help"], ["models", "--help"], ["embed", "--help"],
                ["demo", "--help"], ["batch", "--help"], ["train", "--help"], ["evaluate", "--help"]):
        code = main(cmd or ["--help"])
        assert code == 0
    assert main(["track"]) == 2  # missing arguments
    assert main(["frobnicate"]) == 2


def test_track_csv_to_tiff_and_zarr(workdir, capsys):
    d, movie, _, ckpt = workdir
    out = d / "labels.tif"
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(out),
                 "--model", ckpt, "--direction", "both", "--threads", "2", "--ctc", str(d / "ctc"),
                 "--csv", str(d / "m.csv")]) == 0
    assert (d / "ctc" / "res_track.txt").exists() and len(list((d / "ctc").glob("mask*.tif"))) == len(movie)
    rows = (d / "m.csv").read_text().splitlines()
    assert rows[0].startswith("frame,label,area") and "intensity_mean" in rows[0] and len(rows) > len(movie)
    lab = tifffile.imread(out)
    assert lab.shape == movie.shape and lab.dtype == np.uint16
    assert set(np.unique(lab)) <= {0, 1, 2, 3} and {1, 2} <= set(np.unique(lab[0]))
    with tifffile.TiffFile(out) as tf:
        assert tf.is_imagej
    assert read_labels_info(out)["speed"] == "exact" and read_labels_info(out)["precision"] == "fp32"
    assert read_labels_info(out)["continuity"] is True  # the continuity guard is on by default
    assert json.loads((d / "ctc" / "napari-sam2.json").read_text())["speed"] == "exact"
    assert "labels.tif" in capsys.readouterr().out
    zout = d / "labels.zarr"
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(zout),
                 "--model", ckpt, "--max-frames", "2", "--direction", "forward", "--speed", "fast",
                 "--refresh-every", "2"]) == 0
    import zarr

    z = zarr.open(str(zout), mode="r")
    assert z.shape == movie.shape and z[4].max() == 0  # only frames 0..2 tracked
    assert z.attrs["napari_sam2"]["speed"] == "fast" and "(fast mode)" in capsys.readouterr().out
    assert z.attrs["napari_sam2"]["refresh_every"] == 2 and "refresh_every" not in read_labels_info(out)
    # frames enlarged 2x are tracked in windows; the labels keep the movie's size and say so
    sout = d / "scaled.tif"
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(sout),
                 "--model", ckpt, "--max-frames", "1", "--direction", "forward", "--scale", "2"]) == 0
    assert tifffile.imread(sout).shape == movie.shape and {1, 2} <= set(np.unique(tifffile.imread(sout)[0]))
    info = read_labels_info(sout)
    assert info["scale"] == 2.0 and info["windows"] is True
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(sout),
                 "--model", ckpt, "--max-frames", "1", "--direction", "forward", "--no-continuity",
                 "--precision", "bf16"]) == 0
    assert read_labels_info(sout)["continuity"] is False and read_labels_info(sout)["precision"] == "bf16"
    # a model without a stored preferred diameter: a clear one-line error, exit 1
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(sout),
                 "--model", ckpt, "--cell-diameter", "12"]) == 1
    assert "no preferred cell diameter" in capsys.readouterr().err
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(sout),
                 "--model", ckpt, "--scale", "2", "--no-windows"]) == 1
    assert "windows" in capsys.readouterr().err


def test_labels_info_in_32_bit_tiff(tmp_path):
    info = {"speed": "fast", "model": "x"}
    big = np.zeros((2, 8, 8), np.uint32)
    big[0, 0, 0] = 70000
    write_labels_tiff(tmp_path / "big.tif", big, info=info)
    assert read_labels_info(tmp_path / "big.tif") == info
    assert tifffile.imread(tmp_path / "big.tif").max() == 70000
    write_labels_tiff(tmp_path / "plain.tif", big[:, :4] * 0)
    assert read_labels_info(tmp_path / "plain.tif") is None


def test_json_prompts(workdir, tmp_path):
    d, movie, labels, ckpt = workdir
    ys, xs = np.nonzero(labels[1] == 2)
    (tmp_path / "p.json").write_text(json.dumps([{"frame": 1, "object_id": 7, "points": [[xs.mean(), ys.mean()]],
                                                  "labels": [1]}]))
    assert main(["track", str(d / "movie.tif"), "--prompts", str(tmp_path / "p.json"), "--out",
                 str(tmp_path / "o.tif"), "--model", ckpt]) == 0
    assert 7 in tifffile.imread(tmp_path / "o.tif")


def test_bad_input_one_line_errors(workdir, tmp_path, capsys):
    d, _, _, ckpt = workdir
    base = ["--model", ckpt, "--out", str(tmp_path / "x.tif")]
    cases = [
        (["track", str(tmp_path / "missing.tif"), "--prompts", str(d / "prompts.csv")], "missing.tif"),
        (["track", str(d / "movie.tif"), "--prompts", str(tmp_path / "none.csv")], "none.csv"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("frame,object_id,x,y,label\n9,1,5,5,1\n")
    cases.append((["track", str(d / "movie.tif"), "--prompts", str(bad)], "frame 9 is outside"))
    off = tmp_path / "off.csv"
    off.write_text("frame,object_id,x,y,label\n0,1,500,5,1\n")
    cases.append((["track", str(d / "movie.tif"), "--prompts", str(off)], "outside the 80x64"))
    notck = tmp_path / "notes.pt"
    notck.write_text("not a checkpoint")
    for argv, needle in cases:
        assert main(argv + base) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out",
                 str(tmp_path / "x.tif"), "--model", str(notck)]) == 1
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out",
                 str(tmp_path / "x.tif"), "--model", "sam5_giant"]) == 1
    assert "sam5_giant" in capsys.readouterr().err
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--model", ckpt,
                 "--out", "/proc/nope/x.tif"]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()  # no partial output anywhere


def test_prompt_file_parsing(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("frame,object_id,x,y\n0,1,abc,3\n")
    with pytest.raises(PromptFileError, match=r"p.csv:2: x='abc'"):
        read_prompts(p)
    p.write_text("a,b\n1,2\n")
    with pytest.raises(PromptFileError, match="needs columns"):
        read_prompts(p)


def test_segment_and_embed(workdir, tmp_path, capsys):
    d, movie, labels, ckpt = workdir
    folder = tmp_path / "imgs"
    folder.mkdir()
    for t in range(2):
        tifffile.imwrite(folder / f"img{t}.tif", movie[t])
    assert main(["segment", str(folder), "--out", str(tmp_path / "seg"), "--prompts", str(d / "prompts.csv"),
                 "--model", ckpt]) == 0
    out = sorted((tmp_path / "seg").glob("*_labels.tif"))
    assert len(out) == 2 and tifffile.imread(out[0]).max() >= 1
    assert main(["embed", str(d / "movie.tif"), "--cache", str(tmp_path / "emb"), "--model", ckpt]) == 0
    assert "5 computed" in capsys.readouterr().out
    assert main(["embed", str(d / "movie.tif"), "--cache", str(tmp_path / "emb"), "--model", ckpt]) == 0
    assert "0 computed" in capsys.readouterr().out
    # track reads them: no frame is encoded again (the cache gains no file)
    files = sorted((tmp_path / "emb").iterdir())
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(tmp_path / "o.tif"),
                 "--model", ckpt, "--embedding-cache", str(tmp_path / "emb")]) == 0
    assert sorted((tmp_path / "emb").iterdir()) == files
    # frames tracked in windows (here: enlarged 2x) are embedded per window, and tracking reads them
    emb2 = tmp_path / "emb2"
    assert main(["embed", str(d / "movie.tif"), "--cache", str(emb2), "--model", ckpt, "--scale", "2"]) == 0
    assert "in 1 window(s) at scale 2" in capsys.readouterr().out
    files = sorted(emb2.iterdir())
    assert len(files) == len(movie)
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(tmp_path / "o2.tif"),
                 "--model", ckpt, "--embedding-cache", str(emb2), "--scale", "2"]) == 0
    assert sorted(emb2.iterdir()) == files
    # --stabilize embeds the steady canvas that track --stabilize tracks
    emb3 = tmp_path / "emb3"
    assert main(["embed", str(d / "movie.tif"), "--cache", str(emb3), "--model", ckpt, "--stabilize"]) == 0
    files = sorted(emb3.iterdir())
    assert len(files) == len(movie) and "5 computed" in capsys.readouterr().out
    assert main(["track", str(d / "movie.tif"), "--prompts", str(d / "prompts.csv"), "--out", str(tmp_path / "o3.tif"),
                 "--model", ckpt, "--embedding-cache", str(emb3), "--stabilize"]) == 0
    assert sorted(emb3.iterdir()) == files


def test_automatic_segment_with_the_bundled_model_finds_the_nuclei(tmp_path, capsys):
    """Fully automatic: `segment` with the default model and no thresholds given uses the ones
    calibrated for the bundled weights, and finds most nuclei of a held-out simulated image."""
    from sam2_core.build import bundled_checkpoint
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train.evaluate import match_score

    if bundled_checkpoint() is None:
        pytest.skip("no bundled weights in this installation")
    sim = simulate_cells(1, (256, 256), seed=10_007)
    tifffile.imwrite(tmp_path / "img.tif", sim.movie[0])
    assert main(["segment", str(tmp_path / "img.tif"), "--out", str(tmp_path / "seg")]) == 0
    found = tifffile.imread(tmp_path / "seg" / "img_labels.tif")
    s = match_score(found[None], sim.labels[:1])
    assert s["f1"] >= MIN_AUTO_F1, s
    assert main(["segment", str(tmp_path / "img.tif"), "--out", str(tmp_path / "none"),
                 "--pred-iou-thresh", "1.5"]) == 0  # the flag reaches the generator
    assert tifffile.imread(tmp_path / "none" / "img_labels.tif").max() == 0

    big = simulate_cells(1, (512, 512), seed=10_008, n_cells=160)
    tifffile.imwrite(tmp_path / "big.tif", big.movie[0])
    assert main(["segment", str(tmp_path / "big.tif"), "--out", str(tmp_path / "seg")]) == 0
    assert "in tiles of 192 px + 32 px halo" in capsys.readouterr().err
    s = match_score(tifffile.imread(tmp_path / "seg" / "big_labels.tif")[None], big.labels[:1])
    assert s["f1"] >= MIN_TILED_F1, s
    assert main(["segment", str(tmp_path / "big.tif"), "--out", str(tmp_path / "whole"), "--tile", "0"]) == 0
    s_whole = match_score(tifffile.imread(tmp_path / "whole" / "big_labels.tif")[None], big.labels[:1])
    assert s_whole["f1"] < s["f1"] - 0.3  # resized whole to the 256 input, the nuclei are too small
    assert main(["segment", str(tmp_path / "big.tif"), "--out", str(tmp_path / "x"), "--tile", "8"]) == 2
    assert "--tile takes 'auto', 0 or a size" in capsys.readouterr().err


def test_prompted_segment_works_as_the_widget(tmp_path, capsys):
    """`segment --prompts` on a 512 x 512 image with small nuclei: each click segmented as the
    widget does (a one-frame stack in windows at the cell diameter measured from the prompts),
    far better than the whole image resized to the 256 input (`--tile 0`, Meta's way)."""
    from sam2_core.build import bundled_checkpoint
    from sam2_core.simulate_cells import simulate_cells
    from sam2_core.train import prompts as P

    if bundled_checkpoint() is None:
        pytest.skip("no bundled weights in this installation")
    sim = simulate_cells(1, (512, 512), seed=10_011, radius=(5.0, 7.0))
    truth = sim.labels[0]
    rng = np.random.default_rng(0)
    ids = [int(i) for i in np.unique(truth) if i and (truth == i).sum() > 40][::6][:8]
    rows = ["frame,object_id,x,y,label"]
    for n, i in enumerate(ids, start=1):
        (x, y), = P.click_inside(truth == i, rng, central=True)
        rows.append(f"3,{n},{x:.1f},{y:.1f},1")  # the frame is ignored for single images
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    tifffile.imwrite(tmp_path / "img.tif", sim.movie[0])

    def ious(folder):
        out = tifffile.imread(tmp_path / folder / "img_labels.tif")
        return [((out == n) & (truth == i)).sum() / ((out == n) | (truth == i)).sum() for n, i in enumerate(ids, start=1)]

    assert main(["segment", str(tmp_path / "img.tif"), "--out", str(tmp_path / "seg"),
                 "--prompts", str(tmp_path / "p.csv")]) == 0
    assert "cell diameter measured from the prompts" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "img.tif"), "--out", str(tmp_path / "whole"),
                 "--prompts", str(tmp_path / "p.csv"), "--tile", "0"]) == 0
    scaled, whole = ious("seg"), ious("whole")
    assert np.median(scaled) > 0.7 and np.median(scaled) > np.median(whole) + 0.2, (scaled, whole)


def test_console_script_and_models_list():
    res = subprocess.run([sys.executable, "-m", "napari_sam2.cli", "models", "list"], capture_output=True, text=True)
    assert res.returncode == 0 and "sam2.1_hiera_tiny" in res.stdout and "default" in res.stdout


def test_demo_writes_every_output(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--frames", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("labels.tif", "ctc_RES", "measurements.csv", "overview.png", "movie.tif"):
        assert (tmp_path / "d" / name).exists() and name in out
    assert (tmp_path / "d" / "ctc_RES" / "res_track.txt").exists()
    assert tifffile.imread(tmp_path / "d" / "labels.tif").shape == (3, 256, 256)
    assert "detection F1" in out


def test_demo_score_counts_matches():
    from napari_sam2._demo import score

    truth = np.zeros((1, 20, 20), np.uint16)
    truth[0, 2:8, 2:8] = 1
    truth[0, 10:18, 10:18] = 2
    pred = np.zeros_like(truth)
    pred[0, 2:8, 2:7] = 5  # IoU 5/6 with cell 1
    pred[0, 0:2, 15:20] = 6  # a false positive; cell 2 missed
    s = score(pred, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1) and s["f1"] == 0.5
    assert s["mean_iou"] == pytest.approx(5 / 6)


def test_evaluate_json_with_movie_counts(capsys):
    # the bundled model on 2 tiny held-out movies, no drifting movies, no volumes: the figures and
    # the movie-resampled intervals of the medians come back as one JSON line
    assert main(["evaluate", "--movies", "2", "--frames", "2", "--size", "64", "--leaving-movies", "0",
                 "--volumes", "0", "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["n_leaving_objects"] == 0 and m["n_volume_objects"] == 0 and m["n_click_objects"] > 0
    assert m["single_click_iou_lo"] <= m["single_click_iou"] <= m["single_click_iou_hi"]
    assert m["propagated_iou_lo"] <= m["propagated_iou"] <= m["propagated_iou_hi"]
