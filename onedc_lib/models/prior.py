"""Hyper-decoder and four-step context model of y (spec section 3): the networks behind the entropy parameters.

The schedule they follow (which quarter of y each step codes) is entropy/context.py's.
Attribute names are the release's top-level names (`hyper_dec`, `y_prior_fusion`, ...): a codec that
subclasses `FourStepPrior` (as CompressAI models subclass CompressionModel) and owns a `HyperDecoder` as
`hyper_dec` loads release checkpoints with strict=True. Nothing here hard-codes a dtype, so the entropy
parameters can be computed in float64 for machine-independent streams.
"""
from typing import Callable, NamedTuple

import torch
from torch import nn

from .. import progress
from ..entropy.context import NUM_STEPS, fold_quarters, four_step_masks
from .blocks import DepthConvBlock4, ResidualBlockUpsample, conv1x1


class HyperDecoder(nn.Module):
    """h_dec: z_hat -> (entropy parameters at 4x the resolution, z_semantic at z's resolution).

    Both outputs share the 1x1 + LeakyReLU stem: the entropy branch runs on z_semantic itself.
    """

    def __init__(self, z_ch: int, channels: int):
        super().__init__()
        self.feat_in = nn.Sequential(conv1x1(z_ch, channels), nn.LeakyReLU(0.01))
        self.to_entropy = nn.Sequential(
            DepthConvBlock4(channels, channels),
            ResidualBlockUpsample(channels, channels),
            DepthConvBlock4(channels, channels),
            ResidualBlockUpsample(channels, channels),
            DepthConvBlock4(channels, channels),
        )

    def forward(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_semantic = self.feat_in(z_hat)
        return self.to_entropy(z_semantic), z_semantic


class PriorEncoding(NamedTuple):
    """Encoder side of the four steps: y_hat and, per step, the dense (B, C/4, H, W) coder inputs."""
    y_hat: torch.Tensor
    symbols: list[torch.Tensor]  # integer-valued residuals round(y - mean)
    scales: list[torch.Tensor]   # raw network scales, before the table-index map


class PriorOutput(NamedTuple):
    """Differentiable forward for training and rate estimation."""
    y_hat: torch.Tensor        # straight-through rounded in training, hard-rounded in eval, plus mean
    residual: torch.Tensor     # y - mean: with U(-0.5, 0.5) noise in training, rounded in eval
    scales: torch.Tensor       # the scale of every element, from the step that coded it


class FourStepPrior(nn.Module):
    """Four-step spatial-channel context model over N-channel y, conditioned on the hyper parameters."""

    def __init__(self, channels: int):
        super().__init__()
        c, c2 = channels, 2 * channels
        self.channels = channels
        self.y_prior_fusion = nn.Sequential(DepthConvBlock4(c, c2), DepthConvBlock4(c2, c2))
        self.y_spatial_prior_reduction = conv1x1(c2, c)
        self.y_spatial_prior_adaptor_1 = DepthConvBlock4(c2, c2)
        self.y_spatial_prior_adaptor_2 = DepthConvBlock4(c2, c2)
        self.y_spatial_prior_adaptor_3 = DepthConvBlock4(c2, c2)
        self.y_spatial_prior = nn.Sequential(*(DepthConvBlock4(c2, c2) for _ in range(3)))

    def fuse(self, hyper_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused params: step-0 scales || means, common params fed to steps 1-3)."""
        fused = self.y_prior_fusion(hyper_params)
        return fused, self.y_spatial_prior_reduction(fused)

    def step_params(self, step: int, fused: torch.Tensor, common: torch.Tensor,
                    y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (scales, means) for all N channels at `step`, given y_hat decoded so far (zeros elsewhere).

        Scales are used as they come out of the network: no exp or softplus.
        """
        if step == 0:
            out = fused
        else:
            adaptor = getattr(self, f"y_spatial_prior_adaptor_{step}")
            out = self.y_spatial_prior(adaptor(torch.cat([y_hat, common], dim=1)))
        scales, means = out.chunk(2, dim=1)
        return scales, means

    def _masks(self, like: torch.Tensor) -> list[torch.Tensor]:
        _, c, h, w = like.shape
        return [four_step_masks(c, h, w, k, like.device) for k in range(NUM_STEPS)]

    def encode_steps(self, y: torch.Tensor, hyper_params: torch.Tensor) -> PriorEncoding:
        """Quantise y step by step: symbols = round(y - mean) (half to even) on each step's quarter."""
        fused, common = self.fuse(hyper_params)
        y = y.to(fused.dtype)
        y_hat = torch.zeros_like(y)
        symbols, scales_out = [], []
        for step, mask in enumerate(self._masks(y)):
            scales, means = self.step_params(step, fused, common, y_hat)
            q = torch.where(mask, torch.round(y - means), 0.0)
            y_hat = y_hat + torch.where(mask, q + means, 0.0)
            symbols.append(fold_quarters(q))
            scales_out.append(fold_quarters(torch.where(mask, scales, 0.0)))
            progress.done()
        return PriorEncoding(y_hat, symbols, scales_out)

    def decode_steps(self, hyper_params: torch.Tensor,
                     decode_fn: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Rebuild y_hat; decode_fn(step, scales) returns that step's (B, C/4, H, W) symbols.

        For the z-only model pass a decode_fn returning zeros: y_hat is then the predicted means.
        """
        fused, common = self.fuse(hyper_params)
        b, _, h, w = fused.shape
        y_hat = fused.new_zeros(b, self.channels, h, w)
        for step, mask in enumerate(self._masks(y_hat)):
            scales, means = self.step_params(step, fused, common, y_hat)
            symbols = decode_fn(step, fold_quarters(torch.where(mask, scales, 0.0)))
            q = torch.where(mask, symbols.to(means.dtype).repeat(1, 4, 1, 1), 0.0)
            y_hat = y_hat + torch.where(mask, q + means, 0.0)
            progress.done()
        return y_hat

    def forward(self, y: torch.Tensor, hyper_params: torch.Tensor) -> PriorOutput:
        """Training: straight-through rounding for y_hat, noisy residual for the rate. Eval: hard rounding."""
        fused, common = self.fuse(hyper_params)
        y = y.to(fused.dtype)
        y_hat = torch.zeros_like(y)
        residual = torch.zeros_like(y)
        scales_hat = torch.zeros_like(y)
        for step, mask in enumerate(self._masks(y)):
            scales, means = self.step_params(step, fused, common, y_hat)
            res = y - means
            if self.training:
                q = res + (torch.round(res) - res).detach()
                rate_res = res + torch.empty_like(res).uniform_(-0.5, 0.5)
            else:
                q = rate_res = torch.round(res)
            y_hat = y_hat + torch.where(mask, q + means, 0.0)
            residual = residual + torch.where(mask, rate_res, 0.0)
            scales_hat = scales_hat + torch.where(mask, scales, 0.0)
        return PriorOutput(y_hat, residual, scales_hat)
