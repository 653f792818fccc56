"""FSQ, rate estimate, four-step masks and prior against the release goldens."""
import copy

import pytest
import torch
from safetensors.torch import load_file

from onedc_lib.entropy.context import fold_quarters, four_step_masks
from onedc_lib.models.prior import FourStepPrior, HyperDecoder
from onedc_lib.entropy.fsq import FSQ
from onedc_lib.entropy.rate import gaussian_bits
from onedc_lib.entropy.tables import scale_to_index

N = 32  # channels of y in prior_fourpart_N32


def test_fsq_4x7(golden):
    g = golden("block_fsq_4x7")
    fsq = FSQ([4] * 7).eval()
    assert fsq.state_dict() == {}
    codes, indices = fsq(g.inputs["z"])
    assert torch.equal(codes, g.outputs["codes"])
    assert torch.equal(indices, g.outputs["indices"])
    torch.testing.assert_close(fsq.bound(g.inputs["z"]).permute(0, 2, 3, 1), g.outputs["bounded_channel_last"],
                               atol=1e-6, rtol=0)
    codebook = fsq.indices_to_codes(g.inputs["all_indices"].view(1, 1, -1))
    assert torch.equal(codebook.view(7, -1).T, g.outputs["codes_of_all_indices"])
    assert torch.equal(fsq.indices_to_codes(indices), codes)


def test_fsq_straight_through_in_training(golden):
    z = golden("block_fsq_4x7").inputs["z"].clone().requires_grad_()
    fsq = FSQ([4] * 7)
    codes, _ = fsq.train()(z)
    codes.sum().backward()
    assert torch.equal(codes.detach(), fsq.eval()(z)[0])
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("training", [True, False])
def test_gaussian_bits(golden, training):
    g = golden("block_gaussian_bits")
    bits = gaussian_bits(g.inputs["values"], g.inputs["scales"], training=training)
    expected = g.outputs["bits_train_mode" if training else "bits_eval_mode"]
    torch.testing.assert_close(bits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("key", ["masks_1x128x8x8", "masks_1x8x5x7"])
def test_four_step_masks(golden, key):
    expected = golden("block_fourpart_masks").outputs[key].bool()  # [step, B, C, H, W]
    _, _, c, h, w = expected.shape
    masks = [four_step_masks(c, h, w, step) for step in range(4)]
    for step in range(4):
        assert torch.equal(masks[step], expected[step, 0])
    assert torch.equal(sum(m.int() for m in masks), torch.ones(c, h, w, dtype=torch.int))


@pytest.fixture(scope="module")
def prior_golden(golden):
    g = golden("prior_fourpart_N32")
    hyper_dec, prior = HyperDecoder(7, N).eval(), FourStepPrior(N).eval()
    hyper_dec.load_state_dict({k[len("hyper_dec."):]: v for k, v in g.params.items() if k.startswith("hyper_dec.")},
                              strict=True)
    prior.load_state_dict({k: v for k, v in g.params.items() if not k.startswith("hyper_dec.")}, strict=True)
    return g, hyper_dec, prior


def assert_float_close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_hyper_decoder_and_fusion(prior_golden):
    g, hyper_dec, prior = prior_golden
    params, z_semantic = hyper_dec(g.inputs["z_hat"])
    assert_float_close(params, g.outputs["hyper_dec_entropy_params"])
    assert_float_close(z_semantic, g.outputs["z_semantic"])
    fused, _ = prior.fuse(g.outputs["hyper_dec_entropy_params"])
    assert_float_close(fused, g.outputs["fused_params"])


@torch.no_grad()
def test_step_params_given_golden_context(prior_golden):
    g, _, prior = prior_golden
    fused, common = prior.fuse(g.outputs["hyper_dec_entropy_params"])
    y_hat = torch.zeros_like(g.outputs["y_hat"])
    for step in range(4):
        scales, means = prior.step_params(step, fused, common, y_hat)
        assert_float_close(scales, g.outputs[f"step{step}_scales"])
        assert_float_close(means, g.outputs[f"step{step}_means"])
        y_hat = y_hat + torch.where(four_step_masks(N, 8, 12, step), g.outputs["y_hat"], 0.0)


@torch.no_grad()
def test_encode_steps(prior_golden):
    g, _, prior = prior_golden
    enc = prior.encode_steps(g.inputs["y"], g.outputs["hyper_dec_entropy_params"])
    assert_float_close(enc.y_hat, g.outputs["y_hat"])
    for step in range(4):
        # Rounding margins here are >= 3.7e-4, so symbols from our own floats are exact too. Indexes are
        # checked from the golden scales below: some scales lie within 6e-6 (relative) of a table boundary.
        assert torch.equal(enc.symbols[step], g.outputs[f"write_step{step}_symbols"])
        assert_float_close(enc.scales[step], g.outputs[f"write_step{step}_scales"])


def test_coder_inputs_exact_from_golden_params(prior_golden):
    """Fed the golden step scales/means, symbols, indexes and y_hat are bit-exact."""
    g, _, _ = prior_golden
    y, y_hat = g.inputs["y"], torch.zeros_like(g.inputs["y"])
    for step in range(4):
        mask = four_step_masks(N, 8, 12, step)
        means, scales = g.outputs[f"step{step}_means"], g.outputs[f"step{step}_scales"]
        q = torch.where(mask, torch.round(y - means), 0.0)
        y_hat = y_hat + torch.where(mask, q + means, 0.0)
        write_scales = fold_quarters(torch.where(mask, scales, 0.0))
        assert torch.equal(fold_quarters(q), g.outputs[f"write_step{step}_symbols"])
        assert torch.equal(write_scales, g.outputs[f"write_step{step}_scales"])
        assert torch.equal(scale_to_index(write_scales), g.outputs[f"write_step{step}_indexes"])
    assert torch.equal(y_hat, g.outputs["y_hat"])


@torch.no_grad()
def test_decode_steps(prior_golden):
    g, _, prior = prior_golden
    seen_scales = []

    def decode_fn(step, scales):
        seen_scales.append(scales)
        return g.outputs[f"write_step{step}_symbols"]

    y_hat = prior.decode_steps(g.outputs["hyper_dec_entropy_params"], decode_fn)
    assert_float_close(y_hat, g.outputs["y_hat_from_decoder"])
    for step in range(4):
        assert_float_close(seen_scales[step], g.outputs[f"write_step{step}_scales"])


@torch.no_grad()
def test_eval_forward(prior_golden):
    g, _, prior = prior_golden
    out = prior(g.inputs["y"], g.outputs["hyper_dec_entropy_params"])
    assert_float_close(out.y_hat, g.outputs["y_hat"])
    assert torch.equal(out.residual, g.outputs["y_q"])
    assert_float_close(out.scales, g.outputs["scales_hat"])


def test_training_forward(prior_golden):
    """Training: y_hat is straight-through rounded (same values), the rate sees the residual plus U(-0.5, 0.5)."""
    g, _, prior = prior_golden
    prior = copy.deepcopy(prior).train()
    y = g.inputs["y"].clone().requires_grad_()
    out = prior(y, g.outputs["hyper_dec_entropy_params"])
    assert_float_close(out.y_hat, g.outputs["y_hat"])
    assert (out.residual - g.outputs["y_res"]).abs().max() <= 0.5 + 1e-5
    out.y_hat.sum().backward()
    assert y.grad.abs().sum() > 0


@torch.no_grad()
def test_prior_runs_in_float64(prior_golden):
    """The entropy path must run in float64 (machine-independent streams) with the same results."""
    g, hyper_dec, prior = prior_golden
    hyper_dec64, prior64 = HyperDecoder(7, N).double(), FourStepPrior(N).double()
    hyper_dec64.load_state_dict(hyper_dec.state_dict())
    prior64.load_state_dict(prior.state_dict())
    params, _ = hyper_dec64(g.inputs["z_hat"].double())
    enc = prior64.encode_steps(g.inputs["y"], params)
    assert enc.y_hat.dtype == torch.float64
    assert_float_close(enc.y_hat.float(), g.outputs["y_hat"])
    for step in range(4):
        assert torch.equal(enc.symbols[step].float(), g.outputs[f"write_step{step}_symbols"])


def test_prior_names_match_manifest(manifest):
    """At full size the modules carry the release's top-level names, shapes and order."""
    hyper_dec = HyperDecoder(7, 128)
    assert [(k, list(v.shape)) for k, v in hyper_dec.state_dict().items()] == manifest("model_1_codec", "hyper_dec.")
    prior_keys = [(k, s) for k, s in manifest("model_1_codec", "") if k.startswith("y_")]
    assert [(k, list(v.shape)) for k, v in FourStepPrior(128).state_dict().items()] == prior_keys


@torch.no_grad()
def test_small_codec_entropy_path(golden, compat_dir):
    """Second golden (N = 24, channel groups of 6): FSQ, h_dec, prior and the eval-mode bpp estimate."""
    weights = load_file(compat_dir / "codec_small_e2e_weights.safetensors")  # a plain release state_dict
    out = golden("codec_small_e2e_tensors").outputs
    hyper_dec, prior = HyperDecoder(7, 24).eval(), FourStepPrior(24).eval()
    hyper_dec.load_state_dict({k[len("hyper_dec."):]: v for k, v in weights.items() if k.startswith("hyper_dec.")},
                              strict=True)
    prior.load_state_dict({k: v for k, v in weights.items() if k.startswith("y_")}, strict=True)

    z_hat, z_indices = FSQ([4] * 7).eval()(out["z"])
    assert torch.equal(z_hat, out["z_hat"]) and torch.equal(z_indices, out["z_indices"])
    params, z_semantic = hyper_dec(z_hat)
    assert_float_close(params, out["hyper_dec_entropy_params"])
    assert_float_close(z_semantic, out["z_semantic"])
    fused, common = prior.fuse(params)
    assert_float_close(fused, out["fused_params"])
    y_hat = torch.zeros_like(out["dec_y_hat"])
    for step in range(1, 4):
        y_hat = y_hat + torch.where(four_step_masks(24, 8, 12, step - 1), out["dec_y_hat"], 0.0)
        assert_float_close(torch.cat(prior.step_params(step, fused, common, y_hat), dim=1),
                           out[f"step{step}_prior_out"])
    # The smallest rounding margin of this y is 1e-5 (step 2), five times our float error.
    fwd = prior(out["y"], params)
    assert_float_close(fwd.y_hat, out["fwd_y_hat"])
    padded_pixels = 128 * 192
    bpp = gaussian_bits(fwd.residual, fwd.scales, training=False).sum() / padded_pixels
    torch.testing.assert_close(bpp.reshape(1), out["fwd_bpp_y"], atol=0, rtol=1e-5)
