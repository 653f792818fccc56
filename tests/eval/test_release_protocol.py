"""The release's evaluation protocol (spec section 8) in the runner: the release's rate (its file: 16-byte header,
its y stream, z; the z-only model: 14 bits per 64x64 block), FID/KID patches on both grids with their counts,
checked against hand computations and the release's coding tables."""
import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from onedc_lib.entropy.release_format import gaussian_tables
from onedc_lib.entropy.tables import LOG_SCALE_MIN, LOG_SCALE_STEP
from onedc_lib.eval.runner import evaluate
from onedc_lib.weights import build_model


def _write(folder: Path, sizes: dict) -> Path:
    from onedc_lib.data.samples import sample_image
    from onedc_lib.image_io import save_image

    folder.mkdir(parents=True, exist_ok=True)
    for name, (h, w) in sizes.items():
        save_image(sample_image(name)[:, :h, :w], folder / f"{name}.png")
    return folder


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def models():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: build_model(name) for name in ("nano_zonly", "nano_q1")}


@pytest.mark.parametrize("h, w, blocks", [(64, 96, 2), (130, 70, 6), (64, 64, 1)])
def test_zonly_release_rate_is_14_bits_per_block(models, h, w, blocks):
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h))
    assert models["nano_zonly"].release_bits(x) == 14 * blocks  # ceil(h/64) * ceil(w/64) blocks, no file


def test_y_model_release_rate_is_header_z_and_its_coded_y(models):
    """16-byte header + ceil(14 * blocks / 8) z bytes + a y stream whose size is the ideal code length of the
    symbols under the release's tables (indexes by the spec's formula in float32, here in numpy) plus the
    coder's few bytes of flag and final state."""
    model = models["nano_q1"]
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    bits = model.release_bits(x)
    _, enc = model._entropy_inputs(x)
    symbols = np.concatenate([s.detach().numpy().reshape(-1) for s in enc.symbols]).astype(np.int64)
    scales = np.concatenate([s.detach().numpy().reshape(-1) for s in enc.scales]).astype(np.float32)
    index = np.floor((np.log(np.maximum(scales, np.float32(1e-5))) - np.float32(LOG_SCALE_MIN))
                     / np.float32(LOG_SCALE_STEP))
    index = np.clip(index, 0, 255).astype(np.int64)
    cdf, length, offset = gaussian_tables()
    pos = symbols - offset[index]
    escape = length[index] - 2  # the last coded bin of each table is the escape (the random model has a few)
    outside = (pos < 0) | (pos > escape)
    pos = np.where(outside, escape, pos)
    freq = cdf[index, pos + 1] - cdf[index, pos]
    ideal = float(-np.log2(freq / 65536.0).sum())  # an escape's raw bits come on top: >= 4 each, < 64 each
    z_bytes = math.ceil(14 * 2 / 8)
    y_bits = bits - 8 * (16 + z_bytes)
    assert bits % 8 == 0 and ideal + 4 * outside.sum() <= y_bits <= ideal + 64 * outside.sum() + 8 * 8


def test_runner_counts_the_release_rate(tmp_path):
    images = _write(tmp_path / "images", {"astronaut": (64, 96), "coffee": (70, 130)})
    kwargs = dict(metrics=("psnr",), fid=False, progress=False, protocol="release")
    onedc = evaluate("onedc:nano_zonly,nano_q1", images, tmp_path / "out", **kwargs)
    jpeg = evaluate("jpeg", images, tmp_path / "out", qualities=(30,), **kwargs)
    assert onedc["protocol"]["name"] == "release" and "14 bits" in onedc["protocol"]["bpp_release"]
    blocks = {"astronaut": 1 * 2, "coffee": 2 * 3}
    for row in _rows(tmp_path / "out" / f"{onedc['codec']}.csv"):
        h, w = int(row["height"]), int(row["width"])
        size = (tmp_path / "out" / row["file"]).stat().st_size
        assert float(row["bpp_file"]) == pytest.approx(8 * size / (h * w))
        assert float(row["bpp"]) == pytest.approx(int(row["release_bits"]) / (h * w))
        if row["rate"] == "nano_zonly":
            assert int(row["release_bits"]) == 14 * blocks[row["name"]]
        else:  # the release's file: header and z at least, and less than ours (no magic, id, CRCs)
            assert 8 * (16 + math.ceil(14 * blocks[row["name"]] / 8)) < int(row["release_bits"]) < 8 * size
    for row in _rows(tmp_path / "out" / "jpeg.csv"):  # a classical codec's file counts whole
        size = (tmp_path / "out" / row["file"]).stat().st_size
        assert int(row["release_bits"]) == 8 * size
        assert float(row["bpp"]) == float(row["bpp_file"]) == pytest.approx(8 * size / (int(row["height"]) * int(
            row["width"])))
    point = onedc["points"][0]
    assert point["bpp"] == pytest.approx(np.mean([14 * 2 / (64 * 96), 14 * 6 / (70 * 130)]))
    with pytest.raises(ValueError, match="columns"):  # a CSV of the other protocol is not resumed into
        evaluate("jpeg", images, tmp_path / "out", qualities=(30,), metrics=("psnr",), fid=False, progress=False)
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate("jpeg", images, tmp_path / "out", protocol="paper")


def test_release_protocol_resumes(tmp_path, monkeypatch):
    from onedc_lib.models.onedc import OneDC

    images = _write(tmp_path / "images", {"chelsea": (64, 64)})
    kwargs = dict(metrics=("psnr",), fid=False, progress=False, protocol="release")
    first = evaluate("onedc:nano_q1", images, tmp_path, **kwargs)
    calls = []
    monkeypatch.setattr(OneDC, "release_bits", lambda self, x: calls.append(1))
    second = evaluate("onedc:nano_q1", images, tmp_path, **kwargs)
    assert calls == [] and second["points"][0]["bpp"] == first["points"][0]["bpp"]


def test_patch_counts_on_both_grids(tmp_path, metric_cache, monkeypatch):
    """256x384: grid 1 holds 1 patch, grid 2 none (a side < 384). 384x640: grid 1 holds 1 x 2, grid 2 (the image
    from (128, 128), 256x512) 1 x 2: 4. FID gets 5 patch features per side (a cheap stand-in for the minute-long
    square root; test_metrics checks FID itself)."""
    import cleanfid.fid

    images = _write(tmp_path / "images", {"astronaut": (256, 384), "rocket": (384, 640)})
    seen = []
    monkeypatch.setattr(cleanfid.fid, "fid_from_feats", lambda a, b: seen.append((a.shape, b.shape)) or 1.0)
    summary = evaluate("jpeg", images, tmp_path / "out", metrics=("psnr",), qualities=(50,), cache_dir=metric_cache,
                       progress=False, protocol="release")
    (point,) = summary["points"]
    assert point["fid_kid"]["patches_per_image"] == {"astronaut": 1, "rocket": 4}
    assert point["fid_kid"]["patches"] == 5 and seen == [((5, 2048), (5, 2048))]
    assert point["kid"] is None and "KID needs" in point["fid_kid"]["kid_missing"]
    grid = summary["protocol"]["patch_grid"]
    assert (grid["patch"], grid["grid2_offset"], grid["grid2_min_side"]) == (256, 128, 384)


def test_release_checkpoint_folders_go_to_the_release_loader(tmp_path):
    """A folder with the release's two files and no config.json is a release checkpoint: its loader checks the
    files (before building a model of a billion parameters) and says what is wrong with them."""
    from onedc_lib.weights import WeightsError

    images = _write(tmp_path / "images", {"chelsea": (64, 64)})
    (tmp_path / "release").mkdir()
    (tmp_path / "vae").mkdir()
    for name in ("model.safetensors", "model_1.safetensors"):
        (tmp_path / "release" / name).write_bytes(b"")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        evaluate(f"onedc:{tmp_path / 'release'}", images, tmp_path / "out", metrics=(), fid=False,
                 progress=False, protocol="release", vae=tmp_path / "vae", zonly=[tmp_path / "release"])


def test_cli_eval_protocol(tmp_path, capsys):
    import json

    from onedc_lib.cli import main

    images = _write(tmp_path / "images", {"chelsea": (64, 64)})
    assert main(["eval", "--codec", "jpeg", "--images", str(images), "--out", str(tmp_path / "out"), "--qualities",
                 "30", "--metrics", "psnr", "--no-fid", "--protocol", "release"]) == 0
    summary = json.loads((tmp_path / "out" / "jpeg.json").read_text())
    assert summary["protocol"]["name"] == "release" and summary["command"].endswith("--protocol release")
    (row,) = _rows(tmp_path / "out" / "jpeg.csv")
    assert int(row["release_bits"]) == 8 * (tmp_path / "out" / row["file"]).stat().st_size
