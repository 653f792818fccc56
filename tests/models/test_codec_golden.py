"""The whole codec against the release's reduced-width end-to-end golden (compat README 4.3).

Each stage is fed the golden output of the stage before, so that float noise cannot cross a rounding boundary
and the discrete outputs (z indices, symbols, table indexes) can be compared exactly. Tolerances follow the
README's section 6: y / sem / z atol 2e-4, g_s output 1e-4, entropy parameters 1e-5.
"""
import copy
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from onedc_lib.config import CodecConfig
from onedc_lib.entropy import release_format
from onedc_lib.entropy.context import NUM_STEPS, fold_quarters, four_step_masks
from onedc_lib.entropy.reference import release_decode
from onedc_lib.entropy.tables import release_tables
from onedc_lib.models.codec import Codec

# IntraNoAR(cond_ch=4, ctrl_ch=40, internal_ch=64, bottleneck_ch=24, unet_ch_config=[32, 32, 32]): the
# semantic width of the release is its last UNet width.
SMALL = CodecConfig(ctrl_ch=40, internal_ch=64, bottleneck_ch=24, unet_ch=(32, 32, 32), semantic_ch=32)
N, PADDED_PIXELS = 24, 128 * 192


@pytest.fixture(scope="module")
def small(golden, compat_dir):
    """(codec in eval mode with the golden weights, golden inputs, golden outputs)."""
    g = golden("codec_small_e2e_tensors")
    codec = Codec(SMALL).eval()
    codec.load_state_dict(load_file(compat_dir / "codec_small_e2e_weights.safetensors"), strict=True)
    return codec, g.inputs, g.outputs


def close(actual, expected, atol):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=atol)


def masked(step, t):
    return torch.where(four_step_masks(N, 8, 12, step), t, 0.0)


def test_small_config_is_the_golden_constructor(golden, small):
    codec, _, _ = small
    assert golden("codec_small_e2e_weights").info["constructor"] == {
        "cond_ch": 4, "ctrl_ch": 40, "internal_ch": 64, "bottleneck_ch": 24, "unet_ch_config": [32, 32, 32],
        "z_fsq_levels": [4] * 7}
    assert sum(p.numel() for p in codec.parameters()) == 1_825_047


@torch.no_grad()
def test_analysis(small):
    codec, inputs, out = small
    enc = codec.enc
    close(enc.stem(inputs["x_padded"], inputs["cond"]), out["ga_unet_input"], 2e-4)
    features, sem = enc.unet_features(out["ga_unet_input"])
    close(features, out["ga_unet_up_out"], 2e-4)
    close(sem, out["ga_unet_mid_out"], 2e-4)
    assert torch.equal(out["ga_unet_mid_out"], out["sem"])
    close(enc.trans_coding(out["ga_unet_up_out"]), out["y"], 2e-4)
    y, sem = codec.analysis(inputs["x_padded"], inputs["cond"])  # end to end: y's std is 3, error 4e-5
    close(y, out["y"], 2e-4)
    close(sem, out["sem"], 2e-4)


@torch.no_grad()
def test_hyper_analysis_and_fsq(small):
    codec, _, out = small
    close(codec.hyper_analysis(out["y"], out["sem"]), out["z"], 2e-4)
    z_hat, z_indices = codec.quantize_z(out["z"])
    assert torch.equal(z_hat, out["z_hat"])
    assert torch.equal(z_indices, out["z_indices"])
    assert torch.equal(codec.z_from_indices(out["z_indices"]), out["z_hat"])


@torch.no_grad()
def test_entropy_parameters(small):
    codec, _, out = small
    params, z_semantic = codec.hyper_synthesis(out["z_hat"])
    close(params, out["hyper_dec_entropy_params"], 1e-5)
    close(params, out["dec_z_hat_hyper_dec_entropy_params"], 1e-5)
    close(z_semantic, out["z_semantic"], 1e-5)
    fused, common = codec.fuse(out["hyper_dec_entropy_params"])
    close(fused, out["fused_params"], 1e-5)
    y_hat = torch.zeros_like(out["dec_y_hat"])
    for step in range(1, NUM_STEPS):
        y_hat = y_hat + masked(step - 1, out["dec_y_hat"])
        prior_out = torch.cat(codec.step_params(step, fused, common, y_hat), dim=1)
        close(prior_out, out[f"step{step}_prior_out"], 1e-5)
        assert torch.equal(out[f"step{step}_prior_out"], out[f"dec_step{step}_prior_out"])


def golden_step_params(out, step):
    """(scales, means) the release used at `step`: step 0 from the fused parameters, then the prior outputs."""
    params = out["fused_params"] if step == 0 else out[f"step{step}_prior_out"]
    return params.chunk(2, dim=1)


def test_coder_inputs_exact_from_golden_params(small):
    _, _, out = small
    y_hat = torch.zeros_like(out["y"])
    for step in range(NUM_STEPS):
        scales, means = golden_step_params(out, step)
        q = masked(step, torch.round(out["y"] - means))
        y_hat = y_hat + masked(step, q + means)
        write_scales = fold_quarters(masked(step, scales))
        assert torch.equal(fold_quarters(q), out[f"write_step{step}_symbols"])
        assert torch.equal(write_scales, out[f"write_step{step}_scales"])
        assert torch.equal(release_tables().scale_to_index(write_scales), out[f"write_step{step}_indexes"])
    assert torch.equal(y_hat, out["dec_y_hat"])


@torch.no_grad()
def test_encode_steps_from_own_floats(small):
    """From our own entropy parameters the symbols and indexes come out exact too (no value near a boundary)."""
    codec, _, out = small
    enc = codec.encode_steps(out["y"], out["hyper_dec_entropy_params"])
    close(enc.y_hat, out["dec_y_hat"], 1e-5)
    for step in range(NUM_STEPS):
        assert torch.equal(enc.symbols[step], out[f"write_step{step}_symbols"])
        close(enc.scales[step], out[f"write_step{step}_scales"], 1e-5)
        assert torch.equal(release_tables().scale_to_index(enc.scales[step]), out[f"write_step{step}_indexes"])


@torch.no_grad()
def test_semantic_and_synthesis(small):
    codec, _, out = small
    c_map, tokens = codec.semantic(out["z_semantic"])
    # h_sem's first GroupNorm sees a feature of std 0.03, which amplifies float noise about 200 times: our
    # float32 is 5e-6 from float64, the golden 7.6e-5 (channels_last alone moves ours by 3e-5).
    close(c_map, out["dec_y_semantic"], 2e-4)
    assert tokens.shape == (1, 6, 32)
    assert torch.equal(tokens[0, 4], c_map[0, :, 1, 1])  # row-major: token 4 is row 1, column 1 of a 2x3 map
    close(codec.synthesis(out["dec_y_hat"], out["dec_y_semantic"]), out["dec_x_hat"], 1e-4)


@torch.no_grad()
def test_eval_forward(small):
    codec, inputs, out = small
    fwd = codec(inputs["x_padded"], inputs["cond"])
    assert torch.equal(fwd.z_indices, out["z_indices"])
    close(fwd.y, out["y"], 2e-4)
    close(fwd.y_hat, out["fwd_y_hat"], 2e-4)
    close(fwd.ctrl, out["fwd_x_hat"], 1e-4)
    assert torch.equal(out["fwd_y_hat"], out["dec_y_hat"]) and torch.equal(out["fwd_x_hat"], out["dec_x_hat"])
    torch.testing.assert_close(fwd.bits_y.sum().reshape(1) / PADDED_PIXELS, out["fwd_bpp_y"], atol=0, rtol=1e-5)
    assert fwd.tokens.shape == (1, 6, 32) and fwd.c_map.shape == (1, 32, 2, 3)


@torch.no_grad()
def test_decode_release_file(small, compat_dir):
    """Decode the release's .bin: z from its bytes, y with the release decoder driven by our four-step loop.

    The reference decoder takes a whole stream with all its table indexes, and step k's indexes depend on the
    symbols of steps < k. So we run our decode loop fed with candidate symbols, decode the stream with the
    indexes that loop produced, and require the decoded symbols to equal the candidates: by induction over the
    steps this is exactly what a step-by-step decoder would produce.
    """
    codec, _, out = small
    data = (compat_dir / "codec_small_e2e.bin").read_bytes()
    assert np.array_equal(np.frombuffer(data, np.uint8), out["bin"].numpy())
    h, w, y_len, caption_len = release_format.read_header(data)
    assert (h, w, caption_len) == (120, 180, 0)
    header = release_format.HEADER.size
    stream, z_bytes = data[header:header + y_len], data[header + y_len:]
    assert [8 * len(stream), 8 * len(z_bytes), 8 * len(data)] == out["bits_y_z_total"].tolist()
    z_indices = torch.from_numpy(release_format.unpack_z(z_bytes, release_format.z_count(h, w))).view(1, 2, 3)
    assert torch.equal(z_indices, out["z_indices"])

    params, _ = codec.hyper_synthesis(codec.z_from_indices(z_indices))
    candidates = [out[f"write_step{step}_symbols"] for step in range(NUM_STEPS)]
    indexes = []

    def decode_fn(step, scales):
        indexes.append(release_tables().scale_to_index(scales))
        return candidates[step]

    codec.decode_steps(params, decode_fn)
    decoded = release_decode(release_tables(), stream, torch.cat([i.reshape(-1) for i in indexes]).numpy())
    decoded = torch.from_numpy(decoded.astype(np.float32)).view(NUM_STEPS, *candidates[0].shape)
    candidates = list(decoded)
    indexes.clear()
    y_hat = codec.decode_steps(params, decode_fn)
    for step in range(NUM_STEPS):
        assert torch.equal(indexes[step], out[f"write_step{step}_indexes"])
    assert torch.equal(decoded, torch.stack([out[f"write_step{step}_symbols"] for step in range(NUM_STEPS)]))
    close(y_hat, out["dec_y_hat"], 1e-5)


@torch.no_grad()
def test_float64_entropy_path_gives_the_same_symbols(small):
    codec, _, out = small
    codec64 = copy.deepcopy(codec)
    for module in codec64.entropy_modules():
        module.double()
    enc32 = codec.encode_steps(out["y"], codec.hyper_synthesis(out["z_hat"])[0])
    params64, z_semantic64 = codec64.hyper_synthesis(out["z_hat"])
    enc64 = codec64.encode_steps(out["y"], params64)
    assert params64.dtype == z_semantic64.dtype == enc64.y_hat.dtype == torch.float64
    for step in range(NUM_STEPS):
        assert torch.equal(enc64.symbols[step].float(), enc32.symbols[step])
        # No scale of this golden lies within float32 noise of a table boundary, so the indexes agree too.
        tables = release_tables()
        assert torch.equal(tables.scale_to_index(enc64.scales[step]), tables.scale_to_index(enc32.scales[step]))
    # The rest of the codec takes the float64 outputs as they come.
    fwd32, fwd64 = codec(*_inputs(small)), codec64(*_inputs(small))
    assert fwd64.y_hat.dtype == torch.float64 and fwd64.ctrl.dtype == torch.float32
    close(fwd64.ctrl, fwd32.ctrl, 1e-5)


def _inputs(small):
    _, inputs, _ = small
    return inputs["x_padded"], inputs["cond"]


def test_training_forward(small):
    """Training: same y_hat values (straight-through), noisy residual for the rate, gradients reach g_a."""
    codec, _, out = small
    codec = copy.deepcopy(codec).train()
    fwd = codec(*_inputs(small))
    close(fwd.y_hat, out["fwd_y_hat"], 2e-4)
    assert fwd.ctrl.requires_grad and fwd.bits_y.requires_grad
    (fwd.ctrl.square().mean() + fwd.bits_y.mean() + fwd.c_map.mean()).backward()
    assert codec.enc.pix_emb.weight.grad.abs().sum() > 0
    assert codec.hyper_enc.fusion[-1].weight.grad.abs().sum() > 0  # through FSQ's straight-through estimator
    assert torch.isfinite(fwd.bits_y).all() and fwd.bits_y.sum() > 0


@torch.no_grad()
def test_z_only(small):
    """z-only: the same modules and weights; y_hat is the predicted mean at every step and y costs nothing."""
    codec, inputs, out = small
    z_only = Codec(dataclasses.replace(SMALL, z_only=True)).eval()
    z_only.load_state_dict(codec.state_dict(), strict=True)
    fwd = z_only(inputs["x_padded"], inputs["cond"])
    params, z_semantic = codec.hyper_synthesis(out["z_hat"])
    means = codec.decode_steps(params, lambda step, scales: torch.zeros_like(scales))
    close(fwd.y_hat, means, 1e-5)
    assert torch.count_nonzero(fwd.bits_y) == 0
    close(fwd.ctrl, codec.synthesis(means, codec.semantic(z_semantic)[0]), 1e-5)
