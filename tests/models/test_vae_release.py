"""The VAE as the release computes it (compat README 9.1): per-window mid-block attention in the encoder and the
decoder, GroupNorm statistics per window, remainders at the edges; at reduced width, against the release's
goldens (atol 5e-5). The `plain_` outputs (diffusers' global attention) check that the window mode matters."""
import pytest
import torch

from onedc_lib.config import VAEConfig, load_config
from onedc_lib.models.vae import VAE

# AutoencoderKL_patch_attn at reduced width (the golden's constructor), window 16
SMALL = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 16, 32, 32), layers_per_block=1,
             act_fn="silu", latent_channels=4, norm_num_groups=8, sample_size=256)
ATOL = 5e-5


def small_vae(golden, statistics: str) -> tuple[VAE, object]:
    g = golden("vae_patch_attn_small")
    vae = VAE(VAEConfig(autoencoder=SMALL, attention_statistics=statistics)).eval()
    vae.autoencoder.load_state_dict(g.params, strict=True)
    return vae, g


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def record_mid_attention(module):
    """(inputs, outputs) of the mid-block attention of `module`, filled on every call."""
    seen = []
    attn = module.mid_block.attentions[0]
    attn.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    return seen


@pytest.mark.parametrize("case", ["rect", "square"])
@torch.no_grad()
def test_encoder_windowed_like_the_release(golden, case):
    vae, g = small_vae(golden, "window")
    seen = record_mid_attention(vae.autoencoder.encoder)
    posterior = vae.autoencoder.encode(g.inputs[f"{case}_image"]).latent_dist
    close(posterior.mean, g.outputs[f"{case}_posterior_mean"])
    close(posterior.logvar, g.outputs[f"{case}_posterior_logvar"])
    close(posterior.std, g.outputs[f"{case}_posterior_std"])
    sample = posterior.mean + posterior.std * g.inputs[f"{case}_noise"]
    close(sample, g.outputs[f"{case}_latent_sample"])
    close(sample * 0.18215, g.outputs[f"{case}_latent_scaled"])
    if case == "rect":  # 37 x 53 latent: 3 x 4 windows, remainders of 5 rows and 5 columns
        close(seen[0][0], g.outputs["rect_enc_mid_attn_in"])
        close(seen[0][1], g.outputs["rect_enc_mid_attn_out"])
        assert (seen[0][1] - g.outputs["plain_rect_enc_mid_attn_out"]).abs().max() > 100 * ATOL


@pytest.mark.parametrize("case", ["rect", "square"])
@torch.no_grad()
def test_decoder_windowed_like_the_release(golden, case):
    vae, _ = small_vae(golden, "window")
    g = golden("vae_patch_attn_small_decode")
    seen = record_mid_attention(vae.autoencoder.decoder)
    latent = g.inputs[f"{case}_latent"]  # already divided by the scaling factor
    decoded = vae.decode(latent * vae.scaling_factor, clamp=False)
    close(decoded, g.outputs[f"{case}_decoded"])
    assert (decoded - g.outputs[f"plain_{case}_decoded"]).abs().max() > 100 * ATOL
    if case == "rect":  # 29 x 37: 2 x 3 windows, remainders 13 rows and 5 columns
        close(seen[0][0], g.outputs["rect_dec_mid_attn_in"])
        close(seen[0][1], g.outputs["rect_dec_mid_attn_out"])


@torch.no_grad()
def test_global_statistics_encoder_is_diffusers_plain(golden):
    """The global mode (nano) keeps the encoder's plain attention: the golden's `plain_` posterior."""
    vae, g = small_vae(golden, "global")
    posterior = vae.autoencoder.encode(g.inputs["rect_image"]).latent_dist
    close(posterior.mean, g.outputs["plain_rect_posterior_mean"])


def test_statistics_mode_by_preset():
    assert load_config("sd15").vae.attention_statistics == "window"
    assert load_config("sd15_q3").vae.attention_statistics == "window"
    assert load_config("nano").vae.attention_statistics == "global"
    with pytest.raises(ValueError, match="attention_statistics"):
        VAEConfig(attention_statistics="tile")


@torch.no_grad()
def test_tiled_decoding_stays_an_option_under_window_statistics(golden):
    """Large latents may still decode in tiles (the low-memory option; images up to 1024 px decode whole by
    default). Its difference from a whole decode, measured on the release's VAE at reduced width (the golden's
    random weights) for the astronaut crop's own latent: 25.0 dB PSNR with tiles of 48 latent pixels (README)."""
    vae, g = small_vae(golden, "window")
    latent = vae.encode(g.inputs["rect_image"])  # 37 x 53: two tiles of 48 across
    whole = vae.decode(latent, tile=64)
    tiled = vae.decode(latent, tile=48)
    mse = ((tiled - whole) / 2).square().mean()
    assert 24.5 < -10 * torch.log10(mse) < 26
    assert torch.equal(vae.decode(latent, tile=64), whole)
