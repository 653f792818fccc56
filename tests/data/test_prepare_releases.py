"""`prepare` on packages of other Debian releases: JPEGs found inside .edj themes, the system's mirror read from
its own APT sources, a pinned .deb (a real one built here with dpkg-deb, no network), licences stated outside the
copyright file, the area reduction of JPEGs, and the committed manifest's splits."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onedc_lib.data import debian_release as rel
from onedc_lib.data import prepare as prep
from onedc_lib.data.embedded_jpeg import embedded_jpegs, largest_embedded_jpeg


def picture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colours with structure (random 5x5, bicubic up), so that JPEG keeps it well."""
    small = np.random.default_rng(seed).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def theme(*streams: bytes) -> bytes:
    """An .edj-like archive: a header, a false start of image (FF D8 FF then no segment), the streams between
    other bytes."""
    junk = bytes(range(7, 200, 3))
    return b"Eet\x1e\xe7\x01" + junk + b"\xff\xd8\xff\x00\x11" + junk + junk.join(streams) + junk


# --------------------------------------------------------------------------------------------- embedded JPEGs


def test_embedded_jpegs_are_found_whole():
    small, large = jpeg(picture(8, 8, 1)), jpeg(picture(48, 64, 2))
    # a stream holding another one in an APP1 segment (as an EXIF thumbnail is held) counts once
    payload = b"Exif\x00\x00" + small
    outer = large[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + large[2:]
    assert Image.open(io.BytesIO(outer)).size == (64, 48)
    assert embedded_jpegs(theme(small, outer)) == [small, outer]
    assert embedded_jpegs(b"no pictures here \xff\xd8") == []
    assert embedded_jpegs(small[:-2]) == []  # cut before its end: not a stream


def test_largest_embedded_jpeg(tmp_path):
    small, large = jpeg(picture(8, 8, 1)), jpeg(picture(48, 64, 2))
    (tmp_path / "a.edj").write_bytes(theme(large, small))
    (tmp_path / "b.edj").write_bytes(theme())
    assert largest_embedded_jpeg(tmp_path / "a.edj") == large
    assert largest_embedded_jpeg(tmp_path / "b.edj") is None


# --------------------------------------------------------------------------------------------- APT sources

ONE_LINE = """# deb http://old.example.invalid/debian buster main
deb [arch=amd64] https://vendor.example.invalid/apt stable main
"""
DEB822 = """Types: deb
URIs: http://mirror.example.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def fake_apt(tmp_path: Path, codename: str = "bookworm") -> tuple[Path, Path]:
    apt = tmp_path / "etc/apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(ONE_LINE)
    (apt / "sources.list.d/debian.sources").write_text(DEB822)
    (apt / "sources.list.d/other.list.disabled").write_text("deb http://off.example.invalid/d bookworm main\n")
    os_release = tmp_path / "os-release"
    os_release.write_text(f'PRETTY_NAME="Debian"\nVERSION_CODENAME={codename}\n')
    return apt, os_release


def test_system_mirror_is_read_from_the_apt_sources(tmp_path):
    apt, os_release = fake_apt(tmp_path)
    assert [s.uri for s in rel.system_sources(apt)] == ["https://vendor.example.invalid/apt",
                                                        "http://mirror.example.invalid/debian",
                                                        "http://mirror.example.invalid/debian-security"]
    mirror = rel.system_mirror(apt, os_release)
    assert mirror.uri == "http://mirror.example.invalid/debian"
    assert mirror.signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"
    _, other = fake_apt(tmp_path / "x", codename="trixie")
    with pytest.raises(rel.FetchError, match="trixie"):
        rel.system_mirror(apt, other)


def test_private_apt_configuration(tmp_path):
    apt, os_release = fake_apt(tmp_path)
    options = rel.private_apt_options(tmp_path / "private", "bullseye", rel.system_mirror(apt, os_release))
    settings = dict(o.split("=", 1) for o in options[1::2])
    root = (tmp_path / "private").resolve()
    assert Path(settings["Dir::Etc::SourceList"]).read_text() == (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example.invalid/debian "
        "bullseye main\n")
    assert all(Path(settings[k]).is_relative_to(root) for k in ("Dir::State", "Dir::Cache", "Dir::Etc::SourceParts"))
    assert (root / "state/lists/partial").is_dir() and not any((root / "parts").iterdir())


def test_fetch_checks_the_pinned_hash(tmp_path):
    apt, os_release = fake_apt(tmp_path)
    good, bad = b"the pinned package", b"another package"
    calls = []

    def apt_get(content):
        def run(cmd, cwd):
            calls.append(cmd[-1])
            if cmd[-1].startswith("pkg="):
                (cwd / "pkg_1.0_all.deb").write_bytes(content)
            return ""
        return run

    pinned = hashlib.sha256(good).hexdigest()
    debs = tmp_path / "debs"
    deb = rel.fetch_from_release("pkg", "1.0", "bullseye", pinned, debs, tmp_path / "apt", apt_get(good), apt,
                                 os_release)
    assert deb == debs / "pkg_1.0_all.deb" and deb.read_bytes() == good and calls == ["update", "pkg=1.0"]
    assert rel.fetch_from_release("pkg", "1.0", "bullseye", pinned, debs, tmp_path / "apt", apt_get(bad), apt,
                                  os_release) == deb and len(calls) == 2  # already there: nothing run
    deb.unlink()
    with pytest.raises(rel.FetchError, match="not the pinned"):
        rel.fetch_from_release("pkg", "1.0", "bullseye", pinned, debs, tmp_path / "apt", apt_get(bad), apt,
                               os_release)
    assert sorted(p.name for p in debs.iterdir()) == []


# --------------------------------------------------------------------------------------------- a pinned package

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Theme Team
License: BSD-2-clause

Files: usr/share/backgrounds/fake/unclear.jpg
Copyright: someone
License: see-elsewhere
"""


def build_deb(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A real .deb (dpkg-deb --build) with two themes, three wallpapers, an icon and its copyright file."""
    tree = tmp_path / "tree"
    streams = {"photo": jpeg(picture(48, 64, 3)), "cat": jpeg(picture(40, 60, 4))}
    files = {
        "usr/share/enlightenment/data/backgrounds/Photo.edj": theme(jpeg(picture(12, 16, 3)), streams["photo"]),
        "usr/share/enlightenment/data/backgrounds/Pattern.edj": theme(),
        "usr/share/backgrounds/fake/cat.jpg": streams["cat"],
        "usr/share/backgrounds/fake/art.jpg": jpeg(picture(40, 60, 5)),
        "usr/share/backgrounds/fake/unclear.jpg": jpeg(picture(40, 60, 6)),
        "usr/share/backgrounds/fake/License": b"cat.jpg: CC-BY-SA-3.0, Cat Owner\n",
        "usr/share/icons/fake/icon.png": b"not looked at",
        "usr/share/doc/fake-pics/copyright": COPYRIGHT.encode(),
        "DEBIAN/control": b"Package: fake-pics\nVersion: 0.1-1\nArchitecture: all\nMaintainer: T <t@example.invalid>\n"
                          b"Description: pictures for a test\n",
    }
    for path, data in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    deb = tmp_path / "fake-pics_0.1-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb, streams


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")
def test_prepare_on_a_pinned_package(tmp_path, monkeypatch):
    deb, streams = build_deb(tmp_path)
    spec = prep.PinnedPackage(
        "fake-pics", "0.1-1", "oldstable", hashlib.sha256(deb.read_bytes()).hexdigest(), "fake-pics-0.1",
        ("usr/share/enlightenment/data/backgrounds/*.edj", "usr/share/backgrounds/fake/*"),
        (prep.LicenseNote("*/fake/cat.jpg", "CC-BY-SA-3.0", "Cat Owner", "usr/share/backgrounds/fake/License"),))
    monkeypatch.setitem(prep.NOT_PHOTOGRAPHS, "fake-pics-0.1", ["*/art.jpg"])
    monkeypatch.setitem(prep.FORCED_SPLITS, "fake-pics-0.1/cat", "test")
    out = tmp_path / "out"
    (out / ".cache/debs").mkdir(parents=True)
    shutil.copy(deb, out / ".cache/debs" / deb.name)  # pinned and present: no apt-get runs
    manifest = prep.prepare(out, packages=[spec], skimage_samples=False, reference=None, log=lambda _: None)

    assert manifest["packages"] == {"fake-pics-0.1": {"package": "fake-pics", "version": "0.1-1", "suite": "oldstable",
                                                      "deb_sha256": spec.sha256}}
    files = {f["source_id"]: f for f in manifest["files"]}
    assert set(files) == {"fake-pics-0.1/Photo", "fake-pics-0.1/cat"}
    photo, cat = files["fake-pics-0.1/Photo"], files["fake-pics-0.1/cat"]
    assert photo["original_path"] == "usr/share/enlightenment/data/backgrounds/Photo.edj"
    assert (photo["license"], photo["copyright"]) == ("BSD-2-clause", "2020 Theme Team")
    assert (cat["license"], cat["copyright"], cat["license_file"]) == ("CC-BY-SA-3.0", "Cat Owner",
                                                                       "usr/share/backgrounds/fake/License")
    assert cat["split"] == "test" and cat["file"] == "test/fake-pics-0.1__cat.png"
    assert photo["split"] == prep.split_of("fake-pics-0.1/Photo")
    # JPEGs shrink at least x2 by area: each pixel is the mean of a 2x2 block of the decoded original
    for record, name in ((photo, "photo"), (cat, "cat")):
        original = np.asarray(Image.open(io.BytesIO(streams[name])).convert("RGB"), dtype=np.float64)
        height, width = original.shape[:2]
        assert (record["original_width"], record["original_height"]) == (width, height)
        assert (record["width"], record["height"], record["resample"]) == (width // 2, height // 2, "area")
        blocks = original.reshape(height // 2, 2, width // 2, 2, 3).mean(axis=(1, 3))
        made = np.asarray(Image.open(out / record["file"]), dtype=np.float64)
        assert np.abs(made - blocks).max() <= 1
        assert record["pixels_sha256"] == prep._pixels_sha256(made.astype(np.uint8))

    reasons = {Path(e["original_path"]).name: e["reason"] for e in manifest["excluded"]}
    assert set(reasons) == {"Pattern.edj", "art.jpg", "unclear.jpg"}  # the icon is not a wallpaper
    assert "no readable picture" in reasons["Pattern.edj"] and "not a photograph" in reasons["art.jpg"]
    assert "see-elsewhere" in reasons["unclear.jpg"]
    assert (out / "licenses/fake-pics-0.1.copyright").read_text() == COPYRIGHT
    assert (out / "licenses/fake-pics-0.1.License").read_bytes().startswith(b"cat.jpg: CC-BY-SA-3.0")

    wrong = prep.PinnedPackage("fake-pics", "0.2-1", "oldstable", spec.sha256, "x", ())
    with pytest.raises(prep.PrepareError, match="not fake-pics 0.2-1"):
        prep.extract_pinned(wrong, deb, tmp_path / "x")


# --------------------------------------------------------------------------------------------- committed data


def test_committed_manifest_has_the_pinned_packages():
    """The committed data set (test_data.py checks its splits and licences): its size, its test photographs,
    the pinned packages' hashes, the area reduction of their JPEGs."""
    manifest = json.loads(prep.REFERENCE_MANIFEST.read_text())
    files = manifest["files"]
    assert len(files) >= 110 and sum(f["split"] == "test" for f in files) >= 30
    pinned = {p.label: p for p in prep.PINNED_PACKAGES}
    for label, package in manifest["packages"].items():
        if label in pinned:
            assert (package["version"], package["deb_sha256"]) == (pinned[label].version, pinned[label].sha256)
    for f in files:
        if f["source"] in pinned and Path(f["original_path"]).suffix.lower() in prep.JPEG_SUFFIXES:
            assert f["resample"] == "area" and 2 * f["height"] <= f["original_height"]
    assert set(prep.TEST_PHOTOGRAPHS) <= {f["source_id"] for f in files if f["split"] == "test"}
