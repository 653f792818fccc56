"""Data: image folders, CommonCatalog shards, COCO captions, the per-step batch transform, and `prepare`'s
licences, manifest and split (on fake extracted packages: no apt-get here)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onedc_lib.data import prepare as prep
from onedc_lib.data.coco import CocoCaptions
from onedc_lib.data.commoncatalog import CommonCatalog
from onedc_lib.data.folders import CorruptImageWarning, ImageFolder, decode_image_bytes
from onedc_lib.data.transforms import (BatchCollate, StepBatchSampler, TrainTransformConfig, batch_transform,
                                       center_crop_transform, choose_branch, make_train_loader, step_generator)
from onedc_lib.image_io import ImageError


def smooth(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 [H, W, 3] picture with structure at every scale (random 6x6 colours, bicubic up), unlike noise."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def encoded(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ image folders
def test_image_folder_is_recursive_with_captions_and_skips_a_corrupt_file(tmp_path):
    save(tmp_path / "a.png", smooth(10, 12, 1))
    save(tmp_path / "sub" / "b.jpg", smooth(20, 16, 2))
    (tmp_path / "sub" / "b.txt").write_text("  a photo of b\n", encoding="utf-8")
    save(tmp_path / "sub" / "deeper" / "c.webp", smooth(8, 8, 3))
    save(tmp_path / ".hidden" / "x.png", smooth(8, 8, 4))  # hidden folders are not data
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.md").write_text("not an image")
    with pytest.warns(CorruptImageWarning, match="bad.jpg"):
        data = ImageFolder(tmp_path)
    assert data.skipped == 1 and data.skipped_files == [str(tmp_path / "bad.jpg")]
    assert [p.relative_to(tmp_path).as_posix() for p in data.files] == ["a.png", "sub/b.jpg", "sub/deeper/c.webp"]
    image, caption = data[1]
    assert image.shape == (3, 20, 16) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert caption == "a photo of b" and data[0][1] == "" and data[-1][0].shape == (3, 8, 8)
    with pytest.raises(IndexError):
        data[3]


def test_image_folder_pixels_broken_after_a_good_header(tmp_path):
    save(tmp_path / "a.png", smooth(16, 16, 1))
    good = encoded(smooth(64, 64, 2), "PNG")
    (tmp_path / "b.png").write_bytes(good[: len(good) // 2])  # header fine, pixel data cut
    save(tmp_path / "c.png", smooth(12, 12, 3))
    data = ImageFolder(tmp_path)
    assert len(data) == 3 and data.skipped == 0
    with pytest.warns(CorruptImageWarning, match="b.png"):
        image, _ = data[1]  # the next readable item instead, the same on every run
    assert image.shape == (3, 12, 12) and data.skipped == 1
    with pytest.raises(ImageError, match="b.png"):
        ImageFolder(tmp_path, on_error="raise")[1]
    with pytest.warns(CorruptImageWarning):
        assert len(ImageFolder(tmp_path, check="decode")) == 2


def test_decode_image_bytes_matches_load_image_rules():
    rgba = np.dstack([smooth(6, 5, 1), np.zeros((6, 5), np.uint8)])  # fully transparent: white
    assert torch.equal(decode_image_bytes(encoded(rgba, "PNG")), torch.ones(3, 6, 5))
    with pytest.raises(ImageError, match="row 3"):
        decode_image_bytes(b"junk", "row 3")


# --------------------------------------------------------------------------------------------- CommonCatalog
def _hf_metadata(image_feature: dict) -> dict:
    features = {"jpg": image_feature, "blip2_caption": {"dtype": "string", "_type": "Value"}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_shard(path: Path, images: list[bytes | None], captions: list[str | None], struct: bool = False) -> Path:
    """A shard as `datasets` writes it: the Arrow IPC streaming format with its `huggingface` schema metadata;
    `jpg` plain binary (Value("binary")) or the {bytes, path} struct of datasets.Image()."""
    import pyarrow as pa

    if struct:
        jpg = pa.array([{"bytes": b, "path": None} for b in images],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        meta = _hf_metadata({"_type": "Image"})
    else:
        jpg = pa.array(images, type=pa.binary())
        meta = _hf_metadata({"dtype": "binary", "_type": "Value"})
    table = pa.table({"jpg": jpg, "blip2_caption": pa.array(captions, type=pa.string())}).replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=2):  # several record batches, as datasets writes them
            writer.write_batch(batch)
    return path


def test_commoncatalog_arrow_shards(tmp_path):
    a, b, c = smooth(16, 24, 1), smooth(20, 20, 2), smooth(8, 12, 3)
    write_shard(tmp_path / "shards" / "cc-train-00000-of-00002.arrow", [encoded(a), encoded(b), b"broken"],
                ["a bird on a branch", " a lake ", "broken"])
    write_shard(tmp_path / "shards" / "cc-train-00001-of-00002.arrow", [encoded(c, "PNG")], [None], struct=True)
    write_shard(tmp_path / "shards" / "cache-0123abcd.arrow", [encoded(a)], ["a map() cache"])  # left out
    data = CommonCatalog(tmp_path / "shards")
    assert len(data) == 4 and [p.name for p in data.shards] == ["cc-train-00000-of-00002.arrow",
                                                                "cc-train-00001-of-00002.arrow"]
    image, caption = data[0]
    assert image.shape == (3, 16, 24) and caption == "a bird on a branch"
    assert np.abs(image.permute(1, 2, 0).numpy() * 255 - a).mean() < 4  # JPEG at quality 95
    assert data[1][1] == "a lake"
    image, caption = data[3]  # struct column, PNG: exact; no caption
    assert caption == "" and np.array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), c)
    with pytest.warns(CorruptImageWarning, match="row 2"):
        image, _ = data[2]  # undecodable: the next row instead
    assert image.shape == (3, 8, 12) and data.skipped == 1
    copy = pickle.loads(pickle.dumps(data))  # what a DataLoader worker gets: shards opened again there
    assert torch.equal(copy[0][0], data[0][0])
    with pytest.raises(ValueError, match="no field image"):
        CommonCatalog(tmp_path / "shards" / "cc-train-00000-of-00002.arrow", image_field="image")


def test_commoncatalog_reads_what_datasets_writes(tmp_path):
    import datasets  # a test dependency (missing: the test fails)
    a, b = smooth(16, 16, 1), smooth(12, 20, 2)
    features = datasets.Features({"jpg": datasets.Image(), "blip2_caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"jpg": [encoded(a), encoded(b, "PNG")], "blip2_caption": ["one", "two"]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "saved"), max_shard_size="1KB")
    ds.to_parquet(str(tmp_path / "parquet" / "train-0.parquet"))
    for source in (tmp_path / "saved", tmp_path / "parquet"):
        data = CommonCatalog(source)
        assert len(data) == 2 and [data[i][1] for i in range(2)] == ["one", "two"]
        assert data[1][0].shape == (3, 12, 20)
        assert np.array_equal((data[1][0] * 255).round().byte().permute(1, 2, 0).numpy(), b)


# ----------------------------------------------------------------------------------------------------- COCO
def test_coco_captions(tmp_path):
    save(tmp_path / "val2017" / "000000000139.jpg", smooth(30, 40, 1))
    save(tmp_path / "val2017" / "000000000285.jpg", smooth(48, 36, 2))
    annotations = {
        "info": {"description": "tiny"}, "licenses": [],
        "images": [{"id": 285, "file_name": "000000000285.jpg", "height": 48, "width": 36},
                   {"id": 139, "file_name": "000000000139.jpg", "height": 30, "width": 40},
                   {"id": 632, "file_name": "000000000632.jpg", "height": 10, "width": 10}],
        "annotations": [{"id": 9, "image_id": 285, "caption": "A bear in the grass. "},
                        {"id": 3, "image_id": 285, "caption": "A brown bear."},
                        {"id": 5, "image_id": 139, "caption": "A living room."}],
    }
    (tmp_path / "captions_val2017.json").write_text(json.dumps(annotations))
    with pytest.warns(CorruptImageWarning, match="000000000632.jpg"):
        data = CocoCaptions(tmp_path / "val2017", tmp_path / "captions_val2017.json")
    assert data.skipped == 1 and data.ids == [139, 285] and len(data) == 2
    image, caption = data[1]
    assert image.shape == (3, 48, 36) and caption == "A bear in the grass."  # first in the file's order
    assert data.captions[285] == ["A bear in the grass.", "A brown bear."]
    with pytest.warns(CorruptImageWarning):
        cropped = CocoCaptions(tmp_path / "val2017", tmp_path / "captions_val2017.json",
                               transform=center_crop_transform(32))
    assert [tuple(cropped[i][0].shape) for i in range(2)] == [(3, 32, 32), (3, 32, 32)]  # 30x40 upscaled first
    with pytest.raises(ValueError, match="not a COCO captions file"):
        CocoCaptions(tmp_path / "val2017", tmp_path / "val2017" / "000000000139.jpg")


# ------------------------------------------------------------------------------------------------ transforms
NANO = TrainTransformConfig(crop=16, big_crop=32)


def images(n: int = 8) -> list[torch.Tensor]:
    sizes = [(40, 50), (32, 32), (20, 60), (64, 48), (10, 12), (33, 90), (70, 40), (45, 45)]
    return [torch.from_numpy(smooth(*sizes[i % len(sizes)], seed=i).copy()).permute(2, 0, 1).float() / 255
            for i in range(n)]


@pytest.mark.parametrize("branch, shape", [("resize", (8, 3, 16, 16)), ("crop", (8, 3, 16, 16)),
                                           ("big_crop", (2, 3, 32, 32))])
def test_batch_transform_shapes_per_branch(branch, shape):
    out, chosen = batch_transform(images(), NANO, torch.Generator().manual_seed(0), branch=branch)
    assert chosen == branch and tuple(out.shape) == shape and out.is_contiguous()
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1


def test_big_crop_batch_cut_rounds_up_and_keeps_one():
    for n, kept in ((8, 2), (9, 3), (3, 1), (1, 1)):
        out, _ = batch_transform(images(n), NANO, torch.Generator().manual_seed(0), branch="big_crop")
        assert out.shape[0] == kept


def test_small_images_are_upscaled_so_the_big_crop_fits():
    tiny = torch.rand(3, 5, 9, generator=torch.Generator().manual_seed(1))
    out, _ = batch_transform([tiny], NANO, torch.Generator().manual_seed(0), branch="big_crop")
    assert out.shape == (1, 3, 32, 32)
    # "exact": the short side of every image becomes big_crop, so a 32 x 64 image is cropped, not scaled
    wide = torch.rand(3, 64, 128, generator=torch.Generator().manual_seed(2))
    exact = TrainTransformConfig(crop=16, big_crop=32, resize_mode="exact", flip_p=0.0)
    out, _ = batch_transform([wide], exact, torch.Generator().manual_seed(0), branch="big_crop")
    assert out.shape == (1, 3, 32, 32)


def test_batch_transform_is_a_function_of_the_generator():
    first = [batch_transform(images(), NANO, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert first[0][1] == first[1][1] and torch.equal(first[0][0], first[1][0])
    outs = {batch_transform(images(), NANO, torch.Generator().manual_seed(s))[0].sum().item() for s in range(6)}
    assert len(outs) > 1
    g = step_generator(seed=3, step=10)
    assert torch.equal(g.get_state(), step_generator(3, 10).get_state())
    assert not torch.equal(g.get_state(), step_generator(3, 11).get_state())


def test_branch_probabilities_and_config_checks():
    g = torch.Generator().manual_seed(0)
    counts = {b: 0 for b in ("resize", "crop", "big_crop")}
    for _ in range(4000):
        counts[choose_branch(NANO, g)] += 1
    assert abs(counts["resize"] / 4000 - 0.2) < 0.03 and abs(counts["crop"] / 4000 - 0.5) < 0.03
    assert TrainTransformConfig.scaled(128) == TrainTransformConfig(crop=128, big_crop=256)
    with pytest.raises(ValueError, match="sum to 1"):
        TrainTransformConfig(p_resize=0.5)
    with pytest.raises(ValueError, match="crop <= big_crop"):
        TrainTransformConfig(crop=64, big_crop=32)


class _Items(torch.utils.data.Dataset):
    def __init__(self):
        self.images = images(10)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], f"caption {i}"


def test_train_loader_resumes_bit_exactly_with_workers():
    data = _Items()
    full = list(make_train_loader(data, NANO, batch_size=4, seed=5, num_steps=6))
    assert [b.step for b in full] == list(range(6))
    for b in full:
        assert b.images.shape[0] == len(b.captions) == (1 if b.branch == "big_crop" else 4)
    resumed = list(make_train_loader(data, NANO, batch_size=4, seed=5, start_step=3, num_steps=6, num_workers=2))
    for a, b in zip(full[3:], resumed, strict=True):
        assert a.step == b.step and a.branch == b.branch and a.captions == b.captions
        assert torch.equal(a.images, b.images)
    # the index stream: per-epoch permutations, batches wrap into the next epoch
    sampler = StepBatchSampler(10, 4, seed=5)
    stream = [i for s in range(5) for i in sampler.indices(s)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    # direct use with a generator
    batch = BatchCollate(NANO)([data[0], data[1]], torch.Generator().manual_seed(0))
    assert batch.step == -1 and batch.images.shape[1:] in ((3, 16, 16), (3, 32, 32))


# ------------------------------------------------------------------------------------------------- prepare
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake-wallpapers

Files: *
Copyright: 2020 Wallpaper Team
License: GPL-2+

Files: 20.04/a_by_Ann.jpg
       20.04/e_small.png
Copyright: Ann Example, 2019
License: CC-BY-4.0

Files: backgrounds/b.png
Copyright: 2021, Bob
           2022, Bea
License: CC0-1.0

Files: backgrounds/d.jpg
Copyright: Dee
License: CC-BY-NC-SA-4.0

Files: debian/*
Copyright: 2023 Packager
License: Expat

License: GPL-2+
 The GPL text.
"""


def fake_package(root: Path) -> prep.PackageSource:
    """An extracted package: files as installed, its copyright, a Plasma-style wallpaper with sizes and a link."""
    bg = root / "usr/share/backgrounds"
    save(bg / "a_by_Ann.jpg", smooth(120, 180, 1), quality=95)
    rgba = np.dstack([smooth(100, 100, 2), np.full((100, 100), 128, np.uint8)])
    save(bg / "b.png", rgba)
    save(bg / "d.jpg", smooth(90, 90, 4))  # non-free
    save(bg / "e_small.png", np.asarray(Image.fromarray(smooth(120, 180, 1)).resize((90, 60), Image.LANCZOS)))
    wall = root / "usr/share/wallpapers/Lake"
    save(wall / "contents/images/1600x1000.jpg", smooth(100, 160, 5))
    save(wall / "contents/images/800x500.jpg", smooth(50, 80, 5))
    os.symlink("1600x1000.jpg", wall / "contents/images/1280x800.jpg")
    save(wall / "contents/screenshot.jpg", smooth(20, 32, 5))
    (wall / "metadata.json").write_text(json.dumps({"KPlugin": {"Id": "Lake", "License": "CC-BY-SA-4.0",
                                                                "Authors": [{"Name": "Lee"}]}}))
    doc = root / "usr/share/doc/fake-wallpapers"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    save(doc / "logo.png", smooth(8, 8, 9))  # under usr/share/doc: never data
    return prep.PackageSource("fake-wallpapers", "1.0-1", root)


def test_dep5_parsing_and_matching():
    paragraphs = prep.parse_dep5(COPYRIGHT)
    assert [p.license for p in paragraphs] == ["GPL-2+", "CC-BY-4.0", "CC0-1.0", "CC-BY-NC-SA-4.0", "Expat"]
    assert paragraphs[2].copyright == "2021, Bob 2022, Bea"
    match = lambda path: prep.dep5_match(paragraphs, path).license  # noqa: E731
    assert match("usr/share/backgrounds/a_by_Ann.jpg") == "CC-BY-4.0"  # the file name of a one-file glob
    assert match("usr/share/backgrounds/e_small.png") == "CC-BY-4.0"  # a continuation line
    assert match("usr/share/backgrounds/b.png") == "CC0-1.0"  # a tail of the installed path
    assert match("usr/share/wallpapers/Lake/contents/images/1600x1000.jpg") == "GPL-2+"  # Files: *
    assert prep.dep5_match(paragraphs[1:], "usr/share/backgrounds/other.jpg") is None


@pytest.mark.parametrize("name, free", [
    ("CC-BY-SA-4.0", True), ("CC0-1.0", True), ("GPL-2+", True), ("LGPLv3", True), ("public-domain", True),
    ("Expat", True), ("CC-BY-NC-4.0", False), ("CC-BY-ND-4.0", False), ("CC-BY-NC-SA-3.0", False),
    ("", None), ("unknown", None), ("GPL-2+ or CC-BY-NC-4.0", True), ("CC-BY-4.0 and CC-BY-ND-4.0", False)])
def test_license_is_free(name, free):
    assert prep.license_is_free(name) is free


def test_split_is_fixed_by_source_name():
    assert prep.split_of("scikit-image/astronaut") == "test"  # the demo's photographs
    ids = [f"pkg/image{i}" for i in range(2000)]
    splits = [prep.split_of(i) for i in ids]
    assert splits == [prep.split_of(i) for i in ids]
    assert 0.75 < splits.count("train") / 2000 < 0.85 and 0.07 < splits.count("test") / 2000 < 0.13
    assert prep.target_size(4352, 2448, 512) == (910, 512) and prep.target_size(300, 451, 512) == (300, 451)


def test_prepare_on_fake_packages(tmp_path):
    package = fake_package(tmp_path / "extracted")
    out = tmp_path / "out"
    logs: list[str] = []
    manifest = prep.prepare(out, short_side=48, sources=[package], skimage_samples=["chelsea"], reference=None,
                            log=logs.append)
    files = {f["source_id"]: f for f in manifest["files"]}
    assert set(files) == {"fake-wallpapers/a_by_Ann", "fake-wallpapers/b", "fake-wallpapers/Lake",
                          "scikit-image/chelsea"}
    for f in files.values():
        assert f["split"] == prep.split_of(f["source_id"]) and f["file"].startswith(f["split"] + "/")
        data = (out / f["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
        with Image.open(out / f["file"]) as image:
            assert image.mode == "RGB" and image.size == (f["width"], f["height"]) and min(image.size) == 48
    assert files["scikit-image/chelsea"]["split"] == "test" and files["scikit-image/chelsea"]["license"] == "CC0"
    ann = files["fake-wallpapers/a_by_Ann"]
    assert (ann["license"], ann["copyright"], ann["width"], ann["height"]) == ("CC-BY-4.0", "Ann Example, 2019",
                                                                               72, 48)
    assert ann["original_path"] == "usr/share/backgrounds/a_by_Ann.jpg" and ann["source_version"] == "1.0-1"
    lake = files["fake-wallpapers/Lake"]
    assert lake["original_path"].endswith("images/1600x1000.jpg") and lake["original_width"] == 160
    assert (lake["license"], lake["upstream_license"], lake["upstream_author"]) == ("GPL-2+", "CC-BY-SA-4.0", "Lee")
    with Image.open(out / files["fake-wallpapers/b"]["file"]) as image:  # alpha composited on white
        assert np.asarray(image).min() >= 120
    reasons = {Path(e["original_path"]).name: e["reason"] for e in manifest["excluded"]}
    assert "not free" in reasons["d.jpg"] and reasons["e_small.png"].startswith("near-duplicate of")
    assert reasons["800x500.jpg"].startswith("another size of") and "preview" in reasons["screenshot.jpg"]
    assert "1280x800.jpg" not in reasons and "logo.png" not in reasons
    assert manifest["complete"] and manifest["totals"]["files"] == 4
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert (out / "licenses" / "fake-wallpapers.copyright").read_text() == COPYRIGHT

    # idempotent: a second run rewrites no image and gives the same manifest
    mtimes = {f: (out / f).stat().st_mtime_ns for f in (f["file"] for f in manifest["files"])}
    stale = save(out / "train" / "left_over.png", smooth(8, 8, 0))
    again = prep.prepare(out, short_side=48, sources=[package], skimage_samples=["chelsea"], reference=None,
                         log=logs.append)
    assert again == manifest and not stale.exists()
    assert {f: (out / f).stat().st_mtime_ns for f in mtimes} == mtimes

    # checked against a reference manifest
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(manifest))
    prep.prepare(out, short_side=48, sources=[package], skimage_samples=["chelsea"], reference=reference,
                 log=logs.append)
    tampered = json.loads(json.dumps(manifest))
    tampered["files"][0]["pixels_sha256"] = "0" * 64
    tampered["files"][1]["split"] = "val" if tampered["files"][1]["split"] != "val" else "train"
    reference.write_text(json.dumps(tampered))
    with pytest.raises(prep.ReferenceMismatch, match="pixels_sha256") as error:
        prep.prepare(out, short_side=48, sources=[package], skimage_samples=["chelsea"], reference=reference,
                     log=logs.append)
    assert "split" in str(error.value)


def test_prepare_resumes_after_an_interruption(tmp_path, monkeypatch):
    package = fake_package(tmp_path / "extracted")
    out = tmp_path / "out"
    real_convert, calls = prep.convert, []

    def failing_convert(candidate, short_side):
        calls.append(candidate.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_convert(candidate, short_side)

    monkeypatch.setattr(prep, "convert", failing_convert)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(out, short_side=48, sources=[package], skimage_samples=False, reference=None, log=lambda s: None)
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["files"]) == 1
    first = out / partial["files"][0]["file"]
    mtime = first.stat().st_mtime_ns
    assert not [p for p in out.rglob("*.tmp")]  # atomic writes leave no partial file
    monkeypatch.setattr(prep, "convert", real_convert)
    done = prep.prepare(out, short_side=48, sources=[package], skimage_samples=False, reference=None,
                        log=lambda s: None)
    assert done["complete"] and len(done["files"]) == 3 and first.stat().st_mtime_ns == mtime


def test_committed_nano_manifest_is_consistent():
    """The committed split: every image in the split its source name gives, each source in one split only, free
    licences, PNG short sides at the manifest's size (or the original's, when smaller)."""
    path = prep.REFERENCE_MANIFEST
    if not path.is_file():
        pytest.skip("no committed nano_manifest.json")
    assert path.stat().st_size < 200_000
    manifest = json.loads(path.read_text(encoding="utf-8"))
    assert manifest["format"] == prep.MANIFEST_FORMAT and manifest["complete"]
    seen: dict[str, str] = {}
    for f in manifest["files"]:
        assert f["split"] == prep.split_of(f["source_id"]) and f["file"].startswith(f["split"] + "/")
        assert seen.setdefault(f["source_id"], f["split"]) == f["split"]
        assert prep.license_is_free(f["license"]) is True and f["kind"] == "photograph"
        reduction = prep.JPEG_MIN_REDUCTION if f["resample"] == "area" else 1  # pinned JPEGs shrink >= x2
        assert min(f["width"], f["height"]) == min(manifest["short_side"],
                                                   min(f["original_width"], f["original_height"]) // reduction)
    assert len({f["pixels_sha256"] for f in manifest["files"]}) == len(manifest["files"])
    assert {f["split"] for f in manifest["files"]} == {"train", "val", "test"}


def test_cli_prepare_refuses_a_bad_size(capsys):
    from onedc_lib.cli import main

    assert main(["prepare", "--short-side", "0", "--out", "unused"]) == 2
    assert "--short-side" in capsys.readouterr().err
