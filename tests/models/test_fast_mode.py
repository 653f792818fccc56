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
    assert model.cast_weights(torch.bfloat16) is model
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
