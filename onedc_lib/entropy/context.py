"""The four-step schedule of y (spec section 3): which quarter of y each step codes.

Every step codes one quarter of y: each quarter of the channels ("group") codes one of the four 2x2
spatial phases, and over the four steps every group sees every phase once. Later steps see the y_hat
decoded so far, so the model is autoregressive across steps but parallel within a step. The networks that
predict each step's parameters (hyper-decoder, prior) live with the models (models/prior.py): coding knows
no networks.
"""
import torch

NUM_STEPS = 4
# PHASE_OF_GROUP[step][group] = phase coded by that channel group at that step; phase p is the
# 2x2 position (row p // 2, column p % 2).
PHASE_OF_GROUP = ((0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2))


def four_step_masks(channels: int, height: int, width: int, step: int,
                    device: torch.device | None = None) -> torch.Tensor:
    """Bool mask (channels, height, width) of the y elements coded at `step`; broadcasts over batch."""
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4, got {channels}")
    rows = torch.arange(height, device=device) % 2
    cols = torch.arange(width, device=device) % 2
    phase = rows[:, None] * 2 + cols[None, :]  # (H, W)
    group_phase = torch.tensor(PHASE_OF_GROUP[step], device=device).repeat_interleave(channels // 4)
    return phase[None] == group_phase[:, None, None]


def fold_quarters(x: torch.Tensor) -> torch.Tensor:
    """Sum the four channel quarters of a step-masked tensor: the dense (B, C/4, H, W) the coder sees.

    At each position exactly one quarter is active in a step, so the sum is exact.
    """
    b, c, h, w = x.shape
    return x.reshape(b, 4, c // 4, h, w).sum(dim=1)
