"""The weighted sums of the two training stages (spec section 6); every term comes in unweighted."""
from __future__ import annotations

import torch

from ..config import LossConfig
from .rd import lmbda_at


def stage1_loss(*, l1: torch.Tensor, lpips: torch.Tensor, bpp: torch.Tensor, distill: torch.Tensor | float,
                step: int, cfg: LossConfig) -> torch.Tensor:
    """L1 + lpips_weight * LPIPS + lambda(step) * bpp_y + distill_weight * distillation.

    lambda(step) is the quadratic warm-up `lmbda_at(step, cfg.lmbda, cfg.lmbda_warmup_steps, cfg.lmbda_start)`;
    distill is `DistillTerms.loss` (unweighted; 0 when the head is not trained).
    """
    lmbda = lmbda_at(step, cfg.lmbda, cfg.lmbda_warmup_steps, cfg.lmbda_start)
    return l1 + cfg.lpips_weight * lpips + lmbda * bpp + cfg.distill_weight * distill


def stage2_generator_loss(*, dmd: torch.Tensor, gan: torch.Tensor, l1: torch.Tensor, lpips: torch.Tensor,
                          cfg: LossConfig) -> torch.Tensor:
    """dmd_weight * DMD + gan_weight * GAN + stage2_pixel_weight * (L1 + lpips_weight * LPIPS)
    (1.0, 1e-3, 0.625, 1.0 by default). dmd: `DMDOutput.loss`; gan: `gan_generator_loss`."""
    pixel = l1 + cfg.lpips_weight * lpips
    return cfg.dmd_weight * dmd + cfg.gan_weight * gan + cfg.stage2_pixel_weight * pixel
