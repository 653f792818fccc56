"""Builds the nano training set from photographs that can be had offline: Debian's wallpaper packages and the
colour photographs that scikit-image ships.

    python -m onedc_lib.data.prepare --out out/nano_data        (or: onedc prepare --out out/nano_data)

Packages: the system release's wallpaper packages (SYSTEM_PACKAGES, whatever version it has) and packages of
other Debian releases pinned by version and .deb sha256 (PINNED_PACKAGES: Enlightenment themes, Budgie, LXQt and
GNOME backgrounds), fetched under a private APT configuration that names the system's own mirror with the other
release's suite (debian_release.py; the system's APT state is not touched). A pinned package's wallpapers are the
files its `pictures` patterns name; an Enlightenment .edj theme counts as the largest JPEG stream inside it
(embedded_jpeg.py). Licences a package states outside its copyright file (a per-file AUTHORS list, a License file
beside the wallpapers) are recorded from that file (LicenseNote, `license_file` in the manifest).

Steps: `apt-get download` each package (nothing is installed; the .deb files are kept in OUT/.cache/debs),
`dpkg-deb -x` into a temporary folder, read the package's DEP-5 `usr/share/doc/<pkg>/copyright` and give each
image the licence and copyright holder of the last `Files:` paragraph that matches it (a glob matches the
installed path or any tail of it; a glob naming one file also matches that file name in any folder, since
installed paths differ from the source tree's). Plasma wallpapers also carry their author's own licence in
metadata.json, recorded beside it. Images are left out when their licence is unclear (no paragraph matches) or
not free (NC / ND or unknown), when they are renders or drawings rather than photographs (NOT_PHOTOGRAPHS; kept
with --include-renders), when they are another size of an image already taken (Plasma ships several), or when
they are near-duplicates of one. Each photograph becomes a PNG whose short side is `short_side` (512; images
already smaller keep their size, nothing is upscaled), in OUT/<split>/<package>__<name>.png. A JPEG of a pinned
package is averaged by area to at most half its size (JPEG_MIN_REDUCTION), so that its compression artefacts
fall below a pixel; the system packages' images keep the Lanczos resize they were first made with.

The split is fixed by the source image: sha256(source id) mod 10 gives 0-7 train, 8 val, 9 test, so no crop of a
test image can ever be in training. scikit-image's photographs always go to test: they are the demo's images;
so do TEST_PHOTOGRAPHS, chosen for variety (people, food, animals, interiors, cities).

OUT/manifest.json lists every file (source package and version, original path and size, size, sha256 of the PNG
and of its pixels, licence, copyright, split) and every exclusion with its reason. It is rewritten atomically
after each file, so an interrupted run resumes where it stopped; every PNG is written atomically; a second run
with the same inputs changes nothing. When onedc_lib/data/nano_manifest.json is present (the committed copy) the
result is checked against it: same files, splits, sources and pixels (exit code 1 if not).
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from onedc_lib.bitstream import atomic_write

from ..archives import sha256_bytes, sha256_file
from .debian_release import FetchError, fetch_from_release
from .embedded_jpeg import largest_embedded_jpeg

REFERENCE_MANIFEST = Path(__file__).with_name("nano_manifest.json")
MANIFEST_FORMAT = "onedc-nano-data/1"
SYSTEM_PACKAGES = ("lomiri-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "mate-backgrounds",
                   "plasma-workspace-wallpapers")  # from the system's own release, whatever version it has
SPLIT_RULE = ("sha256(source id) mod 10: 0-7 train, 8 val, 9 test; scikit-image samples and the photographs of "
              "TEST_PHOTOGRAPHS: test")
SPLITS = ("train", "val", "test")
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
THEME_SUFFIX = ".edj"  # an Enlightenment theme: its picture is the largest JPEG stream inside
JPEG_SUFFIXES = {".jpg", ".jpeg", THEME_SUFFIX}
JPEG_MIN_REDUCTION = 2  # pinned packages' JPEGs shrink at least this much, by area (block artefacts fade)

# Wallpapers of these packages that are renders, drawings or logos, not photographs (looked at one by one in
# the bookworm versions: lomiri-wallpapers 20.04.0-2, mate-backgrounds 1.26.0-1, plasma-workspace-wallpapers
# 4:5.27.5-2). fnmatch patterns on the path inside the package.
NOT_PHOTOGRAPHS = {
    "lomiri-wallpapers": ["*"],  # warty-final-ubuntu (drawing), lomiri-default-background (render)
    "lomiri-wallpapers-16.04": ["*/umang_by_Abhishek_Mudgal.jpg"],
    "lomiri-wallpapers-20.04": ["*/Fossa_by_Jasper_Roks.jpg", "*/Painting-Colors_by__herobrine7gamer.jpg"],
    "mate-backgrounds": ["*/mate/abstract/*", "*/mate/desktop/*"],
    "plasma-workspace-wallpapers": [f"*/wallpapers/{name}/*" for name in (
        "Altai", "Autumn", "Canopee", "Cascade", "Cluster", "Elarun", "Flow", "FlyingKonqui", "Honeywave",
        "IceCold", "Kay", "Kokkini", "MilkyWay", "Opal", "PastelHills", "Patak", "SafeLanding", "Shell", "Volna")],
    # packages of other releases (PINNED_PACKAGES), keyed by label; looked at one by one in the pinned versions
    "enlightenment-data-0.24": ["*/Dark_Gradient.edj", "*/Light_Gradient.edj", "*/Pattern_*.edj",
                                "*/Grassy.edj"],  # gradients and patterns; Grassy is a thin tiling strip
    "enlightenment-data-0.25": ["*/Dunes.edj", "*/Flat-*.edj", "*/Paper-Flower.edj", "*/Squiggle*.edj",
                                "*/Sunset-Hills.edj"],  # drawings, textures and a graded render
    "budgie-backgrounds": ["*/ocean-waves.jpg", "*/saturnian-profile.jpg", "*/valley-midnight.jpg",
                           "*/waves-midnight.jpg"],  # a print, a mostly black space composite, two drawings
    "lxqt-themes": ["*/kde-plasma.png", "*/lxqt-origami-green.png", "*/origami-*.png", "*/plasma-logo-*.png",
                    "*/plasma_arch.png", "*/simple_blue_widescreen.png", "*/triangles*.png", "*/waves-logo.png",
                    "*/waves-purple-logo.jpg"],  # logos and drawn backgrounds
    "gnome-backgrounds": ["*/Acrylic.jpg", "*/Endless-shapes.jpg", "*/Stripes.jpg", "*/Symbolics-*.jpg",
                          "*/Wood.jpg", "*/adwaita-*.jpg", "*/VNC.png"],  # a painting, renders, a plain colour
}


@dataclass(frozen=True)
class LicenseNote:
    """A licence that a package states outside its machine-readable copyright file (a per-file list, a License
    file beside the pictures); for the files it matches it wins over the copyright file's paragraphs."""

    pattern: str  # fnmatch pattern on the installed path
    license: str
    copyright: str
    evidence: str  # the installed file that says so


@dataclass(frozen=True)
class PinnedPackage:
    """A package of a given Debian release (fetched under a private APT configuration, checked by sha256)."""

    name: str
    version: str
    suite: str
    sha256: str  # of the .deb
    label: str  # the source name in ids and file names (two releases of one package need two)
    pictures: tuple[str, ...]  # fnmatch patterns of the installed files that are wallpapers; nothing else is read
    licenses: tuple[LicenseNote, ...] = ()


_GNOME_AUTHORS = "usr/share/doc/gnome-backgrounds/AUTHORS"
_LXQT_LICENSE = "usr/share/lxqt/wallpapers/License"
_LXQT = "2022 LXQt Project Team"
PINNED_PACKAGES = (
    PinnedPackage("enlightenment-data", "0.24.2-8+deb11u1", "bullseye",
                  "5545803a4f1a4ac8ef564ab724aee9fda24632ca4ea4bd7b46dc3aaee66cbf0e", "enlightenment-data-0.24",
                  ("usr/share/enlightenment/data/backgrounds/*.edj",)),
    PinnedPackage("enlightenment-data", "0.25.4-2", "bookworm",
                  "205df83b80b3a999757b07d7ad1908332c96c6edae559548346bc8af4f292bef", "enlightenment-data-0.25",
                  ("usr/share/enlightenment/data/backgrounds/*.edj",)),
    PinnedPackage("budgie-backgrounds", "3.0-1", "trixie",
                  "b91c2d5209558bc11d8d3a161f22a608857e3f8c735980cfab0d6650b03014ca", "budgie-backgrounds",
                  ("usr/share/backgrounds/budgie/*",)),
    PinnedPackage("lxqt-themes", "1.2.0-1", "bookworm",
                  "d518df36b515b09d36cb00b12645dd8ce170bb82bb0966297741905ce3edc8e1", "lxqt-themes",
                  ("usr/share/lxqt/wallpapers/*",), tuple(
                      LicenseNote(f"*/wallpapers/{name}", "CC-BY-SA-3.0", f"{_LXQT}; photograph: stefonarch",
                                  _LXQT_LICENSE)
                      for name in ("beam.png", "flowers.png", "butterfly.png", "fog.jpg", "this-is-not-windows.jpg",
                                   "appleflower.png", "after-the-rain.jpg", "drop.png"))
                  + (LicenseNote("*/wallpapers/*", "CC-BY-SA-3.0", _LXQT, _LXQT_LICENSE),)),
    PinnedPackage("gnome-backgrounds", "3.38.0-1", "bullseye",
                  "76d8a4c52e5f346d9cb08bc8a1f58ad443d2bae211721af8a7248457c7a520e8", "gnome-backgrounds",
                  ("usr/share/backgrounds/gnome/*",), tuple(
                      LicenseNote(f"*/gnome/{name}", license_name, holder, _GNOME_AUTHORS)
                      for name, license_name, holder in (
                          ("Dark_Ivy.jpg", "CC-BY-SA-3.0", "2012 Garrett LeSage"),
                          ("LightWaves.jpg", "CC0", "Skitterphoto (Pexels)"),
                          ("Road.jpg", "CC0", "Joshua Welch (Pexels)"),
                          ("ColdWarm.jpg", "CC0", "invisiblepower (Pexels)"),
                          ("SeaSunset.jpg", "CC0", "Sebastian Voortman (Pexels)"),
                          ("Acrylic.jpg", "CC0", "Steve Johnson (Pexels)"),
                          ("adwaita-*.jpg", "CC-BY-SA-3.0", "2011-2020 Jakub Steiner"),
                          ("Symbolics-*.jpg", "CC-BY-SA-3.0", "2011-2020 Jakub Steiner"),
                          ("Endless-shapes.jpg", "CC-BY-SA-3.0", "2011-2020 Jakub Steiner"),
                          ("Stripes.jpg", "CC-BY-SA-3.0", "2011-2020 Jakub Steiner"),
                          ("Wood.jpg", "CC-BY-SA-3.0", "2011-2020 Jakub Steiner")))),
)
DEFAULT_PACKAGES = SYSTEM_PACKAGES + PINNED_PACKAGES

# Test photographs of the pinned packages, chosen by eye for variety (people, food, animals, interiors, cities,
# besides landscapes and flowers); the others follow the hash rule.
TEST_PHOTOGRAPHS = (
    *(f"enlightenment-data-0.24/{n}" for n in ("Train", "Temple", "Ramen", "Go_Away", "Light", "Wall_Lanterns",
                                               "Colorful_Roses", "Ocean_Beach", "Whiterock")),
    *(f"budgie-backgrounds/{n}" for n in ("oakland-zoo-otters", "perched-osprey", "beacon-street-sunset",
                                          "singaporean-cityscape", "roman-colosseum", "casa-mila",
                                          "extreme-desert-hike", "lake-sherburne")),
    "lxqt-themes/butterfly", "lxqt-themes/fog", "lxqt-themes/Valendas",
    "gnome-backgrounds/Road", "gnome-backgrounds/SeaSunset",
    "enlightenment-data-0.25/Snow-Trees", "enlightenment-data-0.25/Yellow-Flower", "enlightenment-data-0.25/Mountain",
)
FORCED_SPLITS = {"scikit-image/*": "test",  # the demo's photographs never train the shipped model
                 **{source_id: "test" for source_id in TEST_PHOTOGRAPHS}}

_FREE = re.compile(r"^(cc0|cc-by(-sa)?|public[- ]domain|pd|l?gpl|agpl|lgplv?\d|gplv?\d|expat|mit|bsd|apache|zlib|isc|"
                   r"unlicense|artistic|mpl|ofl|wtfpl|fal|free-art)", re.I)
_NON_FREE = re.compile(r"(^|[-_ ])(nc|nd)($|[-_ ])|non[- ]?commercial|no[- ]?deriv|proprietary|all rights reserved",
                       re.I)


class PrepareError(RuntimeError):
    """prepare cannot go on (a package cannot be had, a tool is missing) or its result differs from the reference."""


class ReferenceMismatch(PrepareError):
    """The data set made differs from the reference manifest in files, splits, sources or pixels."""


# --------------------------------------------------------------------------------------------------------------
# licences


@dataclass
class Dep5Paragraph:
    globs: list[str]
    copyright: str
    license: str


def parse_dep5(text: str) -> list[Dep5Paragraph]:
    """The `Files:` paragraphs of a machine-readable debian/copyright, in file order (continuation lines joined)."""
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        fields: dict[str, str] = {}
        last = None
        for line in block.split("\n"):
            if not line.strip() or line.startswith("#"):
                continue
            if line[0] in " \t" and last is not None:
                fields[last] += "\n" + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                continue
            last = key.strip().lower()
            fields[last] = value.strip()
        if "files" in fields:
            license_name = fields.get("license", "").split("\n")[0].strip()
            holders = " ".join(s.strip() for s in fields.get("copyright", "").split("\n") if s.strip())
            paragraphs.append(Dep5Paragraph(fields["files"].split(), holders, license_name))
    return paragraphs


def _glob_regex(glob: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob))


def dep5_match(paragraphs: Sequence[Dep5Paragraph], path: str) -> Dep5Paragraph | None:
    """The last paragraph with a glob that matches `path` (installed, relative) or a tail of it, or a glob that
    names one file (no wildcard in its last part) with the same file name; None if none does."""
    parts = path.strip("/").split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    found = None
    for paragraph in paragraphs:
        for glob in paragraph.globs:
            regex = _glob_regex(glob)
            last = glob.rsplit("/", 1)[-1]
            if any(regex.fullmatch(t) for t in tails) or ("*" not in last and "?" not in last and last == parts[-1]):
                found = paragraph
                break
    return found


def license_is_free(name: str) -> bool | None:
    """True for a free licence (CC0, CC-BY(-SA), GPL family, public domain, permissive), False for NC / ND and
    proprietary terms, None when unknown or empty. `A or B` is free if one is, `A and B` if both are."""
    name = (name or "").strip()
    if not name:
        return None
    alternatives = []
    for alternative in re.split(r"\s+or\s+|\s*\|\s*", name, flags=re.I):
        parts = [p.strip(" ()") for p in re.split(r"\s+and\s+|\s*,\s*", alternative, flags=re.I) if p.strip(" ()")]
        verdicts = [False if _NON_FREE.search(p) else True if _FREE.match(p) else None for p in parts]
        alternatives.append(False if False in verdicts else None if None in verdicts else True)
    return True if True in alternatives else None if None in alternatives else False


def _split_sample_licence(text: str) -> tuple[str, str]:
    """'CC0 (Rachel Michetti)' -> ('CC0', 'Rachel Michetti'); 'public domain (...)' -> ('public-domain', ...)."""
    name, _, holder = text.partition("(")
    name = name.strip()
    return ("public-domain" if name.lower() == "public domain" else name), holder.rstrip(")").strip()


def _plasma_metadata(wallpaper_dir: Path) -> tuple[str, str] | None:
    """(licence, author) of a Plasma wallpaper package (metadata.json or metadata.desktop), if it says."""
    meta = wallpaper_dir / "metadata.json"
    if meta.is_file():
        try:
            plugin = json.loads(meta.read_text(encoding="utf-8")).get("KPlugin", {})
        except ValueError:
            return None
        authors = plugin.get("Authors") or [{}]
        return plugin.get("License", ""), authors[0].get("Name", "")
    desktop = wallpaper_dir / "metadata.desktop"
    if desktop.is_file():
        values = dict(line.split("=", 1) for line in desktop.read_text(encoding="utf-8").splitlines() if "=" in line)
        return values.get("X-KDE-PluginInfo-License", ""), values.get("X-KDE-PluginInfo-Author", "")
    return None


# --------------------------------------------------------------------------------------------------------------
# candidates


@dataclass
class PackageSource:
    """An extracted package: its files under `root` as they would be installed."""

    name: str
    version: str
    root: Path
    deb_sha256: str | None = None
    label: str = ""  # the source name in ids and file names; empty: the package name
    pictures: tuple[str, ...] = ()  # fnmatch patterns of the wallpapers; empty: every raster image
    licenses: tuple[LicenseNote, ...] = ()
    jpeg_reduction: int = 1  # JPEG originals shrink at least this much, by area (1: Lanczos to the size)
    suite: str | None = None  # the Debian release it came from, when not the system's

    @property
    def source_name(self) -> str:
        return self.label or self.name


@dataclass
class Candidate:
    source: str  # package name, or "scikit-image"
    version: str
    name: str  # the source image's name (Plasma: the wallpaper; else the file's stem)
    original_path: str  # inside the package
    path: Path | None  # where the original is now (None: pixels given in `array`)
    license: str = ""
    copyright: str = ""
    upstream_license: str | None = None
    upstream_author: str | None = None
    license_file: str | None = None  # where the licence is stated, when not in the copyright file
    jpeg_reduction: int = 1
    kind: str = "photograph"
    excluded: list[str] = field(default_factory=list)
    array: object = None  # an [H, W, 3] uint8 array instead of a file

    @property
    def source_id(self) -> str:
        return f"{self.source}/{self.name}"


def split_of(source_id: str) -> str:
    for pattern, split in FORCED_SPLITS.items():
        if fnmatch.fnmatchcase(source_id, pattern):
            return split
    bucket = int(hashlib.sha256(source_id.encode("utf-8")).hexdigest(), 16) % 10
    return "train" if bucket < 8 else "val" if bucket == 8 else "test"


def _open_original(path: Path):
    """The picture in `path` as a PIL image (an .edj theme: the largest JPEG stream inside it)."""
    from PIL import Image

    if path.suffix.lower() == THEME_SUFFIX:
        data = largest_embedded_jpeg(path)
        if data is None:
            raise ValueError(f"{path.name} holds no JPEG picture")
        return Image.open(io.BytesIO(data))
    return Image.open(path)


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only."""
    with _open_original(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def package_candidates(package: PackageSource) -> list[Candidate]:
    """Every raster image the package installs (outside usr/share/doc; only its `pictures` when it names them),
    one per source image, with its licence and exclusion reasons; Plasma's several sizes of one wallpaper become
    the largest one. An .edj theme counts as the JPEG picture it holds."""
    root = package.root
    source = package.source_name
    suffixes = RASTER_SUFFIXES | {THEME_SUFFIX}
    copyright_file = root / "usr/share/doc" / package.name / "copyright"
    paragraphs = parse_dep5(copyright_file.read_text(encoding="utf-8", errors="replace")) \
        if copyright_file.is_file() else []
    groups: dict[str, list[Path]] = {}
    extra: list[Candidate] = []
    # links are other names of a file of the package (Plasma links each screen size to one image): not images
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("usr/share/doc/") or path.suffix.lower() not in suffixes:
            continue
        if package.pictures and not any(fnmatch.fnmatchcase(rel, pattern) for pattern in package.pictures):
            continue
        match = re.search(r"/wallpapers/([^/]+)/contents/(.+)$", rel)
        if match:
            name, inner = match.groups()
            if not inner.startswith("images/"):  # screenshot.png (a preview), images_dark/ (a variant)
                extra.append(Candidate(source, package.version, name, rel, path,
                                       excluded=["variant or preview of another image"]))
                continue
        else:
            name = path.stem
        groups.setdefault(name, []).append(path)
    candidates = []
    for name, paths in groups.items():
        sizes = {}
        for p in paths:
            try:
                w, h = _header_size(p)
                sizes[p] = w * h
            except (OSError, SyntaxError, ValueError):
                sizes[p] = -1
        best = max(paths, key=lambda p: (sizes[p], p.name))
        for p in paths:
            if p is not best:
                extra.append(Candidate(source, package.version, name, p.relative_to(root).as_posix(), p,
                                       excluded=[f"another size of {best.relative_to(root).as_posix()}"]))
        candidates.append(Candidate(source, package.version, name, best.relative_to(root).as_posix(), best,
                                    jpeg_reduction=package.jpeg_reduction,
                                    excluded=[] if sizes[best] >= 0 else ["no readable picture"]))
    for c in candidates:
        paragraph = dep5_match(paragraphs, c.original_path)
        note = next((n for n in package.licenses if fnmatch.fnmatchcase(c.original_path, n.pattern)), None)
        if note is not None:
            c.license, c.copyright, c.license_file = note.license, note.copyright, note.evidence
            if license_is_free(c.license) is not True:
                c.excluded.append(f"licence {c.license!r} is not known to be free")
        elif paragraph is None:
            c.excluded.append("licence unclear: no Files paragraph of the copyright file matches"
                              if paragraphs else "licence unclear: no machine-readable copyright file")
        else:
            c.license, c.copyright = paragraph.license, paragraph.copyright
            if license_is_free(c.license) is not True:
                c.excluded.append(f"licence {c.license!r} is " +
                                  ("not free" if license_is_free(c.license) is False else "unknown"))
        meta_dir = re.search(r"^(.*/wallpapers/[^/]+)/contents/", c.original_path)
        if meta_dir:
            meta = _plasma_metadata(root / meta_dir.group(1))
            if meta:
                c.upstream_license, c.upstream_author = meta
                if c.upstream_license and license_is_free(c.upstream_license) is False:
                    c.excluded.append(f"upstream licence {c.upstream_license!r} is not free")
        if any(fnmatch.fnmatchcase(c.original_path, pattern) for pattern in NOT_PHOTOGRAPHS.get(source, [])):
            c.kind = "render"
    return sorted(candidates + extra, key=lambda c: (c.source_id, c.original_path))


def skimage_candidates(names: Sequence[str] | None = None) -> list[Candidate]:
    """scikit-image's colour photographs (onedc_lib.data.samples), licences as scikit-image documents them."""
    import skimage
    import skimage.data

    from .samples import SAMPLES

    data_dir = Path(skimage.data.__file__).parent
    out = []
    for name in names if names is not None else SAMPLES:
        license_name, holder = _split_sample_licence(SAMPLES[name])
        files = sorted(data_dir.glob(f"{name}.*"))
        path = files[0] if files else None
        array = None if path is not None else getattr(skimage.data, name)()
        original = path.relative_to(data_dir.parent.parent).as_posix() if path is not None else f"skimage.data.{name}()"
        out.append(Candidate("scikit-image", skimage.__version__, name, original, path, license_name, holder,
                             array=array))
    return out


# --------------------------------------------------------------------------------------------------------------
# conversion


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side` (aspect kept, rounded); smaller images unchanged."""
    short = min(width, height)
    if short <= short_side:
        return width, height
    scale = short_side / short
    return (short_side, max(short_side, round(height * scale))) if width <= height else \
        (max(short_side, round(width * scale)), short_side)


def _to_rgb_image(candidate: Candidate):
    """The original as an RGB PIL image: EXIF orientation applied, alpha composited on white, grey replicated."""
    import numpy as np
    from PIL import Image, ImageOps

    if candidate.path is None:
        return Image.fromarray(np.asarray(candidate.array, dtype=np.uint8)).convert("RGB")
    with _open_original(candidate.path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            scale = 65535.0 if array.max() > 255 or image.mode.startswith("I;16") else 255.0
            return Image.fromarray(np.round(np.clip(array / scale, 0, 1) * 255).astype(np.uint8)).convert("RGB")
        if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def resampling(candidate: Candidate) -> str:
    """"area" for a JPEG original of a package whose JPEGs must shrink (jpeg_reduction > 1), else "lanczos"."""
    jpeg = candidate.path is not None and candidate.path.suffix.lower() in JPEG_SUFFIXES
    return "area" if jpeg and candidate.jpeg_reduction > 1 else "lanczos"


def convert(candidate: Candidate, short_side: int) -> tuple[bytes, "object"]:
    """-> (PNG bytes, uint8 [H, W, 3] pixels) of the original resized to the short side: Lanczos, or for a JPEG
    that must shrink by `jpeg_reduction` an area average to at most 1/jpeg_reduction of its short side."""
    import numpy as np
    from PIL import Image

    image = _to_rgb_image(candidate)
    if resampling(candidate) == "area":
        short = min(short_side, min(image.size) // candidate.jpeg_reduction)
        image = image.resize(target_size(image.width, image.height, short), Image.BOX)
    else:
        size = target_size(image.width, image.height, short_side)
        if size != image.size:
            image = image.resize(size, Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), np.asarray(image)


def _pixels_sha256(pixels) -> str:
    import numpy as np

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return sha256_bytes(f"{pixels.shape[0]}x{pixels.shape[1]}x3:".encode() + pixels.tobytes())


def _thumbnail(pixels):
    """16x16 grey thumbnail in [0, 1], for near-duplicate detection."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).convert("L").resize((16, 16), Image.BOX), dtype=np.float32) / 255


def _near_duplicate(a, b, threshold: float) -> bool:
    """Thumbnails that differ by less than `threshold` on average and whose patterns correlate (> 0.95): the same
    picture at another size or crop, not two plain images (nearly uniform ones have no pattern to correlate)."""
    import numpy as np

    if float(np.abs(a - b).mean()) >= threshold:
        return False
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return norm > 1e-6 and float((a * b).sum()) / norm > 0.95


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


# --------------------------------------------------------------------------------------------------------------
# packages


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise PrepareError(f"{cmd[0]} not found: prepare needs Debian's apt-get and dpkg-deb") from None
    if result.returncode != 0:
        raise PrepareError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def fetch_package(name: str, cache: Path) -> Path:
    """The package's .deb in `cache`, downloaded with `apt-get download` unless one is there already."""
    cache.mkdir(parents=True, exist_ok=True)
    for deb in sorted(cache.glob(f"{name}_*.deb")):
        if _run(["dpkg-deb", "-f", str(deb), "Package"]).strip() == name:
            return deb
    try:
        _run(["apt-get", "download", name], cwd=cache)
    except PrepareError as error:
        raise PrepareError(f"{error}\n(is this Debian with package lists? `apt-get update` fetches them)") from None
    debs = [d for d in sorted(cache.glob(f"{name}_*.deb"))
            if _run(["dpkg-deb", "-f", str(d), "Package"]).strip() == name]
    if not debs:
        raise PrepareError(f"apt-get download {name} left no .deb in {cache}")
    return debs[-1]


def fetch_pinned(package: PinnedPackage, cache: Path) -> Path:
    """The pinned .deb in `cache` (checked by sha256), downloaded from its release under a private APT
    configuration in cache/../apt unless it is there already."""
    try:
        return fetch_from_release(package.name, package.version, package.suite, package.sha256, cache,
                                  cache.parent / "apt", _run)
    except FetchError as error:
        raise PrepareError(str(error)) from None


def extract_pinned(package: PinnedPackage, deb: Path, dest: Path) -> PackageSource:
    """The extracted pinned package, with what the spec says about it (label, pictures, licences)."""
    extracted = extract_package(deb, dest)
    if (extracted.name, extracted.version) != (package.name, package.version):
        raise PrepareError(f"{deb.name} is {extracted.name} {extracted.version}, not {package.name} {package.version}")
    return replace(extracted, label=package.label, pictures=package.pictures, licenses=package.licenses,
                   jpeg_reduction=JPEG_MIN_REDUCTION, suite=package.suite)


def extract_package(deb: Path, dest: Path) -> PackageSource:
    fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"])
    values = dict(line.split(": ", 1) for line in fields.strip().splitlines() if ": " in line)
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return PackageSource(values["Package"], values["Version"], dest, sha256_file(deb))


# --------------------------------------------------------------------------------------------------------------
# prepare


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def verify_manifest(manifest: dict, reference: dict) -> list[str]:
    """Differences that matter for reproducibility: files, splits, sources, sizes, pixels (empty if none)."""
    problems = []
    for key in ("format", "short_side", "include_renders", "skimage_samples"):
        if manifest.get(key) != reference.get(key):
            return [f"{key} is {manifest.get(key)!r} here but {reference.get(key)!r} in the reference: "
                    "the reference does not apply"]
    mine = {f["file"]: f for f in manifest["files"]}
    theirs = {f["file"]: f for f in reference["files"]}
    for name in sorted(set(theirs) - set(mine)):
        problems.append(f"{name}: in the reference but not made here")
    for name in sorted(set(mine) - set(theirs)):
        problems.append(f"{name}: made here but not in the reference")
    for name in sorted(set(mine) & set(theirs)):
        for key in ("split", "source", "source_version", "original_path", "source_sha256", "width", "height",
                    "pixels_sha256", "license"):
            if mine[name].get(key) != theirs[name].get(key):
                problems.append(f"{name}: {key} is {mine[name].get(key)!r} here, {theirs[name].get(key)!r} in the "
                                "reference")
    return problems


def prepare(out: str | os.PathLike, short_side: int = 512, include_renders: bool = False,
            packages: Sequence[str | PinnedPackage] = DEFAULT_PACKAGES,
            sources: Sequence[PackageSource] | None = None,
            skimage_samples: Sequence[str] | bool = True,
            reference: str | os.PathLike | None = REFERENCE_MANIFEST,
            keep_cache: bool = True, duplicate_threshold: float = 0.02,
            log: Callable[[str], None] = print) -> dict:
    """Builds (or completes, or checks) the data set in `out`; returns the manifest. See the module docstring.

    packages: names of the system's release (`apt-get download`) or PinnedPackage specs of other releases.
    sources: packages already extracted (no apt-get; tests use this), instead of `packages`.
    skimage_samples: True for all of onedc_lib.data.samples, False for none, or a list of names.
    reference: a manifest to check the result against (skipped if the file is absent, or None).
    Raises PrepareError when a package cannot be had or the result differs from the reference.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    previous = {}
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            if old.get("format") == MANIFEST_FORMAT and old.get("short_side") == short_side:
                previous = {f["file"]: f for f in old.get("files", [])}
        except ValueError:
            pass
    cache = out / ".cache"
    cache.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="extract-", dir=cache) as tmp:
        if sources is None:
            sources = []
            for package in packages:
                if isinstance(package, PinnedPackage):
                    deb = fetch_pinned(package, cache / "debs")
                    sources.append(extract_pinned(package, deb, Path(tmp) / package.label))
                else:
                    deb = fetch_package(package, cache / "debs")
                    sources.append(extract_package(deb, Path(tmp) / package))
                log(f"{sources[-1].source_name} {sources[-1].version}: {deb.name}")
        candidates = [c for package in sources for c in package_candidates(package)]
        if skimage_samples:
            candidates += skimage_candidates(None if skimage_samples is True else list(skimage_samples))
        (out / "licenses").mkdir(exist_ok=True)
        for package in sources:
            copyright_file = package.root / "usr/share/doc" / package.name / "copyright"
            if copyright_file.is_file():
                atomic_write(out / "licenses" / f"{package.source_name}.copyright", copyright_file.read_bytes())
            for evidence in sorted({note.evidence for note in package.licenses}):
                if (package.root / evidence).is_file():
                    atomic_write(out / "licenses" / f"{package.source_name}.{Path(evidence).name}",
                                 (package.root / evidence).read_bytes())
        samples = [c for c in candidates if c.source == "scikit-image"]
        if samples:
            atomic_write(out / "licenses" / "scikit-image.txt", "".join(
                f"{c.name}: {c.license} ({c.copyright}), as scikit-image documents it (skimage.data.{c.name})\n"
                for c in samples).encode("utf-8"))

        manifest = {
            "format": MANIFEST_FORMAT, "short_side": short_side, "include_renders": include_renders,
            "skimage_samples": [c.name for c in samples], "split_rule": SPLIT_RULE, "complete": False,
            "packages": {p.source_name: {"package": p.name, "version": p.version, "deb_sha256": p.deb_sha256,
                                         **({"suite": p.suite} if p.suite else {})} for p in sources},
            "files": [], "excluded": [],
        }
        thumbnails: list[tuple[str, object]] = []
        for c in candidates:
            if c.kind == "render" and not include_renders:
                c.excluded.append("not a photograph (render, drawing or logo)")
            entry = {"source": c.source, "source_version": c.version, "original_path": c.original_path}
            if c.excluded:
                manifest["excluded"].append({**entry, "license": c.license or None, "reason": "; ".join(c.excluded)})
                continue
            split = split_of(c.source_id)
            rel = f"{split}/{_safe(c.source)}__{_safe(c.name)}.png"
            if any(f["file"] == rel for f in manifest["files"]):
                raise PrepareError(f"two source images would both be {rel}: {c.source_id} and an earlier one")
            source_sha = sha256_file(c.path) if c.path is not None else _pixels_sha256(c.array)
            reuse = previous.get(rel)
            target = out / rel
            png = None
            if reuse and reuse.get("source_sha256") == source_sha and target.is_file() and \
                    sha256_file(target) == reuse.get("sha256"):  # made by an earlier run from the same original
                import numpy as np
                from PIL import Image

                with Image.open(target) as image:
                    pixels = np.asarray(image.convert("RGB"))
                png_sha, png_bytes = reuse["sha256"], reuse["bytes"]
            else:
                png, pixels = convert(c, short_side)
                png_sha, png_bytes = sha256_bytes(png), len(png)
            original_size = _header_size(c.path) if c.path is not None else (c.array.shape[1], c.array.shape[0])
            record = {"file": rel, "split": split, "source_id": c.source_id, **entry,
                      "original_width": original_size[0], "original_height": original_size[1],
                      "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "bytes": png_bytes,
                      "sha256": png_sha, "pixels_sha256": _pixels_sha256(pixels), "source_sha256": source_sha,
                      "license": c.license, "copyright": c.copyright, "kind": c.kind, "resample": resampling(c)}
            if c.license_file is not None:
                record["license_file"] = c.license_file
            if c.upstream_license is not None:
                record.update(upstream_license=c.upstream_license, upstream_author=c.upstream_author)
            thumb = _thumbnail(pixels)
            duplicate = next((f for f, t in thumbnails if _near_duplicate(t, thumb, duplicate_threshold)), None)
            if duplicate is not None:
                manifest["excluded"].append({**entry, "license": c.license or None,
                                             "reason": f"near-duplicate of {duplicate}"})
                continue
            thumbnails.append((rel, thumb))
            if png is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, png)
                log(f"{rel}: {record['width']}x{record['height']} from {c.source} {c.original_path} ({c.license})")
            manifest["files"].append(record)
            _write_json(manifest_path, manifest)  # resumable: what is done so far
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    kept = {f["file"] for f in manifest["files"]}
    for split in SPLITS:
        for stale in sorted((out / split).glob("*.png")) if (out / split).is_dir() else []:
            if f"{split}/{stale.name}" not in kept:
                stale.unlink()
                log(f"removed {split}/{stale.name} (not part of this data set)")
    manifest["complete"] = True
    manifest["totals"] = {
        "files": len(manifest["files"]), "bytes": sum(f["bytes"] for f in manifest["files"]),
        **{split: sum(f["split"] == split for f in manifest["files"]) for split in SPLITS},
        "licenses": {name: sum(f["license"] == name for f in manifest["files"])
                     for name in sorted({f["license"] for f in manifest["files"]})},
        "excluded": len(manifest["excluded"]),
    }
    _write_json(manifest_path, manifest)
    if reference is not None and Path(reference).is_file():
        problems = verify_manifest(manifest, json.loads(Path(reference).read_text(encoding="utf-8")))
        if problems:
            raise ReferenceMismatch(f"{out} differs from the reference {reference}:\n  " + "\n  ".join(problems[:50]))
        log(f"checked against {reference}: same files, splits and pixels")
    return manifest


# --------------------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", default="out/nano_data", help="output folder (default: out/nano_data)")
    parser.add_argument("--short-side", type=int, default=512, metavar="N",
                        help="short side of the PNGs in pixels (default 512; smaller images keep their size)")
    parser.add_argument("--include-renders", action="store_true",
                        help="keep free wallpapers that are renders or drawings, not photographs")
    parser.add_argument("--no-skimage", action="store_true", help="leave out scikit-image's photographs")
    parser.add_argument("--reference", metavar="MANIFEST", default=str(REFERENCE_MANIFEST),
                        help="manifest to check the result against (default: the committed nano_manifest.json)")
    parser.add_argument("--no-verify", action="store_true", help="do not check against the reference")
    parser.add_argument("--clean-cache", action="store_true", help="delete the downloaded .deb files afterwards")


def run_from_args(args: argparse.Namespace) -> int:
    """0: done (and equal to the reference); 1: differs from the reference; 2: could not be made."""
    if args.short_side < 1:
        print("prepare: --short-side must be positive", file=sys.stderr)
        return 2
    try:
        manifest = prepare(args.out, short_side=args.short_side, include_renders=args.include_renders,
                           skimage_samples=not args.no_skimage, reference=None if args.no_verify else args.reference,
                           keep_cache=not args.clean_cache)
    except PrepareError as error:
        print(f"prepare: {error}", file=sys.stderr)
        return 1 if isinstance(error, ReferenceMismatch) else 2
    t = manifest["totals"]
    what = "images" if manifest["include_renders"] else "photographs"
    print(f"{t['files']} {what} ({t['train']} train, {t['val']} val, {t['test']} test), "
          f"{t['bytes'] / 1e6:.1f} MB, {t['excluded']} files left out; licences: "
          + ", ".join(f"{k} {v}" for k, v in t["licenses"].items()) + f"; manifest: {Path(args.out) / 'manifest.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onedc_lib.data.prepare", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
