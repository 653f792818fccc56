"""The frozen SD VAE (diffusers AutoencoderKL) as OneDC uses it: scaled latents, windowed mid-block attention.

The mid-block self-attention runs at latent resolution over all positions; at full attention its memory grows
with the square of the pixel count (a 2048x2048 image: 65536 positions, 16 GiB of scores per head in fp32). It is
computed in 16x16-latent windows. `attention_statistics` (VAEConfig) says how:
- "window" (sd15, release checkpoints; compat README 9.1): in the encoder's and the decoder's mid-block every
  window passes whole through the attention block, its GroupNorm statistics taken over the window alone (edge
  windows are the remainders); exactly what the release computes.
- "global" (nano, and every model saved before the field existed): the decoder only, GroupNorm statistics over
  the whole map and only the softmax restricted to a window; the encoder attends globally.

The rest of the decoder is convolutional, but its activations at full resolution are large (SD's VAE: 128
channels, 5.9 GB in fp32 for a 4096x2816 image), so a latent larger than `decode_tile` is decoded in overlapping
tiles blended linearly (`tiled_decode`). Every tile normalises with the same GroupNorm statistics, gathered over
the whole latent in a first pass, so tiles do not differ in brightness or colour and no seam shows. Tiling is
an approximation the release does not make (it decodes whole): with window statistics, tiles of 48 latent pixels
differ from a whole decode by 25.0 dB PSNR on the release's VAE at reduced width with random weights (compat 9.1)
and by 33.3 dB on the trained nano VAE (astronaut, 512 x 512); images up to 1024 x 1024 decode whole by default.
"""
from __future__ import annotations

import contextlib
import functools
import math
import types
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import memory, progress
from ..config import VAEConfig
from .fast import batched_windowed_attention

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

DECODE_TILE = 128  # latent pixels (1024 image pixels): images up to 1024 x 1024 decode whole


ATTENTION_STATISTICS = ("window", "global")  # VAEConfig.attention_statistics, see the module docstring


class WindowedAttnProcessor:
    """diffusers attention processor: spatial self-attention within non-overlapping window x window tiles (edge
    tiles may be smaller). `window_statistics`: each tile is group-normalised with its own statistics (the
    release); else with the whole map's (a map no larger than one tile then gets exactly diffusers' attention).
    """

    def __init__(self, window: int, window_statistics: bool = False):
        self.window = window
        self.window_statistics = window_statistics

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None) -> torch.Tensor:
        # Traced (models/export.py) through the scripted function, so that its loops follow the input's size;
        # the bf16 path (fast mode) batches the windows (models/fast.py); float32 runs them one at a time.
        if torch.jit.is_tracing():
            attend = _scripted_windowed_attention()
        else:
            attend = windowed_attention if hidden_states.dtype == torch.float32 else batched_windowed_attention
        norm = attn.group_norm
        # Global statistics through the module (the tiled decode substitutes pooled ones there); per-window ones
        # are local to a tile, whose windows line up with a whole decode's.
        x = hidden_states if self.window_statistics else norm(hidden_states)
        out = attend(x, attn.to_q.weight, attn.to_q.bias, attn.to_k.weight, attn.to_k.bias, attn.to_v.weight,
                     attn.to_v.bias, attn.to_out[0].weight, attn.to_out[0].bias, attn.heads, self.window,
                     self.window_statistics, norm.num_groups, norm.weight, norm.bias, norm.eps)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def windowed_attention(x: torch.Tensor, q_weight: torch.Tensor, q_bias: Optional[torch.Tensor],
                       k_weight: torch.Tensor, k_bias: Optional[torch.Tensor], v_weight: torch.Tensor,
                       v_bias: Optional[torch.Tensor], out_weight: torch.Tensor, out_bias: Optional[torch.Tensor],
                       heads: int, window: int, tile_norm: bool = False, groups: int = 1,
                       norm_weight: Optional[torch.Tensor] = None, norm_bias: Optional[torch.Tensor] = None,
                       eps: float = 1e-6) -> torch.Tensor:
    """Multi-head self-attention of a [B, C, H, W] map within window x window tiles (TorchScript-able). x is
    normalised already, or with `tile_norm` each tile is group-normalised here with its own statistics."""
    out = torch.empty_like(x)
    height, width = x.shape[-2], x.shape[-1]
    for top in range(0, height, window):
        for left in range(0, width, window):
            tile = x[:, :, top:top + window, left:left + window]
            if tile_norm:
                tile = F.group_norm(tile, groups, norm_weight, norm_bias, eps)
            tile_h, tile_w = tile.shape[-2], tile.shape[-1]
            seq = tile.flatten(2).transpose(1, 2)  # B, positions, C
            q = F.linear(seq, q_weight, q_bias).unflatten(-1, [heads, -1]).transpose(1, 2)  # B, heads, positions, d
            k = F.linear(seq, k_weight, k_bias).unflatten(-1, [heads, -1]).transpose(1, 2)
            v = F.linear(seq, v_weight, v_bias).unflatten(-1, [heads, -1]).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
            y = F.linear(y, out_weight, out_bias)  # to_out[1] is dropout: identity at inference
            out[:, :, top:top + tile_h, left:left + tile_w] = y.transpose(1, 2).unflatten(-1, [tile_h, tile_w])
    return out


@functools.lru_cache(maxsize=None)
def _scripted_windowed_attention():
    return torch.jit.script(windowed_attention)


def make_lean(block: nn.Module) -> None:
    """Gives one of the VAE's diffusers blocks a forward that, without gradients, keeps fewer full-size maps alive:
    a ResnetBlock2D (no time embedding, no resampling, SiLU: `_lean_resnet_forward`), a Downsample2D or an Upsample2D
    with a 3x3 convolution (strips of rows): the same bits, or on maps above IN_PLACE_ELEMENTS the same results up to
    float rounding; an Encoder whose first level is plain resnets and a Downsample2D (SD's), which in bf16 on maps
    above STRIP_LEVEL_ELEMENTS computes that level by strips (`_first_level_by_strips`). The VAE's full-resolution maps are what its memory peaks on (SD's VAE at 2048 x 1408: 1.5 GB
    per 128-channel map in float32). Other blocks are left as they are."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    from diffusers.models.autoencoders.vae import Encoder

    # bound methods, not closures: deepcopy rebinds them to the copy (stage 0 copies the autoencoder)
    if type(block) is Encoder and _strippable_level(block):
        block.forward = types.MethodType(_lean_encoder_forward, block)
    elif (type(block) is ResnetBlock2D and block.upsample is None and block.downsample is None
            and block.time_emb_proj is None and isinstance(block.nonlinearity, nn.SiLU)):
        block.forward = types.MethodType(_lean_resnet_forward, block)
    elif (type(block) is Downsample2D and block.use_conv and block.padding == 0 and block.norm is None
          and type(block.conv) is nn.Conv2d and block.conv.kernel_size == (3, 3) and block.conv.stride == (2, 2)):
        block.forward = types.MethodType(_lean_downsample_forward, block)
    elif (type(block) is Upsample2D and block.use_conv and block.interpolate and not block.use_conv_transpose
          and block.norm is None and block.name == "conv" and type(block.conv) is nn.Conv2d
          and block.conv.kernel_size == (3, 3) and block.conv.stride == (1, 1) and block.conv.padding == (1, 1)):
        block.forward = types.MethodType(_lean_upsample_forward, block)


def _lean_resnet_forward(block: nn.Module, input_tensor: torch.Tensor, temb: torch.Tensor | None = None,
                         *args, **kwargs) -> torch.Tensor:
    """ResnetBlock2D.forward with SiLU in place and the shortcut added into the block's output: at most the input,
    one normalised map and one convolution's output alive, where diffusers also holds the sum and the quotient.
    A map of IN_PLACE_ELEMENTS or more is also normalised and convolved in place (`_in_place_norm`,
    `_in_place_conv`) where the layers allow: the input and one map alive."""
    if torch.is_grad_enabled() or temb is not None or args or kwargs:
        return type(block).forward(block, input_tensor, temb, *args, **kwargs)
    in_place = input_tensor.numel() >= IN_PLACE_ELEMENTS
    h = _in_place_conv(block.conv1, F.silu(block.norm1(input_tensor), inplace=True), in_place)
    h = F.silu(_in_place_norm(block.norm2, h, in_place), inplace=True)
    h = _in_place_conv(block.conv2, block.dropout(h), in_place)
    if block.conv_shortcut is None:
        shortcut = input_tensor
    else:  # diffusers makes a training module's input contiguous first (a layout, and so rounding, difference)
        shortcut = block.conv_shortcut(input_tensor.contiguous() if block.training else input_tensor)
    if torch.result_type(shortcut, h) == h.dtype and shortcut.stride() == h.stride() and shortcut.shape == h.shape:
        h = h.add_(shortcut)  # diffusers' shortcut + h: addition commutes; same dtype and layout, bit for bit
    else:
        h = shortcut + h
    return h if block.output_scale_factor == 1 else h / block.output_scale_factor


def _lean_downsample_forward(block: nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Downsample2D's pad-right-and-bottom and stride-2 convolution, on maps of IN_PLACE_ELEMENTS or more computed
    STRIP_ROWS output rows at a time from the input rows they see: no padded copy of the whole input (nor the
    convolution's own copy of it). The same results up to float rounding."""
    if torch.is_grad_enabled() or args or kwargs or hidden_states.numel() < IN_PLACE_ELEMENTS:
        return type(block).forward(block, hidden_states, *args, **kwargs)
    height = hidden_states.shape[-2]
    out_height = (height + 1 - 3) // 2 + 1  # the padded map has height + 1 rows

    def strip(top: int, bottom: int) -> torch.Tensor:
        rows = hidden_states[:, :, 2 * top:min(2 * bottom + 1, height)]  # output row i sees rows 2i .. 2i + 2
        return block.conv(F.pad(rows, (0, 1, 0, 2 * bottom + 1 - 2 * top - rows.shape[-2])))

    return _by_rows(strip, out_height)


def _lean_upsample_forward(block: nn.Module, hidden_states: torch.Tensor, output_size: int | None = None,
                           *args, **kwargs) -> torch.Tensor:
    """Upsample2D's nearest 2x and 3x3 convolution, on outputs of IN_PLACE_ELEMENTS or more computed STRIP_ROWS
    output rows at a time from the upsampled rows they see: no upsampled copy of the whole map. The same results
    up to float rounding."""
    if (torch.is_grad_enabled() or output_size is not None or args or kwargs
            or 4 * hidden_states.numel() < IN_PLACE_ELEMENTS):
        return type(block).forward(block, hidden_states, output_size, *args, **kwargs)
    out_height = 2 * hidden_states.shape[-2]

    def strip(top: int, bottom: int) -> torch.Tensor:
        low, high = max(top - 1, 0) // 2, (min(bottom + 1, out_height) - 1) // 2 + 1  # input rows seen
        up = F.interpolate(hidden_states[:, :, low:high], scale_factor=2.0, mode="nearest")  # rows 2 low ..
        return block.conv(up)[:, :, top - 2 * low:bottom - 2 * low]

    return _by_rows(strip, out_height)


def _by_rows(strip, height: int) -> torch.Tensor:
    """The map of `height` rows whose rows [top, bottom) are strip(top, bottom), STRIP_ROWS at a time, in the
    strips' dtype and layout."""
    out = None
    for top in range(0, height, STRIP_ROWS):
        bottom = min(top + STRIP_ROWS, height)
        piece = strip(top, bottom)
        if out is None:
            out = torch.empty((*piece.shape[:2], height, piece.shape[-1]), dtype=piece.dtype, device=piece.device,
                              memory_format=_layout(piece))
        out[:, :, top:bottom] = piece
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    """x's memory format: channels_last where x is laid out so (and not also contiguous), else contiguous."""
    return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format)


def _plain_conv(conv: nn.Module, stride: int = 1, padding: int = 1, same_channels: bool = True) -> bool:
    return (type(conv) is nn.Conv2d and "forward" not in conv.__dict__ and conv.kernel_size == (3, 3)
            and conv.stride == (stride, stride) and conv.padding == (padding, padding) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and (not same_channels or conv.in_channels == conv.out_channels))


def _plain_norm(norm: nn.Module) -> bool:
    return type(norm) is nn.GroupNorm and "forward" not in norm.__dict__ and norm.affine


def _strippable_level(encoder: nn.Module) -> bool:
    """Whether an Encoder's first level is what `_first_level_by_strips` computes: conv_in, resnets without a
    shortcut convolution (GroupNorm, SiLU, 3x3 convolutions), a Downsample2D's stride-2 convolution."""
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D

    if not (_plain_conv(encoder.conv_in, same_channels=False) and len(encoder.down_blocks) > 1):
        return False
    block = encoder.down_blocks[0]
    resnets, down = list(getattr(block, "resnets", [])), getattr(block, "downsamplers", None)
    if not resnets or down is None or len(down) != 1:
        return False
    down = down[0]
    if not (type(down) is Downsample2D and down.use_conv and down.padding == 0 and down.norm is None
            and _plain_conv(down.conv, stride=2, padding=0)):
        return False
    return all(type(r) is ResnetBlock2D and r.upsample is None and r.downsample is None and r.time_emb_proj is None
               and r.conv_shortcut is None and isinstance(r.nonlinearity, nn.SiLU) and _plain_norm(r.norm1)
               and _plain_norm(r.norm2) and _plain_conv(r.conv1) and _plain_conv(r.conv2)
               and r.conv1.in_channels == encoder.conv_in.out_channels
               and not (r.training and r.dropout.p) for r in resnets)


def _lean_encoder_forward(encoder: nn.Module, sample: torch.Tensor) -> torch.Tensor:
    """diffusers' Encoder.forward (no gradients), its first level by strips (`_first_level_by_strips`) where the
    map is of STRIP_LEVEL_ELEMENTS or more and the level runs in a low precision (autocast to another dtype than
    float32, or weights in one): the float32 path keeps diffusers' arithmetic."""
    if torch.is_grad_enabled() or not _strips_apply(encoder, sample):
        return type(encoder).forward(encoder, sample)
    sample = _first_level_by_strips(encoder, sample)
    for down_block in encoder.down_blocks[1:]:
        sample = down_block(sample)
    sample = encoder.mid_block(sample)
    sample = encoder.conv_norm_out(sample)
    sample = encoder.conv_act(sample)
    return encoder.conv_out(sample)


def _strips_apply(encoder: nn.Module, sample: torch.Tensor) -> bool:
    conv_in = encoder.conv_in
    elements = sample.shape[0] * conv_in.out_channels * sample.shape[-2] * sample.shape[-1]
    device = sample.device.type
    low = ((torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) != torch.float32)
           or conv_in.weight.dtype != torch.float32)
    return elements >= STRIP_LEVEL_ELEMENTS and (low or STRIP_LEVEL_FLOAT32)


class _GroupStats:
    """Per sample and group sum and sum of squares (float64) of a map seen strip by strip: its GroupNorm statistics."""

    def __init__(self, norm: nn.GroupNorm):
        self.norm = norm
        self.total = self.squares = None
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        groups = rows.unflatten(1, (self.norm.num_groups, -1))
        total = torch.zeros(groups.shape[:2], dtype=torch.float64, device=rows.device)
        squares = torch.zeros_like(total)
        for g in range(groups.shape[1]):  # a float64 copy of one group of the strip at a time
            part = groups[:, g].double()
            total[:, g], squares[:, g] = part.sum((1, 2, 3)), part.square().sum((1, 2, 3))
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += groups[0, 0].numel()

    def silu_of_normed(self, rows: torch.Tensor) -> torch.Tensor:
        """silu(norm(rows)) with these statistics, in rows' dtype as GroupNorm computes under autocast."""
        mean = self.total / self.count
        var = (self.squares / self.count - mean.square()).clamp_min(0)
        return F.silu(_group_normalized(rows, self.norm, mean, var), inplace=True)


def _group_normalized(x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """An affine GroupNorm of x with given statistics (mean and variance per sample and group): (x - mean) * weight /
    std + bias in float32 a few channels at a time, rounded once into a new map of x's dtype, as F.group_norm
    computes under autocast (no float32 copy of x), in x's layout with canonical strides: a channels_last map shaped
    from a view of the groups has another batch stride, which oneDNN's convolutions do not take as channels_last
    (they copied it to NCHW and ran the slow NCHW kernel: 5-7x the time of a bf16 3x3 convolution, 1 GB more at the
    full resolution of SD's VAE decoder's tiles)."""
    per_group = x.shape[1] // norm.num_groups
    mean = mean.repeat_interleave(per_group, 1).float()[..., None, None]  # B, C, 1, 1
    scale = ((var + norm.eps).rsqrt().repeat_interleave(per_group, 1).float() * norm.weight.float())[..., None, None]
    bias = norm.bias.float().view(1, -1, 1, 1)
    out = torch.empty_like(x, memory_format=_layout(x))
    for c in range(0, x.shape[1], 32):
        part = slice(c, c + 32)
        out[:, part] = (x[:, part] - mean[:, part]).mul_(scale[:, part]).add_(bias[:, part])  # float32
    return out


def _conv_rows(conv: nn.Module, source, top: int, bottom: int, height: int) -> torch.Tensor:
    """Rows [top, bottom) of conv (3x3, stride 1, zero padding 1) of the map of `height` rows whose rows [lo, hi)
    source(lo, hi) gives: from its rows one above and one below (zero padding at the map's edges)."""
    low, high = max(top - 1, 0), min(bottom + 1, height)
    out = conv(source(low, high))
    return out[:, :, top - low:bottom - low]


def _resnet_rows(resnet: nn.Module, source, stats1: _GroupStats, stats2: _GroupStats, top: int, bottom: int,
                 height: int) -> torch.Tensor:
    """Rows [top, bottom) of a resnet's output (input + conv2(silu(norm2(conv1(silu(norm1(input))))))) from its
    input's rows (`source`, two above and below) and the statistics of its two norms' inputs."""
    def conv1(lo: int, hi: int) -> torch.Tensor:
        return stats2.silu_of_normed(_conv_rows(resnet.conv1, lambda a, b: stats1.silu_of_normed(source(a, b)),
                                                lo, hi, height))
    h = _conv_rows(resnet.conv2, conv1, top, bottom, height)
    h = h.add_(source(top, bottom))
    return h if resnet.output_scale_factor == 1 else h / resnet.output_scale_factor


def _over_strips(rows, height: int, into: torch.Tensor | None = None, stats: _GroupStats | None = None,
                 halo: int = 0, pass_source: bool = False) -> torch.Tensor | None:
    """Calls rows(top, bottom) for strips of STRIP_ROWS rows, top to bottom, adding each to `stats`; with `into`
    (a map of `height` rows, or None for a new one when `into` is True) writes them there and returns it. With
    `pass_source`, rows(get, top, bottom) reads `into` as it was before this pass through get(lo, hi), lo >= top -
    halo (the rows above the strip saved before they are overwritten)."""
    out = None if into is True or into is None else into
    saved, saved_top = None, 0
    for top in range(0, height, STRIP_ROWS):
        bottom = min(top + STRIP_ROWS, height)
        if pass_source:
            def get(lo: int, hi: int, top=top, saved=saved, saved_top=saved_top) -> torch.Tensor:
                if lo >= top:
                    return out[:, :, lo:hi]
                return torch.cat([saved[:, :, lo - saved_top:], out[:, :, top:hi]], dim=2)
            piece = rows(get, top, bottom)
            saved_top = max(bottom - halo, 0)
            saved = out[:, :, saved_top:bottom].clone()
        else:
            piece = rows(top, bottom)
        if stats is not None:
            stats.add(piece)
        if into is True and out is None:
            out = torch.empty((*piece.shape[:2], height, piece.shape[-1]), dtype=piece.dtype, device=piece.device,
                              memory_format=_layout(piece))
        if out is not None:
            out[:, :, top:bottom] = piece
    return out


def _first_level_by_strips(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv_in, the first down block's resnets and its downsampling, without any full-resolution map but one: the
    GroupNorm statistics (over the whole map) are gathered in passes over strips, conv_in is recomputed from the
    image where needed, and one stored map holds in turn the first resnet's first convolution, then each resnet's
    output but the last, whose rows the downsampling reads as they are computed. SD's VAE at 4096 x 2816: one
    2.95 GB map in bf16 (diffusers' path holds three, the lean resnets two); five 3x3 convolutions of the level
    computed where diffusers computes four (the first's of each resnet after the first twice). The same results up
    to float rounding (the statistics in float64; tests/models/test_vae.py)."""
    block = encoder.down_blocks[0]
    resnets, down = list(block.resnets), block.downsamplers[0]
    height = x.shape[-2]

    def h0(top: int, bottom: int) -> torch.Tensor:
        return _conv_rows(encoder.conv_in, lambda lo, hi: x[:, :, lo:hi], top, bottom, height)

    first = resnets[0]
    stats_in = _GroupStats(first.norm1)
    _over_strips(h0, height, stats=stats_in)  # the statistics of conv_in's output
    stats_mid = _GroupStats(first.norm2)
    store = _over_strips(lambda top, bottom: _conv_rows(first.conv1, lambda lo, hi: stats_in.silu_of_normed(
        h0(lo, hi)), top, bottom, height), height, into=True, stats=stats_mid)  # resnet 0's conv1

    def resnet0_out(get, top: int, bottom: int) -> torch.Tensor:  # from its stored conv1 rows and conv_in's
        h = _conv_rows(first.conv2, lambda lo, hi: stats_mid.silu_of_normed(get(lo, hi)), top, bottom, height)
        h = h.add_(h0(top, bottom))
        return h if first.output_scale_factor == 1 else h / first.output_scale_factor

    if len(resnets) == 1:
        stored = store
        last = lambda top, bottom: resnet0_out(lambda lo, hi: stored[:, :, lo:hi], top, bottom)  # noqa: E731
    else:
        stats_in = _GroupStats(resnets[1].norm1)
        _over_strips(resnet0_out, height, into=store, stats=stats_in, halo=1, pass_source=True)
        for i, resnet in enumerate(resnets[1:], start=1):
            stats_mid = _GroupStats(resnet.norm2)
            _over_strips(lambda top, bottom: _conv_rows(resnet.conv1, lambda lo, hi: stats_in.silu_of_normed(
                store[:, :, lo:hi]), top, bottom, height), height, stats=stats_mid)  # conv1's statistics
            if i == len(resnets) - 1:
                break
            stats_next = _GroupStats(resnets[i + 1].norm1)
            _over_strips(lambda get, top, bottom: _resnet_rows(resnet, get, stats_in, stats_mid, top, bottom, height),
                         height, into=store, stats=stats_next, halo=2, pass_source=True)
            stats_in = stats_next
        last_resnet, last_in, last_mid = resnets[-1], stats_in, stats_mid
        last = lambda top, bottom: _resnet_rows(last_resnet, lambda lo, hi: store[:, :, lo:hi], last_in,  # noqa
                                                last_mid, top, bottom, height)

    out_height = (height + 1 - 3) // 2 + 1  # Downsample2D pads one row and column at the bottom and right

    def downsampled(top: int, bottom: int) -> torch.Tensor:
        rows = last(2 * top, min(2 * bottom + 1, height))  # output row i sees rows 2i .. 2i + 2
        return down.conv(F.pad(rows, (0, 1, 0, 2 * bottom + 1 - 2 * top - rows.shape[-2])))

    return _over_strips(downsampled, out_height, into=True)


IN_PLACE_ELEMENTS = 1 << 25  # 32 M: SD's VAE from 128 channels at 512^2 (a 2048 x 1408 image: 369 M at 1/1)
STRIP_ROWS = 64  # rows per convolution step of _in_place_conv
NORM_GROUPS = 4  # groups per step of _in_place_norm
STRIP_LEVEL_ELEMENTS = 1 << 28  # 256 M: the encoder's first level by strips from 2 M pixels at 128 channels (SD)
STRIP_LEVEL_FLOAT32 = False  # the strips in float32 too (tests: diffusers' arithmetic is the float32 path's)


def _in_place_conv(conv: nn.Module, h: torch.Tensor, in_place: bool) -> torch.Tensor:
    """conv(h), written into h STRIP_ROWS rows at a time where `in_place` and conv is a plain 3x3 convolution (stride
    1, zero padding 1, as many outputs as inputs) whose output has h's dtype: each strip is convolved with the rows
    around it (the row above saved before it is overwritten), so every output sees the inputs a whole convolution
    sees: the same results up to rounding (oneDNN picks its algorithm by shape; the same bits for SD's VAE encoder
    at 128 x 96, 1e-6 apart at 40 x 24: tests/models/test_vae.py). Otherwise conv(h), a new map."""
    if not (in_place and type(conv) is nn.Conv2d and "forward" not in conv.__dict__ and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.in_channels == conv.out_channels):
        return conv(h)
    height = h.shape[-2]
    above = None  # input row top - 1 of the current strip, as it was before the previous strip overwrote it
    for top in range(0, height, STRIP_ROWS):
        bottom = min(top + STRIP_ROWS, height)
        rows = h[:, :, top:min(bottom + 1, height)]
        out = conv(rows if above is None else torch.cat([above, rows], dim=2))  # zero padding 1 on all sides
        if out.dtype != h.dtype:  # autocast to another dtype: the output is a new map
            return conv(h)
        first = 0 if above is None else 1  # out's row of input row `top`
        above = h[:, :, bottom - 1:bottom].clone()
        h[:, :, top:bottom] = out[:, :, first:first + bottom - top]
    return h


def _in_place_norm(norm: nn.Module, h: torch.Tensor, in_place: bool) -> torch.Tensor:
    """norm(h), written into h NORM_GROUPS groups at a time where `in_place` and norm is an affine nn.GroupNorm
    running its own forward (a group's statistics are its own channels'), else norm(h), a new map."""
    if not (in_place and type(norm) is nn.GroupNorm and "forward" not in norm.__dict__ and norm.affine):
        return norm(h)
    per_group = norm.num_channels // norm.num_groups
    step = NORM_GROUPS * per_group
    for start in range(0, norm.num_channels, step):
        part = slice(start, start + step)
        out = F.group_norm(h[:, part], min(step, norm.num_channels - start) // per_group, norm.weight[part],
                           norm.bias[part], norm.eps)
        if out.dtype != h.dtype:  # autocast to another dtype (the first step; the dtype never changes after)
            return norm(h)
        h[:, part] = out
    return h


class VAE(nn.Module):
    """Images in [-1, 1] <-> SD latents scaled by `scaling_factor` (the space the UNet works in).

    Frozen (requires_grad off) because OneDC never trains it; decode stays differentiable in its input.
    """

    def __init__(self, cfg: VAEConfig, autoencoder: AutoencoderKL | None = None):
        super().__init__()
        if autoencoder is None:
            from diffusers import AutoencoderKL  # here, not at import: the exported decoder runs without diffusers

            autoencoder = AutoencoderKL(**cfg.autoencoder)
        self.autoencoder = autoencoder
        self.scaling_factor = cfg.scaling_factor
        self.sample_posterior = cfg.sample_posterior
        self.attention_window = cfg.attention_window
        self.decode_tile = DECODE_TILE  # a decoding setting, not part of the model (files do not depend on it)
        per_window = cfg.attention_statistics == "window"
        parts = (self.autoencoder.encoder, self.autoencoder.decoder) if per_window else (self.autoencoder.decoder,)
        for part in parts:
            for attn in part.mid_block.attentions:
                if attn is not None:
                    attn.set_processor(WindowedAttnProcessor(cfg.attention_window, per_window))
        for block in self.autoencoder.modules():
            make_lean(block)
        self.requires_grad_(False)

    @classmethod
    def from_pretrained_local(cls, path: str | Path, cfg: VAEConfig | None = None) -> "VAE":
        """Load local weights only (never the hub).

        `path` is a diffusers folder (an AutoencoderKL folder, or a pipeline folder with `vae/`; its
        config.json defines the architecture) or a single .safetensors / .bin / .pt file holding a
        diffusers- or original-SD-format (LDM, e.g. a whole SD checkpoint) state_dict, loaded strictly into
        the architecture of `cfg.autoencoder`. `cfg` (default: sd15) also gives scaling and window.
        """
        cfg = cfg or VAEConfig()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no VAE weights at {path}")
        if path.is_dir():
            from diffusers import AutoencoderKL

            folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
            return cls(cfg, AutoencoderKL.from_pretrained(folder, local_files_only=True))
        vae = cls(cfg)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(path)
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if not any(key.startswith("decoder.up_blocks.") for key in state_dict):
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # slow import: only here

            state_dict = convert_ldm_vae_checkpoint(state_dict, vae.autoencoder.config)
        vae.autoencoder.load_state_dict(state_dict, strict=True)
        return vae

    def encode(self, x: torch.Tensor, sample_posterior: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior mean (deterministic) unless sampling is asked for here or in the config (the release
        samples); `generator` makes a sample reproducible."""
        posterior = self.autoencoder.encode(x).latent_dist
        sample = self.sample_posterior if sample_posterior is None else sample_posterior
        latent = posterior.sample(generator) if sample else posterior.mode()
        return latent * self.scaling_factor

    def loss_pair(self, latent: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, target) in [-1, 1] for the training losses: the decoded image (unclamped, cropped from
        the padded latent's) and x."""
        return self.decode(latent, clamp=False)[..., :x.shape[-2], :x.shape[-1]], x

    def provisioned_tensors(self) -> None:
        """None: its weights are the user's files, never provisioned (see PixelSRVAE)."""
        return None

    @property
    def encoder_part(self) -> nn.Module:
        return nn.ModuleList([self.autoencoder.encoder, self.autoencoder.quant_conv])

    @property
    def decoder_part(self) -> nn.Module:
        return nn.ModuleList([self.autoencoder.decoder, self.autoencoder.post_quant_conv])

    def drop_part(self, part: str) -> None:
        """Frees the "encoder" (with quant_conv) or the "decoder" (with post_quant_conv), for a process that runs
        the other direction only (OneDC.keep_only)."""
        if part == "encoder":
            self.autoencoder.encoder = self.autoencoder.quant_conv = None
        elif part == "decoder":
            self.autoencoder.decoder = self.autoencoder.post_quant_conv = None
        else:
            raise ValueError(f"drop_part: 'encoder' or 'decoder', not {part!r}")

    def decode(self, latent: torch.Tensor, clamp: bool = True, tile: int | None = None) -> torch.Tensor:
        """Latent (scaled) -> image; clamped to [-1, 1] unless a loss wants the raw output.

        Without gradients, a latent larger than `tile` latent pixels (default `self.decode_tile`) on either side
        is decoded in tiles (`tiled_decode`), so peak memory is bounded by the tile, not by the image."""
        tile = self.decode_tile if tile is None else tile
        check_tiling(tile, self.attention_window)
        if not torch.is_grad_enabled():
            memory.trim()  # what the generator freed into malloc's heap (sd15 at 2048 x 1408: about 1 GB kept)
        if torch.is_grad_enabled() or max(latent.shape[-2:]) <= tile:
            image = self.autoencoder.decode(latent / self.scaling_factor).sample
        else:
            image = self.tiled_decode(latent, tile)
        return image.clamp(-1, 1) if clamp else image

    @torch.no_grad()
    def tiled_decode(self, latent: torch.Tensor, tile: int, overlap: int | None = None) -> torch.Tensor:
        """Decode tile x tile latent pieces that overlap by `overlap` (default: one attention window) and blend
        them with linear ramps over the overlap (the weights sum to 1 everywhere).

        Tile origins are multiples of the attention window, so the windowed attention sees the same windows as
        a whole decode. A first pass over the tiles (each normalising with its own statistics) gathers every
        GroupNorm's statistics over the whole latent, each tile contributing its share without the overlaps; the
        second pass normalises every tile with them, so tiles agree in brightness and colour. (Repeating the
        first pass with the pooled statistics does not converge to a whole decode's: measured worse.)"""
        overlap = self.attention_window if overlap is None else overlap
        check_tiling(tile, self.attention_window, overlap)
        scale = _upsampling(self.autoencoder)
        height, width = latent.shape[-2:]
        boxes = [(r, c) for r in _spans(height, tile, overlap) for c in _spans(width, tile, overlap)]
        z = latent / self.scaling_factor
        out = None
        progress.plan(2 * len(boxes))  # each tile twice: statistics, then the decode
        with _SharedGroupNorm(self.autoencoder.decoder) as norms:
            for r, c in boxes:
                norms.tile = (r.stop - r.start, c.stop - c.start)
                norms.core = (r.core_start - r.start, r.core_stop - r.start,
                              c.core_start - c.start, c.core_stop - c.start)
                self.autoencoder.decode(z[..., r.start:r.stop, c.start:c.stop])
                memory.trim()  # the tile's maps, freed into malloc's heap (+0.5 GiB over the pass at 2048 x 1408)
                progress.done()
            norms.freeze()
            for r, c in boxes:
                piece = self.autoencoder.decode(z[..., r.start:r.stop, c.start:c.stop]).sample
                if out is None:
                    out = piece.new_zeros(*piece.shape[:2], height * scale, width * scale)
                weight = r.ramp(scale, piece)[:, None] * c.ramp(scale, piece)[None, :]
                out[..., r.start * scale:r.stop * scale, c.start * scale:c.stop * scale] += piece * weight
                del piece, weight
                memory.trim()
                progress.done()
        return out


def check_tiling(tile: int, window: int, overlap: int | None = None) -> None:
    """Tiles and overlaps are whole attention windows (so that windows line up); a tile holds two overlaps."""
    overlap = window if overlap is None else overlap
    if not isinstance(tile, int) or isinstance(tile, bool) or tile <= 0 or tile % window:
        raise ValueError(f"VAE decode tile must be a positive multiple of the attention window ({window}) in latent "
                         f"pixels (8 image pixels each), got {tile!r}")
    if not isinstance(overlap, int) or overlap <= 0 or overlap % window:
        raise ValueError(f"VAE decode overlap must be a positive multiple of the attention window ({window}), "
                         f"got {overlap!r}")
    if tile < 2 * overlap + window:
        raise ValueError(f"VAE decode tile {tile} is too small for an overlap of {overlap} latent pixels: at least "
                         f"{2 * overlap + window}")


class _Span:
    """One tile along one axis, in latent pixels: [start, stop), its own share [core_start, core_stop) (which
    tiles partition the axis), and the overlaps it shares with the previous and the next tile."""

    def __init__(self, start: int, stop: int, core_start: int, core_stop: int, before: int, after: int):
        self.start, self.stop, self.core_start, self.core_stop = start, stop, core_start, core_stop
        self.before, self.after = before, after

    def ramp(self, scale: int, like: torch.Tensor) -> torch.Tensor:
        """Blending weights along the axis at image resolution: rising over the overlap with the previous tile,
        falling over the overlap with the next (mirror images, so two neighbours sum to 1)."""
        n = (self.stop - self.start) * scale
        weight = torch.ones(n, dtype=like.dtype, device=like.device)
        for length, at_start in ((self.before * scale, True), (self.after * scale, False)):
            if length:
                rise = (torch.arange(length, dtype=torch.float64) + 0.5) / length
                rise = rise.to(like.dtype).to(like.device)
                if at_start:
                    weight[:length] = rise
                else:
                    weight[n - length:] = 1 - rise
        return weight


def _spans(size: int, tile: int, overlap: int) -> list[_Span]:
    stride = tile - overlap
    count = max(1, math.ceil((size - overlap) / stride))
    starts = [i * stride for i in range(count)]
    stops = [min(s + tile, size) for s in starts]
    spans = []
    for i, (start, stop) in enumerate(zip(starts, stops)):
        before = stops[i - 1] - start if i else 0
        after = stop - starts[i + 1] if i + 1 < count else 0
        # the core of a tile: from the middle of the overlap before it to the middle of the overlap after it
        spans.append(_Span(start, stop, start + before // 2, stop - after + after // 2, before, after))
    return spans


def _upsampling(autoencoder: AutoencoderKL) -> int:
    return 2 ** (len(autoencoder.config.block_out_channels) - 1)


class _SharedGroupNorm(contextlib.AbstractContextManager):
    """For the duration, every GroupNorm of `module` either records its input's statistics over `core` (a box
    in the latent pixels of a tile of size `tile`, scaled to the layer's resolution) while normalising as usual,
    or, after `freeze()`, normalises with the recorded statistics (mean and variance per sample and group)."""

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.sums: dict[nn.GroupNorm, list] = {}
        self.stats: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.tile: tuple[int, int] | None = None
        self.core: tuple[int, int, int, int] | None = None

    def __enter__(self):
        for norm in self.norms:
            norm.forward = self._forward_of(norm)  # an instance attribute shadows the class's forward
        return self

    def __exit__(self, *exc):
        for norm in self.norms:
            del norm.forward

    def freeze(self) -> None:
        """Statistics recorded so far -> the ones every tile uses from now on."""
        self.stats = {}
        for norm, (total, squares, count) in self.sums.items():
            mean = total / count
            self.stats[norm] = (mean, (squares / count - mean.square()).clamp_min(0))

    def _forward_of(self, norm: nn.GroupNorm):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.stats is None:
                self._record(norm, x.unflatten(1, (norm.num_groups, -1)))  # B, G, C/G, H, W
                return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            return _group_normalized(x, norm, *self.stats[norm])
        return forward

    def _record(self, norm: nn.GroupNorm, groups: torch.Tensor) -> None:
        """Sum and sum of squares (float64) per sample and group over the core, and the element count; one group
        at a time (a float64 copy of the whole core is 4x a float32 map: 2 GB for SD's 256 channels at 1024^2)."""
        f = groups.shape[-2] // self.tile[0]  # this layer's pixels per latent pixel
        top, bottom, left, right = (edge * f for edge in self.core)
        core = groups[..., top:bottom, left:right]
        total = core.new_zeros(core.shape[:2], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for g in range(core.shape[1]):
            part = core[:, g].double()
            total[:, g], squares[:, g] = part.sum((1, 2, 3)), part.square().sum((1, 2, 3))
        count = core[0, 0].numel()
        if norm in self.sums:
            previous = self.sums[norm]
            total, squares, count = total + previous[0], squares + previous[1], count + previous[2]
        self.sums[norm] = [total, squares, count]


def build_vae(cfg: VAEConfig) -> nn.Module:
    """The module of the VAE slot that `cfg.kind` names, with untrained weights until loaded."""
    if cfg.kind == "pixel_sr":
        from .pixel_vae import PixelSRVAE

        return PixelSRVAE(cfg)
    return VAE(cfg)


def load_vae(path: str | Path | None, cfg: VAEConfig) -> nn.Module:
    """The VAE slot with pretrained weights: `path` (see VAE.from_pretrained_local; for a pixel_sr decoder a
    state_dict file), or for a provisioned kind (cfg.provisioned) None: the provisioned weights."""
    if cfg.kind == "pixel_sr":
        from .pixel_vae import PixelSRVAE

        return PixelSRVAE(cfg).load_pretrained(path)
    if path is None:
        raise ValueError("the AutoencoderKL VAE needs weights: a diffusers folder or a state_dict file")
    return VAE.from_pretrained_local(path, cfg)
