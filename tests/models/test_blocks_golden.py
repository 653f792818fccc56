"""Building blocks against the release goldens (block math) and manifests (parameter names and shapes)."""
import pytest
import torch
from torch import nn

from onedc_lib.models.blocks import (AttnBlock, DepthConvBlock4, EncoderResnetBlock, ReductionBlock,
                                     ResidualBlockUpsample, ResnetBlock, gs_upsample)
from onedc_lib.models.schedule import ONE_STEP_TIMESTEP, eps_to_x0, sd15_alphas_cumprod

BLOCK_GOLDENS = {
    "block_dcb4_32to48": lambda: DepthConvBlock4(32, 48),
    "block_dcb4_48to48": lambda: DepthConvBlock4(48, 48),
    "block_rbu_48to32": lambda: ResidualBlockUpsample(48, 32),
    "block_resnet_enc_64to96": lambda: EncoderResnetBlock(64, 96),
    "block_resnet_enc_64to64": lambda: EncoderResnetBlock(64, 64),
    "block_resnet_codec_64": lambda: ResnetBlock(64),
    "block_attn_64": lambda: AttnBlock(64),
    "block_attn_96_h1w1": lambda: AttnBlock(96),
    "block_gs_upsample_64to32": lambda: gs_upsample(64, 32),
    "block_vae_reduction_64to4": lambda: ReductionBlock(64, 4),
}


@pytest.mark.parametrize("name", sorted(BLOCK_GOLDENS))
def test_block_matches_golden(golden, name):
    g = golden(name)
    block = BLOCK_GOLDENS[name]().eval()
    block.load_state_dict(g.params, strict=True)
    with torch.no_grad():
        y = block(g.inputs["x"])
    torch.testing.assert_close(y, g.outputs["y"], atol=1e-5, rtol=1e-5)


# Full-size modules whose keys, shapes and order must equal the release checkpoints'.
MANIFEST_BLOCKS = {
    ("model_1_codec", "enc.trans_coding.0."): lambda: ResnetBlock(512),
    ("model_1_codec", "enc.trans_coding.1."): lambda: AttnBlock(512),
    ("model_1_codec", "enc.trans_coding.4."): lambda: DepthConvBlock4(512, 128),
    ("model_1_codec", "enc.unet.conv_in.0."): lambda: EncoderResnetBlock(320, 512),
    ("model_1_codec", "enc.unet.conv_in.1."): lambda: EncoderResnetBlock(512, 512),
    ("model_1_codec", "dec.sem_up.0."): lambda: ResidualBlockUpsample(768, 512),
    # g_s splices the upsample into its blocks Sequential: keys dec.blocks.3 and dec.blocks.5.
    ("model_1_codec", "dec.blocks."): lambda: nn.Sequential(
        *(ResnetBlock(512) for _ in range(3)), *gs_upsample(512, 256), *(ResnetBlock(256) for _ in range(3))),
    ("model_generator", "vae_reduction."): lambda: ReductionBlock(320, 4),
}


@pytest.mark.parametrize("manifest_name,prefix", sorted(MANIFEST_BLOCKS))
def test_block_names_match_manifest(manifest, manifest_name, prefix):
    module = MANIFEST_BLOCKS[manifest_name, prefix]()
    ours = [(k, list(v.shape)) for k, v in module.state_dict().items()]
    assert ours == manifest(manifest_name, prefix)


def test_eps_to_x0_t999(golden):
    g = golden("block_eps_to_x0_t999")
    alphas_cumprod = sd15_alphas_cumprod()
    assert torch.equal(alphas_cumprod, g.inputs["alphas_cumprod"])
    alpha_bar = alphas_cumprod[ONE_STEP_TIMESTEP].double()
    assert alpha_bar.item() == g.outputs["alpha_bar_999_f64"].item()
    x0 = eps_to_x0(g.inputs["x_t"], g.inputs["eps"], alpha_bar)
    torch.testing.assert_close(x0, g.outputs["x0"], atol=0, rtol=1e-6)
