"""g_a: image and VAE latent -> y (bottleneck_ch at 1/16) and the semantic feature `sem` (at 1/64).

A diffusers UNet2DModel serves as a multi-scale feature extractor: its conv_in is replaced by a ResNet stem
with a stride-2 conv (so it runs from 1/16), its timestep is the constant 999, its mid-block output (after
two downsamplings, 1/64) is `sem`, and its regular output feeds a VQGAN/DCVC-style tail that produces y.
"""
import torch
from torch import nn

from ..config import CodecConfig
from .blocks import AttnBlock, DepthConvBlock4, EncoderResnetBlock, ResnetBlock, conv1x1, conv3x3

PATCH = 8  # pixels per latent pixel of the SD VAE
TIMESTEP = 999
# Two downsamplings take the UNet from 1/16 to the 1/64 of z, so there are exactly three levels.
DOWN_BLOCKS = ("AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")


class AnalysisTransform(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        if len(cfg.unet_ch) != len(DOWN_BLOCKS):
            raise ValueError(f"g_a's UNet has {len(DOWN_BLOCKS)} levels, got unet_ch={cfg.unet_ch}")
        from diffusers import UNet2DModel  # here, not at import: decoding needs no g_a (and no diffusers)

        width = cfg.unet_ch[0]
        self.pix_emb = nn.Conv2d(3, cfg.patch_ch, PATCH, stride=PATCH)
        self.pix_fusion = conv1x1(cfg.patch_ch + cfg.cond_ch, cfg.unet_in_ch)
        self.unet = UNet2DModel(  # in_channels only sizes the conv_in replaced below
            in_channels=width, out_channels=width, block_out_channels=tuple(cfg.unet_ch),
            down_block_types=DOWN_BLOCKS, up_block_types=UP_BLOCKS, layers_per_block=cfg.unet_layers_per_block,
            attention_head_dim=cfg.unet_attention_head_dim, norm_num_groups=cfg.unet_norm_num_groups,
        )
        self.unet.conv_in = nn.Sequential(
            EncoderResnetBlock(cfg.unet_in_ch, width), EncoderResnetBlock(width, width),
            EncoderResnetBlock(width, width), conv3x3(width, width, stride=2),
        )
        self.trans_coding = nn.Sequential(
            ResnetBlock(width), AttnBlock(width), ResnetBlock(width),
            DepthConvBlock4(width, width), DepthConvBlock4(width, cfg.bottleneck_ch),
        )

    def stem(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """8x8 patches of x fused with the latent: the 1/8 feature the UNet starts from."""
        return self.pix_fusion(torch.cat([self.pix_emb(x), cond], dim=1))

    def unet_features(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(UNet output at 1/16, mid-block output `sem` at 1/64): UNet2DModel's forward, opened up for sem."""
        unet = self.unet
        timestep = torch.full((feature.shape[0],), TIMESTEP, dtype=torch.long, device=feature.device)
        emb = unet.time_embedding(unet.time_proj(timestep).to(unet.dtype))
        h = unet.conv_in(feature)
        skips = (h,)
        for block in unet.down_blocks:
            h, res = block(hidden_states=h, temb=emb)
            skips += res
        sem = h = unet.mid_block(h, emb)
        for block in unet.up_blocks:
            n = len(block.resnets)
            h = block(h, skips[-n:], emb)
            skips = skips[:-n]
        return unet.conv_out(unet.conv_act(unet.conv_norm_out(h))), sem

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] (H, W multiples of 64), cond the scaled VAE latent at 1/8 -> (y, sem)."""
        features, sem = self.unet_features(self.stem(x, cond))
        return self.trans_coding(features), sem
