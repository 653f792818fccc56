"""The fast mode (FAST_ENCODING / FAST_DECODING: bf16 autocast and channels_last in the image networks): the
entropy path and so the symbols do not change, the images stay within rounding of the exact path's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from onedc_lib.eval.metrics import psnr
from onedc_lib.eval.modes import options
from onedc_lib.models.onedc import FAST_DECODING, FAST_ENCODING, REFERENCE_DECODING, EncodeOptions
from onedc_lib.weights import build_model


@pytest.fixture(scope="module")
def model():
    return build_model("nano_q3")


@pytest.fixture(scope="module")
def image():
    from skimage import data

    x = torch.from_numpy(data.astronaut()).float().div(255).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(x, size=(128, 192), mode="area").clamp(0, 1)


def entropy_outputs(model, data: bytes, encoding, decoding) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_hat, the image) of one decompress: y_hat is what the float64 entropy path hands to reconstruct."""
    seen = []
    reconstruct = model.reconstruct

    def recording(y_hat, *args):
        seen.append(y_hat.clone())
        return reconstruct(y_hat, *args)

    model.reconstruct = recording
    try:
        with options(model, encoding, decoding):
            image = model.decompress(data)
    finally:
        del model.reconstruct
    return seen[0], image


def y_symbols(model, x: torch.Tensor, encoding: EncodeOptions) -> np.ndarray:
    with options(model, encoding, REFERENCE_DECODING), torch.no_grad():
        _, steps = model._entropy_inputs(x)
    return np.concatenate([s.numpy().reshape(-1) for s in steps.symbols])


def test_fast_decoding_decodes_the_same_symbols_into_a_close_image(model, image):
    data = model.compress(image).to_bytes()  # the exact encoder (the default options)
    y_exact, exact = entropy_outputs(model, data, EncodeOptions(), REFERENCE_DECODING)
    y_fast, fast = entropy_outputs(model, data, EncodeOptions(), FAST_DECODING)
    assert torch.equal(y_exact, y_fast)  # the symbols CRC checked them too
    assert not torch.equal(exact, fast)  # bf16 did run
    assert psnr(exact, fast) > 30  # nano, random weights; 8-bit PSNR by the evaluation's own function


def test_fast_encoding_writes_a_file_of_nearly_the_same_symbols(model, image):
    exact = y_symbols(model, image, EncodeOptions())
    fast = y_symbols(model, image, FAST_ENCODING)
    assert exact.shape == fast.shape
    # bf16 moves y by rounding: only values near a rounding boundary change, and by one (nano with random
    # weights at 128x192: 4 % of 3072)
    differ = exact != fast
    assert differ.mean() < 0.1 and np.abs(exact - fast).max() <= 1
    with options(model, FAST_ENCODING, REFERENCE_DECODING):
        data = model.compress(image).to_bytes()
    decoded = entropy_outputs(model, data, EncodeOptions(), REFERENCE_DECODING)[1]  # decodes as any file
    assert decoded.shape == image.shape


def test_default_options_are_the_exact_path(model):
    assert model.encode_options == EncodeOptions(channels_last=False, dtype=torch.float32)
    assert FAST_DECODING.dtype == FAST_ENCODING.dtype == torch.bfloat16
    assert FAST_DECODING.channels_last and FAST_ENCODING.channels_last


def test_bf16_weights_compute_the_autocast_bits_in_half_the_memory(image):
    """cast_weights(bf16): the fast mode's files and images are those of autocasting the float32 weights."""
    model = build_model("nano_q3")
    with options(model, FAST_ENCODING, FAST_DECODING):
        data = model.compress(image).to_bytes()
        decoded = model.decompress(data)
    big = [m for m in (model.vae, model.generator, model.codec.enc) if m is not None]
    before = sum(p.numel() * p.element_size() for m in big for p in m.parameters())
    model_id = model.model_id
    assert model.cast_weights(torch.bfloat16, merge_lora=False) is model
    after = sum(p.numel() * p.element_size() for m in big for p in m.parameters())
    assert after < 0.52 * before  # norm layers stay float32
    assert model.model_id == model_id
    assert all(p.dtype == torch.float32 for m in model.codec.entropy_modules() for p in m.parameters())
    with options(model, FAST_ENCODING, FAST_DECODING):
        assert model.compress(image).to_bytes() == data
        assert torch.equal(model.decompress(data), decoded)
    with options(model, EncodeOptions(), REFERENCE_DECODING), pytest.raises(ValueError, match="bfloat16"):
        model.decompress(data)
    with options(model, EncodeOptions(), FAST_DECODING), pytest.raises(ValueError, match="bfloat16"):
        model.compress(image)


def test_keep_only_one_direction_writes_and_reads_the_same_files(image):
    """keep_only: a model that only compresses writes the whole model's file (same id) without the generator and
    the VAE decoder; one that only decompresses decodes it to the same image without g_a, h_enc and the VAE
    encoder; each refuses the other direction."""
    whole = build_model("nano_q3")
    data = whole.compress(image).to_bytes()
    decoded = whole.decompress(data)
    encoder = build_model("nano_q3").keep_only("compress")
    decoder = build_model("nano_q3").keep_only("decompress")
    assert not hasattr(encoder, "generator") and encoder.vae.autoencoder.decoder is None
    assert decoder.codec.enc is None and decoder.codec.hyper_enc is None and decoder.vae.autoencoder.encoder is None
    assert encoder.model_id == decoder.model_id == whole.model_id
    assert encoder.compress(image).to_bytes() == data
    assert torch.equal(decoder.decompress(data), decoded)
    with pytest.raises(ValueError, match="kept only what compress runs"):
        encoder.decompress(data)
    with pytest.raises(ValueError, match="kept only what decompress runs"):
        decoder.compress(image)
    with pytest.raises(ValueError):
        decoder.keep_only("compress")
    with pytest.raises(ValueError):
        whole.keep_only("encode")
    fast = build_model("nano_q3").keep_only("compress").cast_weights(torch.bfloat16)  # the benchmarks' order
    with options(fast, FAST_ENCODING, FAST_DECODING):
        fast.compress(image)


def test_bf16_weights_with_lora_merged_decode_close_to_the_unmerged(image):
    """cast_weights' default merges the generator's LoRA into its base weights: the same files' images within bf16
    rounding of the unmerged bf16 path, and every LoRA layer runs its base layer alone."""
    from peft.tuners.lora.layer import LoraLayer

    model = build_model("nano_q3")
    for name, p in model.generator.named_parameters():  # LoRA's B starts at zero: make the merge matter
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    model.weights_changed()
    with options(model, FAST_ENCODING, FAST_DECODING):
        data = model.compress(image).to_bytes()
        unmerged = model.decompress(data)
    model.cast_weights(torch.bfloat16)
    layers = [m for m in model.generator.modules() if isinstance(m, LoraLayer)]
    assert layers and all(layer.merged for layer in layers)
    with options(model, FAST_ENCODING, FAST_DECODING):
        assert model.compress(image).to_bytes() == data  # the encoder has no LoRA
        merged = model.decompress(data)
    assert not torch.equal(merged, unmerged) and psnr(merged, unmerged) > 35


def test_merge_lora_equals_the_adapters_in_float32():
    """fast.merge_lora in float32: one layer computing what base + scaling * B(A(x)) computes (oracle: peft's own
    unmerged forward)."""
    from onedc_lib.models.fast import merge_lora

    model = build_model("nano_q3")
    generator = model.generator
    for name, p in generator.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    ctrl = torch.randn(1, model.config.codec.ctrl_ch, 16, 24)
    tokens = torch.randn(1, 6, model.config.generator.unet["cross_attention_dim"])
    with torch.no_grad():
        expected = generator(ctrl, tokens).x0
        assert merge_lora(generator, torch.float32) > 0
        merged = generator(ctrl, tokens).x0
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)


def test_fast_layers_give_convolutions_channels_last_inputs_only_inside():
    from onedc_lib.models.fast import fast_layers

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1))
    seen = []
    net[1].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].is_contiguous()))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        plain = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16), fast_layers(net, dtype=torch.bfloat16):
            fast = net(x)
        again = net(x)
    assert torch.equal(plain, again)  # outside the context: the layers' own forward
    assert seen == [True, False, True]  # inside, the first layer's input became channels_last, so its output is
    assert fast.dtype == torch.bfloat16 and fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.float(), plain, atol=0.05, rtol=0.05)
    with fast_layers(net, dtype=torch.float32), torch.no_grad():  # float32: nothing changes
        assert torch.equal(net(x), plain)


def test_batched_windowed_attention_equals_one_window_at_a_time():
    """The fast path's batched windows against vae.windowed_attention (the oracle), edge windows partial, with and
    without per-window statistics."""
    from onedc_lib.models.fast import batched_windowed_attention
    from onedc_lib.models.vae import windowed_attention

    torch.manual_seed(0)
    channels = 32
    weights = [t for _ in range(4) for t in (torch.randn(channels, channels) / channels**0.5, torch.randn(channels))]
    norm = (torch.rand(channels) + 0.5, torch.randn(channels))
    for shape in ((1, channels, 20, 13), (2, channels, 8, 16), (1, channels, 3, 5)):
        x = torch.randn(shape)
        for tile_norm in (True, False):
            args = (*weights, 2, 8, tile_norm, 8, *norm, 1e-6)
            expected = windowed_attention(x, *args)
            torch.testing.assert_close(batched_windowed_attention(x, *args), expected, atol=1e-5, rtol=1e-5)
            cl = batched_windowed_attention(x.contiguous(memory_format=torch.channels_last), *args)
            torch.testing.assert_close(cl, expected, atol=1e-5, rtol=1e-5)
