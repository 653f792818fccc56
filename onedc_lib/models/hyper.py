"""h_enc: (y, sem) -> z, the 7-channel code at 1/64 that FSQ turns into one 14-bit index per 64x64 block.

y is brought down to 1/64 and fused with g_a's semantic feature, so z carries the semantics that the decoder's
h_sem turns into the generator's tokens. The hyper-decoder lives with the prior (models/prior.py).
"""
import torch
from torch import nn

from ..config import CodecConfig
from .blocks import AttnBlock, DepthConvBlock4, conv1x1, conv3x3


class HyperEncoder(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        n, sem_ch, width = cfg.bottleneck_ch, cfg.unet_ch[-1], cfg.internal_ch
        self.y_trans_coding = nn.Sequential(
            DepthConvBlock4(n, n), conv3x3(n, n, stride=2),
            DepthConvBlock4(n, n), conv3x3(n, n, stride=2),
        )
        self.fusion = nn.Sequential(
            DepthConvBlock4(n + sem_ch, sem_ch), AttnBlock(sem_ch),
            DepthConvBlock4(sem_ch, width), AttnBlock(width),
            DepthConvBlock4(width, width), conv1x1(width, len(cfg.fsq_levels)),
        )

    def forward(self, y: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        return self.fusion(torch.cat([self.y_trans_coding(y), sem], dim=1))
