"""Finite scalar quantisation of z with the release's frozen index semantics.

The z indices are written raw into the bitstream (14 bits each), so the bound, the rounding and the index
order below are part of the file format and must not change.
"""
import math

import torch
from torch import nn


class FSQ(nn.Module):
    """FSQ over the channel dimension of a (B, C, H, W) tensor, C = len(levels), even levels only.

    half_l = (L - 1) * float32(1 + 1e-3) / 2 is computed in float32 (1.50150013 for L = 4, not 1.5015).
    Channel 0 is the least significant digit of the index. The module has no parameters and its
    buffers are non-persistent, as in the release checkpoints.
    """

    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        if any(level % 2 for level in levels):
            raise ValueError(f"FSQ here supports even levels only, got {levels}")
        levels_t = torch.tensor(levels, dtype=torch.int64)
        basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.int64), levels_t[:-1]]), 0)
        # Integer buffers only: module.to(dtype) must not be able to change the float32 bound.
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        self.eps = eps
        self.codebook_size = math.prod(levels)  # from the list: no .item(), so meta construction works

    def _channel_view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """tanh squashing so that rounding yields exactly L values per channel; always float32."""
        one_plus_eps = torch.tensor(1 + self.eps, dtype=torch.float32, device=z.device)
        half_l = self._channel_view((self.levels - 1).float() * one_plus_eps / 2)
        shift = torch.atanh(0.5 / half_l)  # even levels: offset 0.5
        return torch.tanh(z.float() + shift) * half_l - 0.5

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (codes in {-1, -0.5, 0, 0.5} for L = 4, int32 indices of shape (B, H, W))."""
        with torch.autocast(z.device.type, enabled=False):
            bounded = self.bound(z)
            rounded = torch.round(bounded)  # half to even, as the release
            indices = self._rounded_to_indices(rounded.detach())
            if self.training:
                rounded = bounded + (rounded - bounded).detach()
            codes = rounded / self._channel_view(self.levels // 2)
        return codes.to(z.dtype), indices

    def _rounded_to_indices(self, rounded: torch.Tensor) -> torch.Tensor:
        digits = rounded.long() + self._channel_view(self.levels // 2)
        return (digits * self._channel_view(self.basis)).sum(dim=1).to(torch.int32)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) integer indices -> (B, C, H, W) float32 codes; the decoder's inverse of forward."""
        digits = (indices.long().unsqueeze(1) // self._channel_view(self.basis)) % self._channel_view(self.levels)
        half_width = self._channel_view(self.levels // 2)
        return (digits - half_width).float() / half_width.float()
