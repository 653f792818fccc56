"""Building blocks shared by the OneDC codec and generator.

Attribute names follow the released checkpoints (see ../../shared/compat/manifest_*.json), so that
`load_state_dict(strict=True)` works on release weights: do not rename them.
"""
import torch
from torch import nn
import torch.nn.functional as F


def conv1x1(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=bias)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with 32 groups, as in the VQGAN-style blocks of the release."""
    return nn.GroupNorm(32, channels, eps=eps, affine=True)


class DepthConv(nn.Module):
    """1x1 + LeakyReLU, depthwise 3x3, 1x1; residual through a 1x1 adaptor when widths differ."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Sequential(conv1x1(in_ch, in_ch), nn.LeakyReLU(0.01))
        self.depth_conv = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch)
        self.conv2 = conv1x1(in_ch, out_ch)
        self.adaptor = conv1x1(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.adaptor is None else self.adaptor(x)
        return self.conv2(self.depth_conv(self.conv1(x))) + identity


class ConvFFN(nn.Module):
    """DCVC's "ConvFFN3": 1x1 to 4C; LeakyReLU(0.1) of one half plus LeakyReLU(0.01) of the other."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv1x1(channels, channels * 4)
        self.conv_out = conv1x1(channels * 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.conv(x).chunk(2, dim=1)
        hidden = F.leaky_relu(x1, 0.1) + F.leaky_relu(x2, 0.01)
        return x + self.conv_out(hidden)


class DepthConvBlock4(nn.Module):
    """DCVC's DepthConv followed by ConvFFN; the workhorse of every OneDC transform."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.Sequential(DepthConv(in_ch, out_ch), ConvFFN(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResidualBlockUpsample(nn.Module):
    """2x sub-pixel upsampling with a sub-pixel shortcut (DCVC)."""

    def __init__(self, in_ch: int, out_ch: int, upsample: int = 2):
        super().__init__()
        self.subpel_conv = nn.Sequential(conv1x1(in_ch, out_ch * upsample**2), nn.PixelShuffle(upsample))
        self.conv = conv3x3(out_ch, out_ch)
        self.upsample = nn.Sequential(conv1x1(in_ch, out_ch * upsample**2), nn.PixelShuffle(upsample))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.subpel_conv(x), 0.01)
        out = F.leaky_relu(self.conv(out), 0.1)
        return out + self.upsample(x)


ATTENTION_QUERIES = 1024  # query positions per step of AttnBlock: its weights, not the whole n x n map, in memory


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (VQGAN), scale C^-1/2.

    Computed ATTENTION_QUERIES queries at a time: every query still attends to every position and each row's
    softmax is the same computation, so the output is the whole-map result (bit-identical where checked) while
    memory grows with the positions, not their square (g_a's block at 1/16 of a 4000x3000 photograph: 47k
    positions, an 8.8 GB map at once)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q = self.q(hn).reshape(b, c, h * w).transpose(1, 2)  # b, hw, c
        k = self.k(hn).reshape(b, c, h * w)  # b, c, hw
        v = self.v(hn).reshape(b, c, h * w)  # b, c, hw
        outs = []
        for start in range(0, h * w, ATTENTION_QUERIES):
            attn = torch.softmax(torch.bmm(q[:, start:start + ATTENTION_QUERIES], k) * c**-0.5, dim=2)  # b, n, hw
            outs.append(torch.bmm(v, attn.transpose(1, 2)))  # b, c, n
        out = torch.cat(outs, dim=2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class ResnetBlock(nn.Module):
    """VQGAN-style residual block (GN32 eps 1e-6, SiLU, bias-free 3x3) used in g_a, g_s and h_sem."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = conv3x3(channels, channels, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = conv3x3(channels, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class EncoderResnetBlock(nn.Module):
    """The ResNet block of g_a's stem (the UNet's replaced conv_in).

    Weight compatibility quirk: when the width changes, the bias-free 1x1 `nin_shortcut` (out->out) is
    applied to the block's OUTPUT and added to it; the input takes no part in the residual.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, bias=False)
        self.norm2 = group_norm(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch, bias=False)
        self.nin_shortcut = conv1x1(out_ch, out_ch, bias=False) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is None:
            return x + h
        return h + self.nin_shortcut(h)


def gs_upsample(in_ch: int, out_ch: int) -> nn.Sequential:
    """g_s upsample: 1x1 to 4*in, PixelShuffle(2), 3x3 to out.

    A Sequential (keys `0.*`, `2.*`) so that g_s can splice its layers into its own `blocks` Sequential,
    which is how the release numbers them (`dec.blocks.3` and `dec.blocks.5`).
    """
    return nn.Sequential(conv1x1(in_ch, in_ch * 4), nn.PixelShuffle(2), conv3x3(in_ch, out_ch))


class ReductionBlock(nn.Module):
    """The generator's `vae_reduction`: maps the g_s feature to a 4-channel pseudo x_t."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.short_cut = conv1x1(in_ch, out_ch)  # registered first, as in the release's state_dict order
        self.blocks = nn.Sequential(
            group_norm(in_ch), nn.SiLU(), conv3x3(in_ch, in_ch),
            group_norm(in_ch), nn.SiLU(), conv3x3(in_ch, out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + self.short_cut(x)
