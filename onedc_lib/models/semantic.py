"""h_sem: z_semantic -> the semantic map c and its tokens, which replace the text tokens of the generator.

The tokens are c flattened row-major, [B, (H/64)(W/64), semantic_ch], with no projection or positional
encoding: every cross-attention block of the generator's UNet attends to them.
"""
import torch
from torch import nn

from ..config import CodecConfig
from .blocks import AttnBlock, DepthConvBlock4, ResnetBlock


class SemanticAdaptor(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        n, s = cfg.bottleneck_ch, cfg.semantic_ch
        self.to_semantic = nn.Sequential(
            DepthConvBlock4(n, s),
            ResnetBlock(s), AttnBlock(s), AttnBlock(s),
            ResnetBlock(s), AttnBlock(s), AttnBlock(s),
            DepthConvBlock4(s, s),
        )

    def forward(self, z_semantic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (c_map [B, C, h, w], tokens [B, h*w, C])."""
        c_map = self.to_semantic(z_semantic)
        return c_map, c_map.flatten(2).transpose(1, 2)
