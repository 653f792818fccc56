"""The semantic distillation head (training only, spec section 5): predicts the teacher's tokens from c.

c (768 ch at 1/64) -> up_sample to 1/32 -> Swin-style (shifted-)window transformer -> an MLP head giving logits
over the MaskGIT codebook. Names, shapes and order follow the release's `Codeformer(in_ch=768,
codebook_size=1024)` (../../shared/compat/manifest_model_2_distillation_head.json): do not rename them.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..config import HeadConfig
from .blocks import DepthConvBlock4, conv1x1


def shift_masks(window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper_lower, left_right) [window^2, window^2]: 0, or -inf where query and key lie on opposite sides of the
    cyclic wrap inside a shifted window.

    Tokens are numbered row-major in a window. After rolling the map by -window//2, the last window row (column)
    holds in its last window//2 rows (columns) content wrapped around from the opposite border.
    """
    wrapped = torch.arange(window) >= window - window // 2
    row_side = wrapped.repeat_interleave(window)  # side of token r * window + c, by its row r
    col_side = wrapped.repeat(window)  # ... by its column c

    def mask(side: torch.Tensor) -> torch.Tensor:
        return torch.zeros(window**2, window**2).masked_fill(side[:, None] != side[None, :], float("-inf"))

    return mask(row_side), mask(col_side)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, optionally cyclically shifted by window//2.

    `to_qkv` packs q, k, v one after another, each as (head, head_dim); scale head_dim^-1/2.
    """

    def __init__(self, width: int, num_heads: int, window: int, shifted: bool, position_bias: bool):
        super().__init__()
        n = window * window
        self.num_heads = num_heads
        self.window = window
        self.shift = window // 2 if shifted else 0
        # A learned bias for every (query, key) position pair of a window.
        self.pos_embedding = nn.Parameter(nn.init.trunc_normal_(torch.empty(n, n), std=0.02)) if position_bias else None
        if shifted:
            # Parameters without gradient, not buffers: the release saves them in its checkpoint.
            upper_lower, left_right = shift_masks(window)
            self.upper_lower_mask = nn.Parameter(upper_lower, requires_grad=False)
            self.left_right_mask = nn.Parameter(left_right, requires_grad=False)
        self.to_qkv = nn.Linear(width, 3 * width, bias=False)
        self.to_out = nn.Linear(width, width)

    def _attention_bias(self, rows: int, cols: int, valid: torch.Tensor | None, dtype: torch.dtype):
        """[rows, cols, 1, n, n] additive bias per window, or None when there is nothing to add.

        Padded keys (valid False) get the dtype's lowest finite value, not -inf, so that a padded query whose
        only unmasked keys are padding still has a finite softmax (its output is cropped anyway).
        """
        if self.pos_embedding is None and not self.shift and valid is None:
            return None
        n = self.window**2
        bias = self.to_out.weight.new_zeros(rows, cols, n, n)
        if self.shift:
            bias[-1, :] += self.upper_lower_mask
            bias[:, -1] += self.left_right_mask
        if self.pos_embedding is not None:
            bias = bias + self.pos_embedding
        bias = bias.to(dtype)
        if valid is not None:
            keys_valid = valid.view(rows, self.window, cols, self.window).transpose(1, 2).reshape(rows, cols, 1, n)
            bias = bias.masked_fill(~keys_valid, torch.finfo(dtype).min)
        return bias.view(1, rows * cols, 1, n, n)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, H, W, C] with H, W multiples of the window; valid [H, W] marks real (unpadded) tokens."""
        b, height, width, ch = x.shape
        ws, heads, s = self.window, self.num_heads, self.shift
        if s:
            x = x.roll((-s, -s), dims=(1, 2))
            valid = None if valid is None else valid.roll((-s, -s), dims=(0, 1))
        rows, cols = height // ws, width // ws
        # [B, rows, ws, cols, ws, (3 heads d)] -> 3 x [B, windows, heads, ws*ws, d]
        qkv = self.to_qkv(x).view(b, rows, ws, cols, ws, 3, heads, ch // heads)
        q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, b, rows * cols, heads, ws * ws, ch // heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._attention_bias(rows, cols, valid, q.dtype))
        out = out.view(b, rows, cols, heads, ws, ws, ch // heads).permute(0, 1, 4, 2, 5, 3, 6)
        out = self.to_out(out.reshape(b, height, width, ch))
        return out.roll((s, s), dims=(1, 2)) if s else out


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SwinLayer(nn.Module):
    """Pre-LN transformer layer with (shifted-)window attention, on channels-last maps."""

    def __init__(self, config: HeadConfig, shifted: bool, position_bias: bool):
        super().__init__()
        self.norm_attn = nn.LayerNorm(config.width)
        self.attention_block = WindowAttention(config.width, config.num_heads, config.window, shifted, position_bias)
        self.norm_mlp = nn.LayerNorm(config.width)
        self.mlp_block = FeedForward(config.width, config.mlp_ch)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention_block(self.norm_attn(x), valid)
        return x + self.mlp_block(self.norm_mlp(x))


class SwinBlock(nn.Module):
    """A window layer then a shifted-window layer, so information crosses window borders."""

    def __init__(self, config: HeadConfig, position_bias: bool):
        super().__init__()
        self.block_w = SwinLayer(config, shifted=False, position_bias=position_bias)
        self.block_sw = SwinLayer(config, shifted=True, position_bias=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        return self.block_sw(self.block_w(x, valid), valid)


class DistillationHead(nn.Module):
    """c [B, in_ch, h, w] (1/64) -> logits [B, codebook_size, 2h, 2w] over the tokenizer's codebook (1/32)."""

    def __init__(self, config: HeadConfig = HeadConfig(), in_ch: int = 768, codebook_size: int = 1024):
        super().__init__()
        w, hidden, groups = config.width, config.logit_hidden_ch, config.logit_norm_groups
        self.window = config.window
        self.up_sample = nn.Sequential(
            DepthConvBlock4(in_ch, w), conv1x1(w, 4 * w), nn.PixelShuffle(2), DepthConvBlock4(w, w))
        # Only the very first window layer has the learned absolute position bias (as released).
        self.blocks = nn.ModuleList(SwinBlock(config, position_bias=i == 0) for i in range(config.num_blocks))
        self.mlp_head = nn.Sequential(
            conv1x1(w, hidden), nn.GroupNorm(groups, hidden), nn.GELU(),
            conv1x1(hidden, w), nn.GroupNorm(groups, w), nn.GELU(),
            conv1x1(w, codebook_size))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        x = self.up_sample(c).permute(0, 2, 3, 1)  # channels last for the transformer
        height, width = x.shape[1:3]
        pad_h, pad_w = -height % self.window, -width % self.window
        valid = None
        if pad_h or pad_w:  # pad to whole windows; padded tokens are masked out as keys
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            valid = torch.zeros(height + pad_h, width + pad_w, dtype=torch.bool, device=x.device)
            valid[:height, :width] = True
        for block in self.blocks:
            x = block(x, valid)
        return self.mlp_head(x[:, :height, :width].permute(0, 3, 1, 2))


def distillation_loss(logits: torch.Tensor, teacher_indices: torch.Tensor, soft_feature_target: torch.Tensor,
                      codebook: torch.Tensor, feature_weight: float = 0.01) -> torch.Tensor:
    """CE on the teacher's tokens + feature_weight * MSE(softmax-weighted codebook vector, teacher latent).

    logits [B, K, h, w]; teacher_indices [B, h, w]; soft_feature_target [B, D, h, w] (the teacher's quantised
    latent); codebook [K, D] (frozen). The feature term also rewards near-miss tokens whose vectors are close.
    The overall weight (LossConfig.distill_weight) is applied by the training loss, not here.
    """
    soft_feature = torch.einsum("bkhw,kd->bdhw", logits.softmax(1), codebook)
    return F.cross_entropy(logits, teacher_indices) + feature_weight * F.mse_loss(soft_feature, soft_feature_target)
