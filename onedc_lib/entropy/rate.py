"""Rate estimate of y under the four-step Gaussian model (the training loss term and eval bpp)."""
import math

import torch

from onedc_lib.entropy.tables import SCALE_MIN


def _normal_cdf(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x * scales.reciprocal() / math.sqrt(2)))


def gaussian_bits(values: torch.Tensor, scales: torch.Tensor, training: bool) -> torch.Tensor:
    """Bits of each integer-centred residual under a zero-mean Gaussian, as the release estimates them.

    Training: scale floored at 0.11 (the smallest coding table, so the estimate never promises fewer
    bits than the coder can deliver) and probability floored at 1e-9; the erfc form on |v| keeps the
    tail accurate. Eval: plain CDF difference with the scale clamped at 1e-5.
    Both: bits = max(0, -log2(p + 1e-5)).
    """
    if training:
        scales = scales.clamp(min=SCALE_MIN)
        magnitude = values.abs()
        denom = scales * math.sqrt(2)
        upper = torch.erfc(-(0.5 - magnitude) / denom)
        lower = torch.erfc(-(-0.5 - magnitude) / denom)
        probs = (0.5 * (upper - lower)).clamp(min=1e-9)
    else:
        scales = scales.clamp(min=1e-5)
        probs = _normal_cdf(values + 0.5, scales) - _normal_cdf(values - 0.5, scales)
    return (-torch.log2(probs + 1e-5)).clamp(min=0)
