"""The VAE wrapper on a tiny AutoencoderKL (CPU, seconds): scaling, posterior, windowed attention, loading."""
import copy
import re

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import save_file

from onedc_lib.config import VAEConfig
from onedc_lib.models import vae as vae_module
from onedc_lib.models.vae import VAE, WindowedAttnProcessor

TINY = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
            norm_num_groups=4, sample_size=32)


def tiny_vae(window: int = 16) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(autoencoder=TINY, attention_window=window))


def image(h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_encode_is_scaled_posterior_mean():
    vae = tiny_vae()
    x = image()
    mean = vae.autoencoder.encode(x).latent_dist.mean
    torch.testing.assert_close(vae.encode(x), mean * 0.18215, atol=0, rtol=0)


def test_encode_sample_posterior_is_reproducible_with_a_generator():
    vae = tiny_vae()
    x = image()
    a = vae.encode(x, sample_posterior=True, generator=torch.Generator().manual_seed(3))
    b = vae.encode(x, sample_posterior=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a, vae.encode(x))


def full_attention_copy(vae: VAE) -> VAE:
    ref = copy.deepcopy(vae)
    ref.autoencoder.decoder.mid_block.attentions[0].set_processor(AttnProcessor2_0())
    return ref


def test_decode_within_one_window_equals_full_attention():
    vae = tiny_vae(window=16)
    latent = torch.randn(1, 4, 16, 12)
    expected = full_attention_copy(vae).autoencoder.decode(latent / 0.18215).sample.clamp(-1, 1)
    assert torch.equal(vae.decode(latent), expected)


def test_windowed_attention_equals_block_masked_full_attention():
    """Several windows, edge windows partial (6x10 map, window 4): full attention masked to each tile."""
    attn = tiny_vae().autoencoder.decoder.mid_block.attentions[0]
    x = torch.randn(2, 16, 6, 10)
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(10), indexing="ij")
    tile = (rows // 4 * 100 + cols // 4).flatten()
    mask = torch.zeros(60, 60).masked_fill(tile[:, None] != tile[None, :], float("-inf")).expand(2, 60, 60)
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, x, attention_mask=mask)
        windowed = WindowedAttnProcessor(4)(attn, x)
        full = AttnProcessor2_0()(attn, x)
    torch.testing.assert_close(windowed, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(windowed, full, atol=1e-3)


def test_decoder_attention_never_exceeds_one_window(monkeypatch):
    """Bounded memory: no attention call sees more than window^2 positions, however large the latent."""
    lengths = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        lengths.append(k.shape[-2])
        return sdpa(q, k, v, *args, **kwargs)

    vae = tiny_vae(window=4)
    monkeypatch.setattr(vae_module.F, "scaled_dot_product_attention", recording_sdpa)
    with torch.no_grad():
        assert vae.decode(torch.randn(1, 4, 16, 20)).shape == (1, 3, 32, 40)
    assert len(lengths) == 4 * 5 and max(lengths) == 16


def test_frozen_but_differentiable_in_the_latent():
    vae = tiny_vae()
    latent = torch.randn(1, 4, 8, 8, requires_grad=True)
    vae.decode(latent, clamp=False).square().mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in vae.parameters())


def assert_same_weights(a: VAE, b: VAE):
    sa, sb = a.autoencoder.state_dict(), b.autoencoder.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_from_pretrained_local_diffusers_folder(tmp_path):
    vae = tiny_vae()
    vae.autoencoder.save_pretrained(tmp_path / "pipeline" / "vae")
    for path in (tmp_path / "pipeline" / "vae", tmp_path / "pipeline"):
        loaded = VAE.from_pretrained_local(path, VAEConfig(autoencoder=TINY))
        assert_same_weights(loaded, vae)
        assert isinstance(loaded.autoencoder.decoder.mid_block.attentions[0].processor, WindowedAttnProcessor)


def to_ldm(state_dict: dict, num_blocks: int) -> dict:
    """diffusers AutoencoderKL keys -> original SD (LDM) keys, as in a whole SD checkpoint."""
    rules = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.block."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
         lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample."),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
        (r"mid_block\.attentions\.0\.to_(q|k|v)\.", r"mid.attn_1.\1."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
        (r"conv_shortcut", "nin_shortcut"), (r"conv_norm_out", "norm_out"),
    ]
    ldm = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if ".attn_1." in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention uses 1x1 convs
        ldm[f"first_stage_model.{key}"] = value
    return ldm


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_from_pretrained_local_single_file(tmp_path, layout):
    vae = tiny_vae()
    state_dict = vae.autoencoder.state_dict()
    if layout == "ldm":
        state_dict = to_ldm(state_dict, len(TINY["block_out_channels"]))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp_path / "vae.safetensors")
    assert_same_weights(VAE.from_pretrained_local(tmp_path / "vae.safetensors", VAEConfig(autoencoder=TINY)), vae)


def test_from_pretrained_local_refuses_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        VAE.from_pretrained_local(tmp_path / "stabilityai" / "sd-vae")


def test_sd_vae_sizes_on_meta():
    """The default config is SD-2.1's VAE: encoder 34.2 M and decoder 49.5 M parameters (spec section 2)."""
    with torch.device("meta"):
        vae = VAE(VAEConfig())
    ae = vae.autoencoder
    count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    assert round(count(ae.encoder, ae.quant_conv) / 1e6, 1) == 34.2
    assert round(count(ae.decoder, ae.post_quant_conv) / 1e6, 1) == 49.5


# ---------------------------------------------------------------------------------------------------- tiled decode

def smooth_latent(h: int, w: int) -> torch.Tensor:
    """A latent with image-like spatial structure (low frequencies), not white noise."""
    coarse = torch.randn(1, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(2))
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear") * 0.5


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * torch.log10(4 / (a - b).square().mean()).item()  # images in [-1, 1]


def test_tiled_decode_of_one_tile_equals_a_whole_decode():
    vae = tiny_vae(window=16)
    latent = smooth_latent(32, 40)
    with torch.no_grad():
        torch.testing.assert_close(vae.tiled_decode(latent, tile=48), vae.decode(latent, clamp=False, tile=64),
                                   atol=1e-5, rtol=0)


def test_decode_tiles_large_latents_only_without_gradients():
    vae = tiny_vae(window=8)
    latent = smooth_latent(40, 56)
    shapes = []
    vae.autoencoder.decoder.conv_in.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[-2:]))
    with torch.no_grad():
        tiled = vae.decode(latent, tile=32)  # overlap: one window (8)
    assert max(max(s) for s in shapes) == 32  # bounded: no decoder call sees more than a tile
    whole = vae.decode(latent, tile=64)
    assert shapes[-1] == (40, 56)  # with gradients (training) or within one tile: one whole decode
    assert tiled.shape == whole.shape == (1, 3, 80, 112)
    assert psnr(tiled, whole) > 30  # random weights; the nano VAE after 200 steps: 36-37 dB with 1024-px tiles
    assert not torch.equal(tiled, whole)


def test_tiled_decode_has_no_seams(monkeypatch):
    """The error of tiling is not concentrated at the tile boundaries, and pooled GroupNorm statistics beat
    per-tile ones (what a tiled decode without them does)."""
    vae = tiny_vae(window=4)
    latent = smooth_latent(48, 48)
    with torch.no_grad():
        whole = vae.decode(latent, tile=64)
        tiled = vae.tiled_decode(latent, tile=16, overlap=4)
        monkeypatch.setattr(vae_module._SharedGroupNorm, "freeze", lambda self: None)  # each tile its own
        per_tile = vae.tiled_decode(latent, tile=16, overlap=4)
    error = (tiled - whole).abs().mean((0, 1))
    scale = vae_module._upsampling(vae.autoencoder)
    seams = [(s.start * scale, (s.start + s.before) * scale) for s in vae_module._spans(48, 16, 4)[1:]]
    near = torch.zeros(error.shape[-1], dtype=torch.bool)
    for a, b in seams:
        near[a:b] = True
    rows, cols = error[near].mean(), error[:, near].mean()
    elsewhere = error[~near][:, ~near].mean()
    assert max(rows, cols) < 2 * elsewhere
    assert psnr(tiled, whole) > psnr(per_tile, whole) + 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooled_group_norm_is_group_norm_in_the_inputs_layout(dtype):
    """A tiled decode's second pass normalises with the pooled statistics: on the map they were recorded from, the
    GroupNorm itself (float32 within rounding, bf16 within one rounding), in the input's dtype and layout with
    canonical strides (a channels_last map with another batch stride was convolved by oneDNN in NCHW)."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, 64, eps=1e-6)
    norm.weight.data.normal_(1, 0.3)
    norm.bias.data.normal_(0, 0.3)
    layout = torch.channels_last if dtype == torch.bfloat16 else torch.contiguous_format
    x = (torch.randn(1, 64, 10, 12) * 3 + 1).to(dtype).contiguous(memory_format=layout)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        want = norm(x)
        with vae_module._SharedGroupNorm(torch.nn.Sequential(norm)) as norms:
            norms.tile, norms.core = (10, 12), (0, 10, 0, 12)
            norm(x)
            norms.freeze()
            got = norm(x)
    assert got.dtype == want.dtype == dtype
    assert got.stride() == x.contiguous(memory_format=layout).stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if dtype == torch.float32 else 3e-2)


@pytest.mark.parametrize("tile", [0, -16, 20, 32, 16.0, True])
def test_bad_tile_sizes_are_rejected(tile):
    vae = tiny_vae(window=16)
    with pytest.raises(ValueError, match="tile"):
        vae.decode(smooth_latent(64, 64), tile=tile)
    with pytest.raises(ValueError, match="overlap"):
        vae.tiled_decode(smooth_latent(64, 64), tile=48, overlap=8)


def diffusers_forward(vae: VAE) -> VAE:
    """A copy of vae whose ResnetBlock2D run diffusers' own forward (the lean one removed)."""
    plain = copy.deepcopy(vae)
    for block in plain.modules():
        block.__dict__.pop("forward", None)
    return plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_resnet_blocks_compute_diffusers_bits(dtype):
    vae = tiny_vae(window=8)
    lean = [b for b in vae.modules() if "forward" in b.__dict__ and type(b).__name__ == "ResnetBlock2D"]
    assert len(lean) == 10  # every ResnetBlock2D of TINY: encoder 2 + 2 (mid), decoder 2 (mid) + 2 x 2
    plain = diffusers_forward(vae)
    layout = torch.channels_last if dtype == torch.bfloat16 else torch.contiguous_format
    x, latent = image(40, 56).contiguous(memory_format=layout), smooth_latent(40, 56)
    outputs = []
    for model in (vae, plain):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            outputs.append((model.encode(x), model.decode(latent, tile=32), model.decode(latent, tile=64)))
    for a, b in zip(*outputs):  # encode, tiled decode (pooled statistics), whole decode
        assert torch.equal(a, b)


def test_lean_resnet_forward_follows_a_deepcopy():
    vae = tiny_vae()
    twin = copy.deepcopy(vae)
    block = twin.autoencoder.encoder.down_blocks[0].resnets[0]
    assert block.forward.__self__ is block  # rebound to the copy, not the original's modules


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [16, 128])
def test_in_place_conv_and_norm_compute_the_layers_results(monkeypatch, dtype, channels):
    """The large maps' in-place convolution (strips of rows) and GroupNorm (a few groups at a time) against the
    layers themselves: the same results up to float rounding."""
    monkeypatch.setattr(vae_module, "STRIP_ROWS", 7)  # several strips, the last one short
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    norm = torch.nn.GroupNorm(channels // 4, channels, eps=1e-6)
    x = torch.randn(1, channels, 40, 24)
    if dtype == torch.bfloat16:
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        conv_whole, conv_strips = conv(x), vae_module._in_place_conv(conv, x.clone(), True)
        norm_whole, norm_groups = norm(x), vae_module._in_place_norm(norm, x.clone(), True)
    if dtype == torch.float32:  # a group's elements are contiguous either way: the same sums
        assert torch.equal(norm_groups, norm_whole)
    else:
        torch.testing.assert_close(norm_groups, norm_whole)
    # oneDNN picks its algorithm by shape: a strip's may round differently (seen: float32 at 40 x 24, 1e-6)
    torch.testing.assert_close(conv_strips, conv_whole, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        y = x.clone()  # not in place: the layer's own new map, the input untouched
        assert torch.equal(vae_module._in_place_conv(conv, y, False), conv(x)) and torch.equal(y, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_maps_by_strips_decode_and_encode_as_diffusers(monkeypatch, dtype):
    """Every large-map path (in-place resnets, down- and upsampling by strips of rows) on at once against
    diffusers' own forwards: the same results up to float rounding, odd sizes included."""
    monkeypatch.setattr(vae_module, "STRIP_ROWS", 5)
    monkeypatch.setattr(vae_module, "IN_PLACE_ELEMENTS", 0)
    vae = tiny_vae(window=8).eval()
    plain = diffusers_forward(vae)
    assert sum("forward" in b.__dict__ for b in vae.modules()) == 13  # 10 resnets, 1 down-, 1 upsampler, encoder
    layout = torch.channels_last if dtype == torch.bfloat16 else torch.contiguous_format
    x, latent = image(42, 58).contiguous(memory_format=layout), smooth_latent(21, 29)
    outputs = []
    for model in (vae, plain):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            outputs.append((model.encode(x), model.decode(latent, tile=64)))
    for a, b in zip(*outputs):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 if dtype == torch.float32 else 2e-2)


def strip_vae(layers: int) -> VAE:
    """TINY with three levels, `layers` resnets a level and GroupNorm affines away from 1 and 0."""
    torch.manual_seed(0)
    vae = VAE(VAEConfig(autoencoder={**TINY, "block_out_channels": (8, 16, 16), "layers_per_block": layers,
                                     "down_block_types": ("DownEncoderBlock2D",) * 3,
                                     "up_block_types": ("UpDecoderBlock2D",) * 3}, attention_window=8))
    for module in vae.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.weight.data.normal_(1, 0.3)
            module.bias.data.normal_(0, 0.3)
    return vae.eval()


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_encoder_first_level_by_strips_is_diffusers_encoder(monkeypatch, layers):
    """The encoder's first level by strips (statistics over strips, one stored map rewritten in place) against
    diffusers' Encoder.forward: float32 within rounding (1e-6 measured), odd sizes and a batch of two, strips of
    3 rows (edge strips of 1 and 2); in bf16 the same distance from the float32 encoder as diffusers' bf16 one."""
    monkeypatch.setattr(vae_module, "STRIP_ROWS", 3)
    monkeypatch.setattr(vae_module, "STRIP_LEVEL_ELEMENTS", 0)
    monkeypatch.setattr(vae_module, "STRIP_LEVEL_FLOAT32", True)
    encoder = strip_vae(layers).autoencoder.encoder
    assert "forward" in encoder.__dict__
    plain = type(encoder).forward
    for h, w in ((37, 29), (40, 24), (5, 9)):
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            got, want = encoder(x), plain(encoder, x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    monkeypatch.setattr(vae_module, "STRIP_LEVEL_FLOAT32", False)
    ran, strips = [], vae_module._first_level_by_strips
    monkeypatch.setattr(vae_module, "_first_level_by_strips", lambda *a: ran.append(1) or strips(*a))
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        exact = plain(encoder, x)  # float32 without autocast: diffusers' path (the strips are off)
        torch.testing.assert_close(encoder(x), exact, rtol=0, atol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = encoder(x).float(), plain(encoder, x).float()
    assert ran == [1]  # the strips ran in bf16 only (they may give diffusers' very bits)
    mse_strips, mse_diffusers = ((got - exact) ** 2).mean(), ((want - exact) ** 2).mean()
    assert mse_strips < 1.5 * mse_diffusers + 1e-6, (mse_strips, mse_diffusers)


def test_encoder_strips_only_on_large_low_precision_maps(monkeypatch):
    """Below STRIP_LEVEL_ELEMENTS, or in float32, the encoder runs diffusers' forward (bit for bit)."""
    encoder = strip_vae(2).autoencoder.encoder
    called = []
    monkeypatch.setattr(vae_module, "_first_level_by_strips", lambda *a: called.append(1) or None)
    x = image(16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        encoder(x)
    assert not called
    monkeypatch.setattr(vae_module, "STRIP_LEVEL_ELEMENTS", 0)
    with torch.no_grad():
        encoder(x)  # float32
    assert not called
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(Exception):
        encoder(x)  # the stub returns None: the strips were asked for
    assert called


def test_drop_part():
    vae = tiny_vae()
    latent = vae.encode(image())
    vae.drop_part("encoder")
    assert vae.autoencoder.encoder is None and vae.autoencoder.quant_conv is None
    assert vae.decode(latent).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        vae.drop_part("generator")
