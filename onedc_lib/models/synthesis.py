"""g_s: (y_hat at 1/16, c at 1/64) -> the ctrl_ch feature at 1/8 that drives the one-step generator.

Two branches meet at 1/8: y_hat upsampled once, and the semantic map upsampled three times, so the
generator sees both the transmitted detail and the semantics.
"""
import torch
from torch import nn

from ..config import CodecConfig
from .blocks import DepthConvBlock4, ResidualBlockUpsample, ResnetBlock, gs_upsample


class SynthesisTransform(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        n, width, s = cfg.bottleneck_ch, cfg.internal_ch, cfg.semantic_ch
        half = width // 2
        self.trans_coding = nn.Sequential(DepthConvBlock4(n, width), DepthConvBlock4(width, width))
        self.blocks = nn.Sequential(
            *(ResnetBlock(width) for _ in range(3)), *gs_upsample(width, half), *(ResnetBlock(half) for _ in range(3)),
        )
        self.sem_up = nn.Sequential(
            ResidualBlockUpsample(s, width), DepthConvBlock4(width, width),
            ResidualBlockUpsample(width, half), DepthConvBlock4(half, half),
            ResidualBlockUpsample(half, half),
        )
        self.conv_out = DepthConvBlock4(width, cfg.ctrl_ch)

    def forward(self, y_hat: torch.Tensor, c_map: torch.Tensor) -> torch.Tensor:
        y_feature = self.blocks(self.trans_coding(y_hat))
        return self.conv_out(torch.cat([y_feature, self.sem_up(c_map)], dim=1))
