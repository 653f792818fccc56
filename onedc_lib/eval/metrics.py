"""Evaluation metrics with the release's protocol (spec section 8), on library implementations only.

Images are float tensors [3, H, W] (or [1, 3, H, W]) in [0, 1], as `onedc_lib.image_io.load_image` returns them,
or uint8 arrays [H, W, 3]. Every metric first rounds both images to 8 bits, so in-memory results equal the ones
computed from the PNG files.

* PSNR: per image, on 8-bit values (peak 255); the dataset figure is the mean of per-image PSNRs. Identical
  images give +inf.
* MS-SSIM: pytorch_msssim.ms_ssim, data_range 1, its defaults (5 scales, 11-px Gaussian window). It needs the
  smaller side > 160 px (four downsamplings); smaller images get None (missing), never a number on a different
  scale count.
* LPIPS: lpips 0.1.4, AlexNet, v0.1 linear layers from the lpips wheel, inputs mapped to [-1, 1], whole image.
* DISTS: DISTS_pytorch 0.1 (its alpha/beta from the wheel's weights.pt), inputs in [0, 1], whole image, no resize.
* FID / KID: InceptionV3 (TF 2015-12-05) pool features of 256x256 patches: grid 1 = non-overlapping patches from
  (0, 0), remainders dropped; grid 2 = the same on the image cropped to [128:, 128:], only when both sides >= 384.
  Features are computed as clean-fid's "clean" mode does (PIL bicubic resize to 299 on float values, then
  (x - 128) / 128); FID is `cleanfid.fid.fid_from_feats`, KID `cleanfid.fid.kernel_distance` (100 subsets of
  `kid_subset_size` patches, seeded). KID needs at least `kid_subset_size` (default 1000, the subset size of
  clean-fid and torchmetrics) patches on each side; with fewer it is reported as None with the reason. Kodak gives
  8 patches per image, 192 in all: FID yes, KID missing.

Backbone weights come from `onedc_lib.eval.backbones` (provisioned and verified, or files you pass); a metric
whose weights are missing raises MetricWeightsError and never runs with random weights.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from . import backbones as W

PATCH = 256
GRID2_OFFSET = 128
GRID2_MIN_SIDE = 384
LPIPS_MIN_SIDE = 31  # AlexNet's third pooling needs 3x3 input
MS_SSIM_MIN_SIDE = 161  # pytorch_msssim asserts smaller side > (11 - 1) * 2**4
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100

PROTOCOL = {
    "images": "8-bit RGB; every metric on both images rounded to 8 bits",
    "psnr": "mean of per-image PSNR on 8-bit values (peak 255)",
    "ms_ssim": f"pytorch_msssim.ms_ssim, data_range 1, 5 scales; None when the smaller side < {MS_SSIM_MIN_SIDE}",
    "lpips": "lpips 0.1.4, net='alex', version 0.1, inputs in [-1, 1]",
    "dists": "DISTS_pytorch 0.1, inputs in [0, 1], no resize",
    "fid_kid": (f"{PATCH}x{PATCH} patches, grid 1 from (0, 0), grid 2 from ({GRID2_OFFSET}, {GRID2_OFFSET}) when "
                f"both sides >= {GRID2_MIN_SIDE}; TF Inception 2015-12-05 pool3 features, clean-fid 'clean' "
                f"resize; clean-fid fid_from_feats / kernel_distance; KID missing below the subset size"),
}


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_uint8(image) -> np.ndarray:
    """[3, H, W] / [1, 3, H, W] float in [0, 1] (or uint8 [H, W, 3]) -> uint8 [H, W, 3], rounding to nearest."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        return image
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a torch tensor or a numpy array, got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W], got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.permute(1, 2, 0).cpu().numpy()
    return image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def _pair(ref, dist) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_uint8(ref), to_uint8(dist)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape[0]}x{a.shape[1]} and {b.shape[0]}x{b.shape[1]} (H x W)")
    return a, b


def _tensor01(array: np.ndarray, device) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(array).to(device).permute(2, 0, 1)[None].float().div(255).contiguous()


def psnr(ref, dist) -> float:
    a, b = _pair(ref, dist)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ms_ssim(ref, dist) -> float | None:
    """MS-SSIM (pytorch_msssim, data_range 1) or None when the smaller side is below MS_SSIM_MIN_SIDE."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    a, b = _pair(ref, dist)
    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    x, y = _tensor01(a, "cpu").double(), _tensor01(b, "cpu").double()
    return float(_ms_ssim(x, y, data_range=1.0, size_average=True))


class LPIPSMetric:
    """LPIPS (lpips 0.1.4, AlexNet, v0.1). weights: torchvision AlexNet weights file; None: provisioned."""

    def __init__(self, weights: str | os.PathLike | None = None, cache_dir=None, device=None):
        import lpips

        features, self.provenance = W.load_features_state_dict("alexnet", weights, cache_dir)
        self.device = _device(device)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecation notes on `pretrained`
            # pnet_rand=True: the trunk is built without touching the network; the real weights are loaded next.
            model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        W.load_sliced(model, "net.", features, "LPIPS", "alexnet")
        self.model = model.eval().to(self.device)
        self.provenance = {**self.provenance, "lpips": W.lpips_version(), "linear_layers": "lpips wheel v0.1/alex.pth"}

    @torch.no_grad()
    def __call__(self, ref, dist) -> float:
        a, b = _pair(ref, dist)
        if min(a.shape[:2]) < LPIPS_MIN_SIDE:
            raise ValueError(f"LPIPS (AlexNet) needs both sides >= {LPIPS_MIN_SIDE} px, got {a.shape[0]}x{a.shape[1]}")
        x, y = (_tensor01(t, self.device) * 2 - 1 for t in (a, b))
        return float(self.model(x, y).reshape(()))


class DISTSMetric:
    """DISTS (DISTS_pytorch 0.1). weights: torchvision VGG16 weights file; None: provisioned."""

    def __init__(self, weights: str | os.PathLike | None = None, cache_dir=None, device=None):
        from importlib.resources import files
        from types import SimpleNamespace
        from unittest import mock

        import torchvision
        from DISTS_pytorch import DISTS_pt

        features, self.provenance = W.load_features_state_dict("vgg16", weights, cache_dir)
        self.device = _device(device)
        # DISTS_pt builds `models.vgg16(pretrained=True)`, which would try to download; give it an unweighted
        # VGG16 and load the verified weights after. Its alpha/beta come from the wheel's weights.pt (it looks for
        # that file under sys.prefix, so it is loaded here from the package itself).
        unweighted = SimpleNamespace(vgg16=lambda **_: torchvision.models.vgg16(weights=None))
        with mock.patch.object(DISTS_pt, "models", unweighted), torch.random.fork_rng(devices=[]):
            model = DISTS_pt.DISTS(load_weights=False)
        ab_path = files("DISTS_pytorch") / "weights.pt"
        ab = torch.load(str(ab_path), map_location="cpu", weights_only=True)
        with torch.no_grad():
            model.alpha.copy_(ab["alpha"])
            model.beta.copy_(ab["beta"])
        W.load_sliced(model, "stage", features, "DISTS", "vgg16")
        self.model = model.eval().to(self.device)
        self.provenance = {**self.provenance, "alpha_beta": "DISTS_pytorch wheel weights.pt",
                           "alpha_beta_sha256": W.sha256_file(str(ab_path))}

    @torch.no_grad()
    def __call__(self, ref, dist) -> float:
        a, b = _pair(ref, dist)
        return float(self.model(_tensor01(a, self.device), _tensor01(b, self.device)).reshape(()))


# --------------------------------------------------------------------------------------------------------------
# FID / KID on patches

def patch_boxes(height: int, width: int) -> list[tuple[int, int]]:
    """Top-left corners of the 256x256 patches of an H x W image (grid 1, then grid 2 when both sides >= 384)."""
    boxes = [(top, left) for top in range(0, height - PATCH + 1, PATCH) for left in range(0, width - PATCH + 1, PATCH)]
    if height >= GRID2_MIN_SIDE and width >= GRID2_MIN_SIDE:
        boxes += [(top, left) for top in range(GRID2_OFFSET, height - PATCH + 1, PATCH)
                  for left in range(GRID2_OFFSET, width - PATCH + 1, PATCH)]
    return boxes


def extract_patches(image, boxes=None) -> np.ndarray:
    """uint8 [N, 256, 256, 3] patches of an image at `boxes` (default: patch_boxes of its size)."""
    array = to_uint8(image)
    boxes = patch_boxes(*array.shape[:2]) if boxes is None else boxes
    if not boxes:
        return np.zeros((0, PATCH, PATCH, 3), np.uint8)
    return np.stack([array[t:t + PATCH, l:l + PATCH] for t, l in boxes])


class InceptionFeatures:
    """2048-d pool features of uint8 [N, H, W, 3] images the way clean-fid's "clean" mode computes them."""

    def __init__(self, weights: str | os.PathLike | None = None, cache_dir=None, device=None, batch_size: int = 32):
        from cleanfid.resize import build_resizer

        self.device = _device(device)
        self.layers, self.provenance = W.load_inception(weights, cache_dir, self.device)
        self.resize = build_resizer("clean")
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.resize(im) for im in images[start:start + self.batch_size]])  # float [0, 255]
            x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(self.device)
            out.append(self.layers((x - 128) / 128).reshape(len(batch), 2048).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)


@contextlib.contextmanager
def _numpy_seed(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass
class PatchFIDKID:
    """Accumulates Inception features of the reference and distorted patches of image pairs; `result()` gives
    FID, KID and the patch counts."""
    features: InceptionFeatures | None = None
    kid_subset_size: int = KID_SUBSET_SIZE
    kid_subsets: int = KID_SUBSETS
    seed: int = 0
    patches_per_image: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kid_subset_size < 2:
            raise ValueError("kid_subset_size must be at least 2")
        self._ref, self._dist = [], []

    def add(self, ref, dist, name: str | None = None) -> int:
        a, b = _pair(ref, dist)
        if self.features is None:
            self.features = InceptionFeatures()
        boxes = patch_boxes(*a.shape[:2])
        if boxes:
            self._ref.append(self.features(extract_patches(a, boxes)))
            self._dist.append(self.features(extract_patches(b, boxes)))
        self.patches_per_image[name if name is not None else str(len(self.patches_per_image))] = len(boxes)
        return len(boxes)

    @property
    def num_patches(self) -> int:
        return sum(len(f) for f in self._ref)

    def result(self) -> dict:
        from cleanfid.fid import fid_from_feats, kernel_distance

        n = self.num_patches
        out = {"patches": n, "patches_per_image": dict(self.patches_per_image), "fid": None, "kid": None,
               "kid_subset_size": self.kid_subset_size, "kid_subsets": self.kid_subsets}
        if n < 2:
            out["fid_missing"] = f"FID needs at least 2 patches, have {n}"
            return out
        ref, dist = np.concatenate(self._ref), np.concatenate(self._dist)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes scipy's deprecated `disp`
            out["fid"] = float(fid_from_feats(ref, dist))
        if n < self.kid_subset_size:
            out["kid_missing"] = f"KID needs at least {self.kid_subset_size} patches per side, have {n}"
        else:
            with _numpy_seed(self.seed):
                out["kid"] = kernel_distance(ref, dist, num_subsets=self.kid_subsets,
                                             max_subset_size=self.kid_subset_size)
        return out


# --------------------------------------------------------------------------------------------------------------
# Per-image metrics

class ImageMetrics:
    """psnr, ms_ssim, lpips, dists of image pairs; the networks are built once.

    weights: {"lpips": path, "dists": path} for your own backbone files; cache_dir: the provisioned cache.
    """
    NAMES = ("psnr", "ms_ssim", "lpips", "dists")

    def __init__(self, metrics=NAMES, weights: dict | None = None, cache_dir=None, device=None):
        unknown = set(metrics) - set(self.NAMES)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; available: {', '.join(self.NAMES)}")
        weights = weights or {}
        self.metrics = tuple(metrics)
        self.lpips = LPIPSMetric(weights.get("lpips"), cache_dir, device) if "lpips" in metrics else None
        self.dists = DISTSMetric(weights.get("dists"), cache_dir, device) if "dists" in metrics else None

    def __call__(self, ref, dist) -> dict:
        a, b = _pair(ref, dist)
        out = {"height": a.shape[0], "width": a.shape[1]}
        for name in self.metrics:
            out[name] = {"psnr": psnr, "ms_ssim": ms_ssim, "lpips": self.lpips, "dists": self.dists}[name](a, b)
        return out

    @property
    def provenance(self) -> dict:
        return {name: m.provenance for name, m in (("lpips", self.lpips), ("dists", self.dists)) if m is not None}


def image_metrics(ref, dist, **kwargs) -> dict:
    """One-off convenience: ImageMetrics(**kwargs)(ref, dist)."""
    return ImageMetrics(**kwargs)(ref, dist)
