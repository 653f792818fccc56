"""The evaluation runner and `onedc eval`: files, CSV rows, summaries that bdrate reads, resume, FID patches."""
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onedc_lib.cli import main
from onedc_lib.eval import bdrate
from onedc_lib.eval.baselines import BASELINES
from onedc_lib.eval.runner import CSV_COLUMNS, evaluate, list_images, parse_codec

SHORT_JPEG = (10, 30, 50, 70)
SHORT_WEBP = (20, 40, 60, 80)


def _write_crops(folder: Path, size: tuple[int, int], names=("astronaut", "coffee", "chelsea")) -> Path:
    from onedc_lib.data.samples import sample_image
    from onedc_lib.image_io import save_image

    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    for name in names:
        save_image(sample_image(name)[:, 20:20 + h, 40:40 + w], folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three 64x96 crops of the sample photographs."""
    return _write_crops(tmp_path_factory.mktemp("images"), (64, 96))


@pytest.fixture(scope="module")
def jpeg_run(images, tmp_path_factory, metric_cache):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("jpeg")
    return out, evaluate("jpeg", images, out, qualities=SHORT_JPEG, cache_dir=metric_cache, progress=False)


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_baseline_files_rows_and_summary(jpeg_run, images):
    out, summary = jpeg_run
    columns, rows = _rows(out / "jpeg.csv")
    assert tuple(columns) == CSV_COLUMNS
    assert len(rows) == len(SHORT_JPEG) * 3
    assert [int(r["rate"]) for r in rows[::3]] == list(SHORT_JPEG)
    for r in rows:
        path = out / r["file"]
        assert path.name == f"{r['name']}_q{r['rate']}.jpg"
        data = path.read_bytes()
        assert int(r["bytes"]) == len(data) == path.stat().st_size
        assert (int(r["height"]), int(r["width"])) == (64, 96)
        assert float(r["bpp"]) == pytest.approx(8 * len(data) / (64 * 96), rel=1e-12)
        recon = np.asarray(Image.open(out / "jpeg" / "recon" / f"{path.stem}.png"))
        assert np.array_equal(recon, BASELINES["jpeg"].decode(data))
        assert r["ms_ssim"] == ""  # below 161 px: missing, never a number on fewer scales
        assert 10 < float(r["psnr"]) < 60 and 0 <= float(r["lpips"]) < 1 and 0 <= float(r["dists"]) < 1
        assert float(r["enc_s"]) > 0 and float(r["dec_s"]) > 0

    assert summary == json.loads((out / "jpeg.json").read_text())
    assert summary["codec"] == "jpeg" and summary["label"] == BASELINES["jpeg"].label
    points = summary["points"]
    assert [p["rate"] for p in points] == list(SHORT_JPEG)
    for p, q in zip(points, SHORT_JPEG):
        mine = [r for r in rows if int(r["rate"]) == q]
        assert p["bpp"] == pytest.approx(np.mean([float(r["bpp"]) for r in mine]))
        assert p["dists"] == pytest.approx(np.mean([float(r["dists"]) for r in mine]))
        assert p["ms_ssim"] is None and "below 161" in p["ms_ssim_missing"]
        assert p["fid"] is None and p["kid"] is None and p["fid_kid"]["patches"] == 0
        assert "fid_missing" in p["fid_kid"]
    assert np.all(np.diff([p["bpp"] for p in points]) > 0)

    protocol = summary["protocol"]
    for key in ("psnr", "ms_ssim", "lpips", "dists", "fid_kid", "patch_grid", "bpp", "timing", "packages"):
        assert key in protocol
    assert protocol["packages"]["lpips"] == "0.1.4" and protocol["packages"]["clean-fid"]
    from onedc_lib.eval.backbones import read_manifest

    files = read_manifest()["files"]
    assert protocol["weights"]["lpips"]["sha256"] == files["alexnet"]["sha256"]
    assert protocol["weights"]["dists"]["sha256"] == files["vgg16"]["sha256"]
    assert protocol["weights_manifest_sha256"] == {k: v["sha256"] for k, v in files.items()}
    assert "fid_kid" not in protocol["weights"]  # no patches: Inception was not used
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["versions"]["codec"]["libjpeg-turbo"]
    assert summary["device"]["torch_device"] == "cpu" and summary["device"]["torch_threads"] == 1
    assert summary["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", summary["git_commit"])
    assert re.match(r"\d{4}-\d\d-\d\dT", summary["created"])
    assert summary["images"]["names"] == ["astronaut", "chelsea", "coffee"]


def test_summary_and_csv_load_as_rd_points(jpeg_run):
    out, summary = jpeg_run
    for metric in ("psnr", "lpips", "dists"):
        rate_json, value_json = bdrate.load_rd_points(out / "jpeg.json", metric)
        rate_csv, value_csv = bdrate.load_rd_points(out / "jpeg.csv", metric)
        assert len(rate_json) == len(SHORT_JPEG)
        np.testing.assert_allclose(rate_json, rate_csv)
        np.testing.assert_allclose(value_json, value_csv)
    assert bdrate.load_curve(out / "jpeg.json").name == bdrate.load_curve(out / "jpeg.csv").name == "jpeg"
    assert bdrate.load_rd_points(out / "jpeg.json", "ms_ssim")[0].size == 0


def test_bdrate_between_two_summaries(jpeg_run, images, tmp_path, metric_cache, capsys):
    out, _ = jpeg_run
    evaluate("webp", images, tmp_path, metrics=("psnr", "lpips"), fid=False, qualities=SHORT_WEBP,
             cache_dir=metric_cache, progress=False)
    for metric in ("psnr", "lpips"):
        a, b = bdrate.load_rd_points(out / "jpeg.json", metric), bdrate.load_rd_points(tmp_path / "webp.json", metric)
        value = bdrate.bd_rate(*a, *b, higher_is_better=bdrate.higher_is_better(metric), min_overlap=0.0)
        assert math.isfinite(value)
    code = main(["bdrate", str(out / "jpeg.json"), str(tmp_path / "webp.json"), "--metric", "psnr",
                 "--min-overlap", "0"])
    printed = capsys.readouterr().out
    assert code == 0 and math.isfinite(float(printed.split()[0]))


def test_onedc_model_writes_real_files(images, tmp_path, metric_cache):
    from onedc_lib import bitstream
    from onedc_lib.weights import load_model

    with pytest.warns(UserWarning, match="UNTRAINED"):
        summary = evaluate("onedc:nano_q3", images, tmp_path, metrics=("psnr", "lpips"), fid=False,
                           cache_dir=metric_cache, progress=False)
    assert summary["codec"] == "onedc-nano_q3" and summary["kind"] == "onedc"
    assert summary["codec_info"]["models"]["nano_q3"]["untrained_parts"]  # random weights are marked as such
    assert any("UNTRAINED" in w for w in summary["warnings"])
    columns, rows = _rows(tmp_path / "onedc-nano_q3.csv")
    assert columns == ["codec", "rate", "name", "file", "height", "width", "bytes", "payload_bytes", "bpp", "psnr",
                       "lpips", "enc_s", "dec_s"]
    assert len(rows) == 3 and {r["rate"] for r in rows} == {"nano_q3"}
    with pytest.warns(UserWarning):
        model = load_model("nano_q3")
    for r in rows:
        path = tmp_path / r["file"]
        assert path.name == f"{r['name']}_nano_q3.odc"
        container = bitstream.read_file(path, expected_model_id=model.model_id)
        assert int(r["bytes"]) == path.stat().st_size == container.num_bytes
        assert float(r["bpp"]) == pytest.approx(container.bpp) == pytest.approx(8 * path.stat().st_size / (64 * 96))
        decoded = model.decompress(path.read_bytes())[0]
        recon = np.asarray(Image.open(tmp_path / "onedc-nano_q3" / "recon" / f"{path.stem}.png"))
        assert np.array_equal(recon, decoded.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
    (point,) = summary["points"]
    assert point["rate"] == "nano_q3" and point["images"] == 3
    rate, value = bdrate.load_rd_points(tmp_path / "onedc-nano_q3.json", "psnr")
    assert rate.size == 1 and value[0] == pytest.approx(point["psnr"])


def test_resume_keeps_rows_and_redoes_missing_ones(images, tmp_path, metric_cache, monkeypatch):
    kwargs = dict(metrics=("psnr",), fid=False, cache_dir=metric_cache, progress=False)
    first = evaluate("jpeg", images, tmp_path, qualities=(10, 50), **kwargs)
    _, rows_before = _rows(tmp_path / "jpeg.csv")
    calls = []
    original = type(BASELINES["jpeg"]).encode
    monkeypatch.setattr(type(BASELINES["jpeg"]), "encode", lambda self, image, q: calls.append(q) or original(
        self, image, q))
    (tmp_path / "jpeg" / "files" / "coffee_q50.jpg").unlink()  # a lost file is redone
    second = evaluate("jpeg", images, tmp_path, qualities=(10, 50, 90), **kwargs)
    # image by image (astronaut, chelsea, coffee): q10 kept; q90 new (one untimed warm-up encode first); coffee q50
    assert calls == [90, 90, 90, 50, 90]
    _, rows_after = _rows(tmp_path / "jpeg.csv")
    assert rows_after[:2] == rows_before[:2] and len(rows_after) == 9
    assert [p["psnr"] for p in second["points"][:2]] == pytest.approx([p["psnr"] for p in first["points"]])
    with pytest.raises(ValueError, match="columns"):  # other metrics than the CSV's: refused, not mixed
        evaluate("jpeg", images, tmp_path, qualities=(10,), metrics=("psnr", "lpips"), fid=False,
                 cache_dir=metric_cache, progress=False)


def test_fid_kid_on_patches(tmp_path, metric_cache, monkeypatch):
    """Patches of both grids go through Inception (the references once per image, not per rate point) into
    clean-fid's FID; the 2048 x 2048 square root of the real FID takes about a minute on one core, so a cheap
    stand-in receives the features here (test_metrics checks FID itself)."""
    import cleanfid.fid

    from onedc_lib.eval.metrics import InceptionFeatures

    images = _write_crops(tmp_path / "images", (256, 320), names=("astronaut", "coffee"))
    seen, calls = [], []
    monkeypatch.setattr(cleanfid.fid, "fid_from_feats", lambda a, b: seen.append((a.shape, b.shape)) or float(
        np.sum((a.mean(0) - b.mean(0)) ** 2)))
    original = InceptionFeatures.__call__
    monkeypatch.setattr(InceptionFeatures, "__call__", lambda self, x: calls.append(len(x)) or original(self, x))
    summary = evaluate("jpeg", images, tmp_path / "out", metrics=("psnr",), qualities=(5, 60),
                       cache_dir=metric_cache, progress=False)
    assert seen == [((2, 2048), (2, 2048))] * 2 and calls == [1] * 6  # 2 references + 2 x 2 reconstructions
    low, high = summary["points"]
    for p in (low, high):
        assert p["fid_kid"]["patches"] == 2 and p["fid_kid"]["patches_per_image"] == {"astronaut": 1, "coffee": 1}
        assert math.isfinite(p["fid"]) and p["kid"] is None and "KID needs" in p["fid_kid"]["kid_missing"]
    assert low["fid"] > high["fid"] > 0
    assert bdrate.load_rd_points(tmp_path / "out" / "jpeg.json", "fid")[0].size == 2
    assert summary["protocol"]["weights"]["fid_kid"]["sha256"] == summary["protocol"]["weights_manifest_sha256"][
        "inception"]

    calls.clear()  # fewer patches than asked for: reported missing, Inception never runs
    summary = evaluate("jpeg", images, tmp_path / "out2", metrics=("psnr",), qualities=(5,), fid_min_patches=3,
                       cache_dir=metric_cache, progress=False)
    (p,) = summary["points"]
    assert calls == [] and p["fid"] is None and p["kid"] is None and p["fid_kid"]["patches"] == 2
    assert "minimum of 3" in p["fid_kid"]["fid_missing"]


def test_cli_eval(images, tmp_path, metric_cache, capsys):
    code = main(["eval", "--codec", "jpeg", "--images", str(images), "--out", str(tmp_path), "--qualities", "10,50",
                 "--metrics", "psnr", "--no-fid"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "jpeg.csv" in out and len(out.strip().splitlines()) == 4  # header, two points, where the files are
    summary = json.loads((tmp_path / "jpeg.json").read_text())
    assert summary["command"] == (f"onedc eval --codec jpeg --images {images} --out {tmp_path} --metrics psnr "
                                  "--qualities 10,50 --no-fid")
    assert [p["rate"] for p in summary["points"]] == [10, 50]
    assert main(["eval", "--codec", "png", "--images", str(images), "--out", str(tmp_path)]) == 2
    assert "unknown codec" in capsys.readouterr().err
    assert main(["eval", "--codec", "jpeg", "--images", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    assert main(["eval", "--codec", "jpeg", "--images", str(images), "--out", str(tmp_path), "--qualities", "x"]) == 2
    assert main(["eval", "--codec", "jpeg", "--images", str(images), "--out", str(tmp_path), "--metrics",
                 "ssim"]) == 2
    assert "unknown metrics" in capsys.readouterr().err


def test_codec_and_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown codec"):
        parse_codec("bpg")
    with pytest.raises(ValueError, match="0..100"):
        parse_codec("jpeg", qualities=[101])
    with pytest.raises(ValueError, match="list of models"):
        parse_codec("onedc:nano_q3", qualities=[10])
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path)
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "sub/b.png", "a.jpg"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match="two images named 'a'"):
        list_images(tmp_path)
    (tmp_path / "a.jpg").unlink()
    assert [n for n, _ in list_images(tmp_path)] == ["a", "sub/b"]


def test_model_labels_name_a_training_run_by_its_folder(tmp_path):
    from onedc_lib.eval.runner import _model_label

    run = tmp_path / "zonly_run"
    (run / "model").mkdir(parents=True)
    assert _model_label(str(run / "model")) == "model"  # a folder called model, no run around it
    (run / "log.csv").write_text("step,loss\n")
    assert _model_label(str(run / "model")) == "zonly_run"  # OUT/model of the training loop
    assert _model_label(str(run)) == "zonly_run" and _model_label("nano_q3") == "nano_q3"
