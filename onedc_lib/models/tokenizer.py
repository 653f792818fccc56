"""The MaskGIT VQGAN tokenizer: the frozen teacher of OneDC's semantic distillation (spec section 5).

Attribute names and shapes follow the state_dict of `maskgit-vqgan-imagenet-f16-256.bin` (the PyTorch port the
release loads strictly; ../../shared/compat/manifest_maskgit_vqgan_tokenizer.json): do not rename them.
The tokenizer takes images in [0, 1] and has no attention; its residual blocks carry the port's shortcut quirk
(`EncoderResnetBlock`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from ..config import TokenizerConfig
from .blocks import EncoderResnetBlock, conv1x1, conv3x3, group_norm

_PROBE_KEY = "quantize.embedding.weight"  # present in every tokenizer state_dict


class _Level(nn.Module):
    """One resolution: residual blocks, then (decoder only) nearest 2x upsampling and a 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, upsample: bool = False):
        super().__init__()
        self.block = nn.ModuleList(EncoderResnetBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_blocks))
        self.upsample_conv = conv3x3(out_ch, out_ch) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


def _widths(config: TokenizerConfig) -> list[int]:
    return [config.hidden_ch * m for m in config.channel_mult]


class Encoder(nn.Module):
    """Image in [0, 1] -> continuous latent (z_ch) at 1/2^(levels-1); average-pool downsampling."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        widths = _widths(config)
        self.conv_in = conv3x3(3, widths[0], bias=False)
        in_widths = [widths[0]] + widths[:-1]
        self.down = nn.ModuleList(_Level(i, o, config.num_res_blocks) for i, o in zip(in_widths, widths))
        self.mid = nn.Sequential(*(EncoderResnetBlock(widths[-1], widths[-1]) for _ in range(2)))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = conv1x1(widths[-1], config.z_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, level in enumerate(self.down):
            x = level(x)
            if i < len(self.down) - 1:
                x = F.avg_pool2d(x, 2)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Quantised latent -> image; levels are stored fine to coarse (`up.0` is the last one applied)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        widths = _widths(config)
        self.conv_in = conv3x3(config.z_ch, widths[-1])
        self.mid = nn.Sequential(*(EncoderResnetBlock(widths[-1], widths[-1]) for _ in range(2)))
        in_widths = widths[1:] + [widths[-1]]  # level i receives the output of level i + 1
        self.up = nn.ModuleList(_Level(in_widths[i], widths[i], config.num_res_blocks, upsample=i > 0)
                                for i in range(len(widths)))
        self.norm_out = group_norm(widths[0])
        self.conv_out = conv3x3(widths[0], 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VectorQuantizer(nn.Module):
    """Nearest codebook entry in Euclidean distance."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] -> indices [B, h, w]. Distances in float32 even under autocast: near-ties decide tokens."""
        b, d, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
            codebook = self.embedding.weight.float()
            distance = (flat.square().sum(1, keepdim=True) - 2 * flat @ codebook.T
                        + codebook.square().sum(1))
        return distance.argmin(1).reshape(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices [B, h, w] -> codebook vectors [B, D, h, w]."""
        return self.embedding(indices).permute(0, 3, 1, 2)


class MaskGITTokenizer(nn.Module):
    """MaskGIT's VQGAN (f16, 1024 x 256 codebook). In OneDC it only supplies distillation targets."""

    def __init__(self, config: TokenizerConfig = TokenizerConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.z_ch)

    @property
    def codebook(self) -> torch.Tensor:
        """[codebook_size, z_ch]: the vectors the distillation's soft feature is built from."""
        return self.quantize.embedding.weight

    def encode(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [0, 1] -> (indices [B, h, w], quantised latent [B, z_ch, h, w]) at 1/16."""
        indices = self.quantize(self.encoder(x01))
        return indices, self.quantize.lookup(indices)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices [B, h, w] -> image in [0, 1]."""
        return self.decoder(self.quantize.lookup(indices)).clamp(0, 1)

    @torch.no_grad()
    def tokens_for_distillation(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets of the distillation head: `encode` of the image downsampled 2x, so tokens lie at 1/32.

        The 2x2 average equals bilinear (align_corners=False) 0.5x resizing for even sizes.
        """
        return self.encode(F.avg_pool2d(x01, 2))


def load_maskgit_checkpoint(path: str | Path, config: TokenizerConfig = TokenizerConfig()) -> MaskGITTokenizer:
    """Frozen tokenizer from the torch pickle `maskgit-vqgan-imagenet-f16-256.bin`, loaded strictly.

    Read with `weights_only=True` (no pickled code runs); the state_dict may be bare or nested one level
    under any key (e.g. {"state_dict": ...}).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = MaskGITTokenizer(config)
    model.load_state_dict(_find_state_dict(checkpoint, path), strict=True)
    return model.eval().requires_grad_(False)


def _find_state_dict(checkpoint, path) -> dict:
    if isinstance(checkpoint, dict):
        if _PROBE_KEY in checkpoint:
            return checkpoint
        for value in checkpoint.values():
            if isinstance(value, dict) and _PROBE_KEY in value:
                return value
    raise ValueError(f"{path}: no MaskGIT VQGAN state_dict (no {_PROBE_KEY!r} at the top level or one level down)")
