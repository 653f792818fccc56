"""The pixel_sr VAE slot: its latent is the image area-downsampled x4 and unshuffled x2 (checked by hand), the
small image comes back exactly, decoding runs the decoder network, tiling keeps the result, and the slot is
chosen by configuration."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from onedc_lib.config import VAEConfig, load_config
from onedc_lib.models.pixel_vae import PixelSRVAE
from onedc_lib.models.vae import VAE, build_vae

TINY = VAEConfig(kind="pixel_sr", scaling_factor=2.0,
                 sr_decoder={"arch": "rrdbnet", "num_feat": 8, "num_block": 1, "num_grow": 4})
TINY_SPAN = dataclasses.replace(TINY, sr_decoder={"arch": "span", "num_feat": 8, "num_block": 2})


def test_latent_is_the_box_downsampled_image_unshuffled():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    latent = PixelSRVAE(TINY).encode(x)
    assert latent.shape == (1, 12, 4, 6)
    # by hand: the mean of each 4x4 block; channel c*4 + 2*i + j holds the block at (2*row + i, 2*col + j)
    blocks = x.reshape(1, 3, 8, 4, 12, 4).mean(dim=(3, 5))
    for c in range(3):
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(latent[0, c * 4 + 2 * i + j], 2.0 * blocks[0, c, i::2, j::2])


def test_area_downsampling_agrees_with_pillow_box():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    box = np.asarray(Image.fromarray(image).resize((14, 10), Image.BOX), dtype=np.float32)
    vae = PixelSRVAE(TINY)
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    small = (vae.small_image(vae.encode(x))[0].permute(1, 2, 0).numpy() + 1) / 2 * 255
    assert np.abs(small - box).max() < 1.0  # Pillow computes in fixed point and rounds to 8 bits


def test_loss_pair_compares_small_images_and_decode_upscales():
    torch.manual_seed(0)
    vae = PixelSRVAE(TINY).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    latent = vae.encode(x)
    image, target = vae.loss_pair(latent, x)
    assert image.shape == target.shape == (2, 3, 64, 64)  # upsampled back for LPIPS
    torch.testing.assert_close(image, target)  # the small image comes back exactly
    with torch.no_grad():
        decoded = vae.decode(latent)
    assert decoded.shape == (2, 3, 64, 64) and decoded.abs().max() <= 1


@pytest.mark.parametrize("cfg", [TINY, TINY_SPAN], ids=["rrdbnet", "span"])
def test_tiled_decode_matches_a_whole_decode(cfg):
    torch.manual_seed(0)
    vae = PixelSRVAE(cfg).eval()
    latent = torch.randn(1, 12, 40, 56)
    with torch.no_grad():
        whole = vae.decode(latent, tile=1024)
        tiled = vae.decode(latent, tile=16)
    # 17 (RRDBNet) or 9 (this SPAN) convolutions at the small scale: a margin of 16 misses at most a sliver
    assert (whole - tiled).abs().max() < 1e-3


def test_slot_chosen_by_configuration():
    assert isinstance(build_vae(TINY), PixelSRVAE)
    assert isinstance(build_vae(dataclasses.replace(TINY, kind="autoencoder_kl", autoencoder=dict(
        block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=4))), VAE)
    nano = load_config("nano_sr")
    assert nano.vae.kind == "pixel_sr" and nano.vae.latent_channels == nano.codec.cond_ch == 12
    assert nano.generator.unet["in_channels"] == nano.generator.unet["out_channels"] == 12
    assert load_config("sd15").vae.kind == "autoencoder_kl"
    with pytest.raises(ValueError, match="vae.kind"):
        VAEConfig(kind="tiny")
