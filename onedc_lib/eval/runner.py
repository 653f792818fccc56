"""Evaluation runner: a folder of images x one codec -> bitstream files, reconstructions, per-image CSV, summary JSON.

    from onedc_lib.eval.runner import evaluate
    summary = evaluate("jpeg", "photos/", "out/eval")                 # a baseline: its whole quality sweep
    summary = evaluate("onedc:nano_q3", "photos/", "out/eval")        # a bundled model, a preset or a model folder
    summary = evaluate("onedc:nano_q1,nano_q3,nano_q5", ...)          # several models: one RD point each

Command line: `onedc eval --codec C --images DIR --out DIR [--metrics ...] [--no-fid]`.

Protocols (`protocol=`): "ours" (default) and "release", the released OneDC's evaluation (spec section 8) for
comparisons with the paper. Both compute the metrics alike: per image on the 8-bit reconstruction against the
8-bit original (PSNR, MS-SSIM, LPIPS, DISTS as `metrics.PROTOCOL` says), FID/KID on 256-px patches on two grids
(the second shifted by 128 px, only where both sides are >= 384; the patch counts in each point's `fid_kid`).
They differ in the rate: "ours" divides our file's bytes by the pixels; "release" the bits of the file that the
release writes for the same image (its 16-byte header, its y stream coded with its tables, z:
`OneDC.release_bits`), and for the z-only model z's bits alone (the release writes no file for it and counts 14
bits per 64x64 block). Under "release" the CSV has `release_bits` and `bpp_file` (our file, as "ours" counts it)
beside `bpp`, which is the release's; a classical codec's file is counted whole under both.

Codecs (`codec_spec`):

    onedc:<models>   comma-separated bundled model names, presets (seeded random weights, marked untrained),
                     model folders (`onedc_lib.weights.load_model`) or release checkpoint folders (model.safetensors
                     + model_1.safetensors; `vae=` the SD-2.1 VAE folder, `zonly=` the folders of the z-only
                     model); plain `onedc` is the default model. Each model is one rate point; real `.odc` files
                     are written and read back.
    jpeg webp avif jxl hevc   `onedc_lib.eval.baselines.BASELINES`, every quality of its sweep (or `qualities=`).

Written under `out_dir` (CSV and JSON under `results_dir` when given), with `<tag>` = `jpeg`, `onedc-nano_q3`, ...:

    <tag>.csv                        one row per (rate point, image): codec, rate, name, file, height, width,
                                     bytes, payload_bytes, bpp, <metrics>, enc_s, dec_s
    <tag>.json                       the summary (below)
    <tag>/files/<image>_q<q>.<ext>   the bitstreams (onedc: <image>_<model>.odc); bytes and bpp come from these
    <tag>/recon/<image>_q<q>.png     the decoded images

The summary JSON reads with `bdrate.load_rd_points` / `load_curve` and `plotting.rd_curves`:
`{"codec", "label", "points": [{"rate", "bpp", "bytes", <metric means>, "enc_s", "dec_s", "images", "fid", "kid",
"fid_kid": {patch counts, reasons when missing}}, ...], "protocol", "versions", "device", "git_commit",
"created", ...}`. A point's metric is the mean over its images; it is null (with `<metric>_missing` saying why)
when any image lacks it (MS-SSIM below 161 px), so that every mean covers the same images. PSNR of an identical
reconstruction is +inf in the CSV and null in the JSON. FID/KID follow `metrics.PatchFIDKID` (256-px patches on
two grids; KID missing below its subset size); `fid_min_patches` reports them missing, uncomputed, for image sets
with fewer patches. The reference patches' Inception features are computed once per image, not per rate point.

Rows already in the CSV whose bitstream (and, for FID, reconstruction) are still on disk are kept when the run
is repeated (`resume=True`), so an interrupted run picks up where it stopped; the CSV is rewritten atomically
after every row and the JSON at the end.
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..archives import sha256_file
from ..bitstream import atomic_write

__all__ = ["CSV_COLUMNS", "evaluate", "list_images", "parse_codec"]

FIXED_COLUMNS = ("codec", "rate", "name", "file", "height", "width", "bytes", "payload_bytes", "bpp")
TIME_COLUMNS = ("enc_s", "dec_s")
CSV_COLUMNS = (*FIXED_COLUMNS, "psnr", "ms_ssim", "lpips", "dists", *TIME_COLUMNS)  # with all four metrics
DEFAULT_METRICS = ("psnr", "ms_ssim", "lpips", "dists")
SUMMARY_FORMAT = 1
PROTOCOLS = ("ours", "release")
RELEASE_COLUMNS = ("release_bits", "bpp_file")  # the "release" protocol's, after FIXED_COLUMNS
FID_MIN_PATCHES = 2  # metrics.PatchFIDKID's minimum

PROTOCOL_NOTES = {
    "bpp": "8 * bytes of the whole written file / original pixels (H * W); payload_bytes beside it for codecs "
           "with a container (HEIF/AVIF boxes), never instead of it",
    "bpp_release": "protocol 'release': bits of the file the released OneDC writes (16-byte header, y coded with "
                   "its tables and its float32 scale -> index map, z) / original pixels; the z-only model: 14 bits "
                   "per 64x64 block of z alone (the release writes no file); classical codecs: the whole file; "
                   "bpp_file beside it is our file's",
    "reference": "each image loaded with onedc_lib.image_io.load_image and rounded to 8-bit RGB; codecs encode "
                 "that 8-bit image and every metric compares against it",
    "means": "a point's metric is the mean over its images of the per-image values; null when any image lacks "
             "the metric",
    "timing": "enc_s / dec_s: wall time of one in-memory encode (8-bit image -> file bytes) and decode (file "
              "bytes -> 8-bit image), no file I/O and no metrics; one run each, after one untimed warm-up "
              "encode/decode per baseline codec or OneDC model",
}


# ----------------------------------------------------------------------------------------------------------------
# Codecs

@dataclass
class _Codec:
    """One codec under evaluation: rate points, encode/decode, how files are named, what it is."""
    spec: str
    tag: str
    label: str
    kind: str
    rates: list
    extension: str
    info: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def file_stem(self, name: str, rate) -> str:
        return f"{name}_q{rate}" if self.kind == "baseline" else f"{name}_{rate}"


class _Baseline(_Codec):
    def __init__(self, spec: str, qualities=None):
        from .baselines import ALL_BASELINES

        codec = ALL_BASELINES[spec]
        rates = list(codec.qualities if qualities is None else qualities)
        if not rates:
            raise ValueError(f"{spec}: no qualities to evaluate")
        for q in rates:
            codec._check_quality(q)
        if len(set(rates)) != len(rates):
            raise ValueError(f"{spec}: repeated qualities in {rates}")
        extension = codec.file_extension
        description = codec.describe()
        description["qualities_evaluated"] = [int(q) for q in rates]
        super().__init__(spec, spec, codec.label, "baseline", [int(q) for q in rates], extension, description,
                         description.pop("versions"))
        self.codec = codec

    def encode(self, rate, image: np.ndarray, caption: str = "") -> bytes:
        return self.codec.encode(image, rate)  # classical codecs carry no caption

    def decode(self, rate, data: bytes) -> np.ndarray:
        return self.codec.decode(data)

    def payload_bytes(self, data: bytes) -> int:
        return self.codec.payload_bytes(data)

    def release_bits(self, rate, image: np.ndarray, data: bytes) -> int:
        return 8 * len(data)  # a classical codec's file is the same file under both protocols


class _OneDC(_Codec):
    def __init__(self, spec: str, models: str, device, vae=None, zonly=()):
        import torch

        from ..weights import DEFAULT_MODEL

        names = [m.strip() for m in (models or DEFAULT_MODEL).split(",")]
        if not all(names):
            raise ValueError(f"{spec!r}: empty model name (expected onedc:<model>[,<model>...])")
        self.models, rates, info, caught = {}, [], {"models": {}}, []
        for name in names:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                model = _load_model(name, vae, zonly).to(device)
            caught += [str(w.message) for w in record]
            rate = _model_label(name)
            if rate in self.models:
                raise ValueError(f"{spec!r}: two models named {rate!r}")
            self.models[rate] = model
            rates.append(rate)
            info["models"][rate] = {"model": name, "config": model.config.name, "model_id": model.model_id.hex(),
                                    "untrained_parts": list(getattr(model, "untrained_parts", ())),
                                    "parameters": sum(p.numel() for p in model.parameters())}
        tag = "onedc-" + "+".join(rates) if len(rates) <= 3 else f"onedc-{rates[0]}-{rates[-1]}"
        label = "OneDC " + ", ".join(rates)
        from onedc_lib import __version__

        super().__init__(spec, tag, label, "onedc", rates, "odc", info, {"onedc": __version__}, caught)
        self.torch = torch
        for message in caught:  # recorded in the summary, and still shown
            warnings.warn(message, UserWarning, stacklevel=3)

    def encode(self, rate, image: np.ndarray, caption: str = "") -> bytes:
        """A text-guided model writes the caption into the file (and pays for it); the others ignore it."""
        x = self.torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
        return self.models[rate].compress(x, caption).to_bytes()

    def decode(self, rate, data: bytes) -> np.ndarray:
        from .metrics import to_uint8

        return to_uint8(self.models[rate].decompress(data)[0])

    def payload_bytes(self, data: bytes) -> int:
        return len(data)

    def release_bits(self, rate, image: np.ndarray, data: bytes) -> int:
        x = self.torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
        return self.models[rate].release_bits(x)


def _load_model(name: str, vae=None, zonly=()):
    """A release checkpoint folder with `vae`, as the z-only model when it is among `zonly` (its files look like a
    y model's); anything else through weights.load_model."""
    from ..release_checkpoint import is_release_folder, load_release_folder
    from ..weights import load_model

    if is_release_folder(name):
        z_only = any(Path(z).resolve() == Path(name).resolve() for z in zonly)
        return load_release_folder(name, vae, "sd15_zonly" if z_only else None)
    return load_model(name)


def _model_label(name: str) -> str:
    """A bundled name or preset as it is; a folder by its name, a training run's OUT/model by its run's name."""
    path = Path(name)
    if not (os.sep in name or path.is_dir()):
        return name
    path = path.resolve()
    return path.parent.name if path.name == "model" and (path.parent / "log.csv").is_file() else path.name


def parse_codec(codec_spec: str, qualities=None, device="cpu", vae=None, zonly=()) -> _Codec:
    """`onedc[:<models>]` or a baseline name -> the codec object the runner uses (models are loaded here);
    vae / zonly: for release checkpoint folders (module docstring)."""
    from .baselines import ALL_BASELINES

    spec = codec_spec.strip()
    if spec == "onedc" or spec.startswith("onedc:"):
        if qualities is not None:
            raise ValueError("qualities= applies to the baselines; a OneDC sweep is a list of models "
                             "(onedc:<model>,<model>,...)")
        return _OneDC(spec, spec.partition(":")[2], device, vae, zonly)
    if spec.lower() in ALL_BASELINES:
        return _Baseline(spec.lower(), qualities)
    raise ValueError(f"unknown codec {codec_spec!r}: one of onedc:<model or path>, {', '.join(ALL_BASELINES)}")


# ----------------------------------------------------------------------------------------------------------------
# Images, rows, provenance

def list_images(images_dir) -> list[tuple[str, Path]]:
    """(name, path) of the images under a folder (recursively), sorted; name = relative path without suffix."""
    from ..image_io import IMAGE_SUFFIXES

    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no images folder {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    names: dict[str, Path] = {}
    for p in files:
        name = p.relative_to(root).with_suffix("").as_posix()
        if name in names:
            raise ValueError(f"two images named {name!r}: {names[name]} and {p}")
        names[name] = p
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
    return list(names.items())


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as load_image will return it (EXIF rotations swap the sides), without decoding it."""
    from PIL import Image

    from ..image_io import ImageError

    try:
        with Image.open(path) as image:
            height, width = image.height, image.width
            if image.getexif().get(0x0112) in (5, 6, 7, 8):
                height, width = width, height
    except (OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None
    return height, width


def _load_uint8(path: Path) -> np.ndarray:
    from ..image_io import load_image
    from .metrics import to_uint8

    return np.ascontiguousarray(to_uint8(load_image(path)))


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return str(value)


def _csv_text(columns, rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format(row.get(k)) for k in columns})
    return buffer.getvalue()


def _parse_row(row: dict, metrics) -> dict:
    out = dict(row)
    for key in ("height", "width", "bytes", "payload_bytes", "release_bits"):
        if key in row:
            out[key] = int(row[key])
    for key in ("bpp", "bpp_file", *metrics, *TIME_COLUMNS):
        if key not in row:
            continue
        out[key] = None if row.get(key, "") == "" else float(row[key])
    return out


def json_safe(value):
    """NaN/inf -> null (JSON has neither); numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def git_commit(path=None) -> str | None:
    """`git rev-parse HEAD` of the checkout holding onedc_lib (or path), None when there is none."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def _git_dirty(path=None) -> bool | None:
    """True when tracked files of the checkout differ from its commit (untracked files are ignored)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(result.stdout.strip()) if result.returncode == 0 else None


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _versions(codec: _Codec) -> dict:
    import torch

    from onedc_lib import __version__

    out = {"python": platform.python_version(), "onedc": __version__, "torch": torch.__version__,
           "numpy": np.__version__}
    for package in ("torchvision", "pillow", "scikit-image"):
        out[package] = _package_version(package)
    out["codec"] = dict(codec.versions)
    return out


def _device_info(device) -> dict:
    import torch

    device = torch.device(device)
    info = {"torch_device": str(device), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu": cpu_name(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def device_info(device: str = "cpu") -> dict:
    """Device, threads, CPU / GPU names and library versions, for the provenance of timings and results."""
    import torch

    from .. import __version__

    dev = torch.device(device)
    info = {"device": str(dev), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu": cpu_name(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "onedc": __version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _protocol(name: str, metrics, fid: bool, fid_min_patches: int, image_metrics, fid_features, cache_dir) -> dict:
    from . import metrics as M
    from .backbones import read_manifest

    protocol = {"name": name, **{key: M.PROTOCOL[key] for key in ("images", *metrics)}}
    if fid:
        protocol["fid_kid"] = M.PROTOCOL["fid_kid"]
    protocol["patch_grid"] = {"patch": M.PATCH, "grid1": "non-overlapping from (0, 0), remainders dropped",
                              "grid2_offset": M.GRID2_OFFSET, "grid2_min_side": M.GRID2_MIN_SIDE,
                              "fid_min_patches": max(fid_min_patches, 2), "kid_subset_size": M.KID_SUBSET_SIZE,
                              "kid_subsets": M.KID_SUBSETS}
    protocol.update({k: v for k, v in PROTOCOL_NOTES.items() if k != "bpp_release" or name == "release"})
    protocol["packages"] = {"lpips": _package_version("lpips"), "DISTS_pytorch": _package_version("DISTS-pytorch"),
                            "pytorch_msssim": _package_version("pytorch-msssim"),
                            "clean-fid": _package_version("clean-fid"), "scipy": _package_version("scipy")}
    weights = {}
    if image_metrics is not None:
        weights.update(image_metrics.provenance)
    if fid_features is not None:
        weights["fid_kid"] = fid_features.provenance
    # the local cache path is not provenance; the sha256 is
    protocol["weights"] = {k: {key: v for key, v in entry.items() if key != "file"} for k, entry in weights.items()}
    manifest = read_manifest(cache_dir)
    if manifest:
        protocol["weights_manifest_sha256"] = {k: v.get("sha256") for k, v in manifest.get("files", {}).items()}
    return protocol


class _ReferenceCache:
    """Wraps InceptionFeatures: the features of the reference patches (registered by their digest) are
    computed once per image and reused at every rate point; the distorted patches always pass through."""

    def __init__(self, features):
        self.features = features
        self.provenance = features.provenance
        self._cache: dict[bytes, np.ndarray] = {}
        self._wanted: set[bytes] = set()

    @staticmethod
    def digest(patches: np.ndarray) -> bytes:
        return hashlib.sha1(np.ascontiguousarray(patches).data).digest() + str(patches.shape).encode()

    def register(self, patches: np.ndarray) -> None:
        self._wanted.add(self.digest(patches))

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        key = self.digest(patches)
        if key not in self._wanted:
            return self.features(patches)
        if key not in self._cache:
            self._cache[key] = self.features(patches)
        return self._cache[key]


def _mean_point(rows: list[dict], metrics, n_images: int) -> dict:
    point = {"bpp": float(np.mean([r["bpp"] for r in rows])), "bytes": float(np.mean([r["bytes"] for r in rows])),
             "payload_bytes": float(np.mean([r["payload_bytes"] for r in rows]))}
    if rows and "bpp_file" in rows[0]:
        point["bpp_file"] = float(np.mean([r["bpp_file"] for r in rows]))
    for name in metrics:
        values = [r[name] for r in rows]
        missing = sum(v is None for v in values)
        if missing:
            point[name] = None
            point[f"{name}_missing"] = (f"{missing} of {len(values)} images have no {name}"
                                        + (" (smaller side below 161 px)" if name == "ms_ssim" else ""))
        else:
            point[name] = float(np.mean(values))
    for name in TIME_COLUMNS:
        point[name] = float(np.mean([r[name] for r in rows]))
    point["images"] = len(rows)
    if len(rows) != n_images:
        point["incomplete"] = f"{len(rows)} of {n_images} images"
    return point


# ----------------------------------------------------------------------------------------------------------------
# The runner

def evaluate(codec_spec: str, images_dir, out_dir, metrics=DEFAULT_METRICS, fid: bool = True, device="cpu",
             qualities=None, results_dir=None, resume: bool = True, progress: bool = True, cache_dir=None,
             metric_weights: dict | None = None, fid_min_patches: int = FID_MIN_PATCHES,
             command: str | None = None, protocol: str = "ours", vae=None, zonly=()) -> dict:
    """Evaluates one codec on every image of `images_dir`; writes files, reconstructions, CSV and summary JSON
    (see the module docstring) and returns the summary.

    metrics: any of psnr, ms_ssim, lpips, dists; fid: FID/KID on patches per rate point; device: torch device of
    the metric networks and the OneDC models; qualities: a baseline's sweep instead of its default one;
    results_dir: where the CSV and JSON go (default out_dir); resume: keep the rows already in the CSV;
    cache_dir / metric_weights: the provisioned metric weights / your own backbone files ({"lpips": path, ...,
    "inception": path}); fid_min_patches: FID/KID are reported missing (and not computed: each FID costs a
    2048 x 2048 matrix square root, about a minute on one CPU core) when the images give fewer 256-px patches
    (default 2, the protocol's own minimum; KID needs metrics.KID_SUBSET_SIZE in any case);
    command: the command line recorded in the summary; protocol: "ours" or "release" (how bpp is counted, see
    the module docstring); vae, zonly: for release checkpoint folders among the models.
    """
    from tqdm import tqdm

    from ..data.folders import image_caption
    from . import metrics as M

    started = time.perf_counter()
    metrics = tuple(dict.fromkeys(metrics))
    unknown = set(metrics) - set(DEFAULT_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; available: {', '.join(DEFAULT_METRICS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    images = list_images(images_dir)
    codec = parse_codec(codec_spec, qualities, device, vae, zonly)
    out_dir = Path(out_dir)
    results_dir = Path(results_dir) if results_dir is not None else out_dir
    files_dir, recon_dir = out_dir / codec.tag / "files", out_dir / codec.tag / "recon"
    for folder in (results_dir, files_dir, recon_dir):
        folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = results_dir / f"{codec.tag}.csv", results_dir / f"{codec.tag}.json"
    columns = (*FIXED_COLUMNS, *(RELEASE_COLUMNS if protocol == "release" else ()), *metrics, *TIME_COLUMNS)

    # Metric networks first: missing weights fail before any encoding.
    image_metrics = M.ImageMetrics(metrics, metric_weights, cache_dir, device) if metrics else None
    patches = {name: len(M.patch_boxes(*_image_size(path))) for name, path in images}
    fid_skipped = None
    if fid and sum(patches.values()) < max(fid_min_patches, 2):
        fid_skipped = (f"FID/KID not computed: the images give {sum(patches.values())} patches of "
                       f"{M.PATCH}x{M.PATCH}, fewer than the minimum of {max(fid_min_patches, 2)} set for this run")
    fid_features = None
    if fid and fid_skipped is None:
        fid_features = _ReferenceCache(M.InceptionFeatures((metric_weights or {}).get("inception"), cache_dir,
                                                           device))

    previous = _previous_rows(csv_path, columns, metrics) if resume else {}
    rows: dict[tuple[str, str], dict] = {}
    fid_active = fid_features is not None
    accumulators = {str(rate): M.PatchFIDKID(features=fid_features) for rate in codec.rates} if fid_active else {}
    warmed = set()
    bar = tqdm(total=len(images) * len(codec.rates), desc=codec.tag, unit="img", disable=not progress)
    try:
        for name, path in images:
            reference = _load_uint8(path)
            caption = image_caption(path)  # what a text-guided OneDC writes into its file
            if fid_active:
                fid_features.register(M.extract_patches(reference))
            for rate in codec.rates:
                stem = codec.file_stem(name, rate)
                bitstream_path = files_dir / f"{stem}.{codec.extension}"
                recon_path = recon_dir / f"{stem}.png"
                row = _reusable(previous.get((str(rate), name)), reference, bitstream_path, recon_path,
                                fid_active)
                if row is not None:
                    reconstruction = _load_uint8(recon_path) if fid_active else None
                else:
                    warm_key = rate if codec.kind == "onedc" else None  # one warm-up per model / per codec
                    if warm_key not in warmed:  # the first call pays one-off costs (allocations, lazy imports)
                        codec.decode(rate, codec.encode(rate, reference, caption))
                        warmed.add(warm_key)
                    row, reconstruction = _run_one(codec, rate, name, reference, bitstream_path, recon_path,
                                                   image_metrics, out_dir, caption, protocol)
                rows[(str(rate), name)] = row
                if fid_active:
                    accumulators[str(rate)].add(reference, reconstruction, name)
                _write_csv(csv_path, columns, codec, images, rows)
                bar.update()
    finally:
        bar.close()

    points = []
    for rate in codec.rates:
        rate_rows = [rows[(str(rate), name)] for name, _ in images if (str(rate), name) in rows]
        point = {"rate": rate, **_mean_point(rate_rows, metrics, len(images))}
        if fid:
            if fid_active:
                result = accumulators[str(rate)].result()
            else:
                result = {"patches": sum(patches.values()), "patches_per_image": dict(patches), "fid": None,
                          "kid": None, "kid_subset_size": M.KID_SUBSET_SIZE, "kid_subsets": M.KID_SUBSETS,
                          "fid_missing": fid_skipped, "kid_missing": fid_skipped}
            point["fid"], point["kid"] = result.pop("fid"), result.pop("kid")
            point["fid_kid"] = result
        points.append(point)

    summary = {
        "format": SUMMARY_FORMAT,
        "codec": codec.tag,
        "label": codec.label,
        "spec": codec.spec,
        "kind": codec.kind,
        "codec_info": codec.info,
        "images": {"dir": str(images_dir), "count": len(images), "names": [n for n, _ in images],
                   "sizes": {n: [rows[(str(codec.rates[0]), n)]["height"], rows[(str(codec.rates[0]), n)]["width"]]
                             for n, _ in images},
                   "sha256": {n: sha256_file(p) for n, p in images}},
        "metrics": list(metrics),
        "points": points,
        "protocol": _protocol(protocol, metrics, fid, fid_min_patches, image_metrics, fid_features, cache_dir),
        "versions": _versions(codec),
        "device": _device_info(device),
        "git_commit": git_commit(),
        "git_dirty": _git_dirty(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "csv": csv_path.name,
        "files": os.path.relpath(files_dir, results_dir),
        "reconstructions": os.path.relpath(recon_dir, results_dir),
        "elapsed_s": time.perf_counter() - started,
        "warnings": codec.warnings,
    }
    summary = json_safe(summary)
    atomic_write(json_path, (json.dumps(summary, indent=1, allow_nan=False) + "\n").encode())
    return summary


def _previous_rows(csv_path: Path, columns, metrics) -> dict:
    if not csv_path.is_file():
        return {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != tuple(columns):
            raise ValueError(f"{csv_path} has the columns {reader.fieldnames}, this run writes {list(columns)} "
                             "(other metrics?): use another output folder, or resume=False (--no-resume) to "
                             "start again")
        return {(r["rate"], r["name"]): _parse_row(r, metrics) for r in reader}


def _reusable(row, reference, bitstream_path: Path, recon_path: Path, fid: bool):
    """A previous row when its files are still there and fit the image; else None (the row is redone)."""
    if row is None or not bitstream_path.is_file() or bitstream_path.stat().st_size != row["bytes"]:
        return None
    if (row["height"], row["width"]) != reference.shape[:2] or (fid and not recon_path.is_file()):
        return None
    return row


def _run_one(codec: _Codec, rate, name: str, reference: np.ndarray, bitstream_path: Path, recon_path: Path,
             image_metrics, out_dir: Path, caption: str = "", protocol: str = "ours") -> tuple[dict, np.ndarray]:
    from ..bitstream import read_bytes

    t0 = time.perf_counter()
    data = codec.encode(rate, reference, caption)
    enc_s = time.perf_counter() - t0
    bitstream_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(bitstream_path, data)
    stored = read_bytes(bitstream_path)  # decode what was written
    num_bytes = bitstream_path.stat().st_size
    if stored != data or num_bytes != len(data):
        raise OSError(f"{bitstream_path}: the file read back differs from the bytes written")
    t0 = time.perf_counter()
    reconstruction = np.array(codec.decode(rate, stored), dtype=np.uint8, order="C")  # writable copy
    dec_s = time.perf_counter() - t0
    if reconstruction.shape != reference.shape:
        raise ValueError(f"{codec.tag} {name} at {rate}: decoded {reconstruction.shape}, expected {reference.shape}")
    _save_png(reconstruction, recon_path)
    height, width = reference.shape[:2]
    values = image_metrics(reference, reconstruction) if image_metrics is not None else {}
    row = {"codec": codec.tag, "rate": rate, "name": name, "file": os.path.relpath(bitstream_path, out_dir),
           "height": height, "width": width, "bytes": num_bytes, "payload_bytes": codec.payload_bytes(stored),
           "bpp": 8.0 * num_bytes / (height * width), "enc_s": enc_s, "dec_s": dec_s}
    if protocol == "release":  # computed after the timings, never inside them
        row["release_bits"] = codec.release_bits(rate, reference, stored)
        row["bpp_file"], row["bpp"] = row["bpp"], row["release_bits"] / (height * width)
    row.update({k: v for k, v in values.items() if k not in ("height", "width")})
    return row, reconstruction


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def _write_csv(csv_path: Path, columns, codec: _Codec, images, rows: dict) -> None:
    """The rows of this run's sweep done so far, in sweep order (rate, then image); rows of a previous run at
    rates outside this sweep are not carried over."""
    ordered = [rows[(str(rate), name)] for rate in codec.rates for name, _ in images if (str(rate), name) in rows]
    atomic_write(csv_path, _csv_text(columns, ordered).encode())
