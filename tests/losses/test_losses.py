"""Training losses on tiny tensors and the nano model: values, signs and limits, and where gradients go."""
import contextlib
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from onedc_lib.config import LossConfig, load_config
from onedc_lib.entropy.rate import gaussian_bits
from onedc_lib.losses import (GANClassifier, LPIPSLoss, LPIPSWeightsError, add_noise, classifier_loss, critic_loss,
                              dmd_gradient, dmd_loss, distillation_term, fake_score_loss, gan_generator_loss,
                              l1_loss, lmbda_at, mid_block_features, predict_eps, predict_x0, rate_bpp,
                              sample_timesteps, stage1_loss, stage2_generator_loss, z_bpp)
from onedc_lib.losses import rd
from onedc_lib.models.distill_head import DistillationHead
from onedc_lib.models.onedc import pad_to_multiple
from onedc_lib.models.tokenizer import MaskGITTokenizer
from onedc_lib.weights import build_model

NANO = load_config("nano_q3")
TOKENS = (2, 3, NANO.generator.unet["cross_attention_dim"])  # a caption-like [B, N, D] condition


def tiny_unet(seed: int) -> UNet2DConditionModel:
    """A plain UNet2DConditionModel as the nano generator's base UNet (4-ch latents, 64-wide tokens)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**NANO.generator.unet)


@pytest.fixture(scope="module")
def teacher():
    return tiny_unet(1).requires_grad_(False)


@pytest.fixture(scope="module")
def fake():
    return tiny_unet(2)


@pytest.fixture(scope="module")
def lpips_random():
    with pytest.warns(UserWarning, match="RANDOM"):
        return LPIPSLoss(pretrained=False)


@pytest.fixture(scope="module")
def model():
    return build_model("nano_q3")


@contextlib.contextmanager
def training(module: nn.Module):
    module.train()
    try:
        yield module
    finally:
        module.eval()


def grads(module: nn.Module) -> dict[str, bool]:
    """name -> whether the parameter holds a nonzero gradient."""
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


def none_have_grads(module: nn.Module) -> bool:
    return all(p.grad is None for p in module.parameters())


# ---------------------------------------------------------------------------------------------------- lambda
def test_lambda_warmup_is_quadratic_from_start_to_lambda():
    assert lmbda_at(0, 4.6) == pytest.approx(1e-4)
    assert lmbda_at(2000, 4.6) == pytest.approx(1e-4 + (4.6 - 1e-4) / 4)
    assert lmbda_at(4000, 4.6) == pytest.approx(4.6)
    assert lmbda_at(10_000, 4.6) == lmbda_at(4000, 4.6)
    assert lmbda_at(1000, 1.8, warmup_steps=2000, start=0.0) == pytest.approx(0.45)
    assert lmbda_at(5, 1.8, warmup_steps=0) == 1.8
    values = [lmbda_at(s, 12.2) for s in range(0, 4001, 100)]
    assert values == sorted(values)


def test_loss_config_defaults_and_overrides():
    cfg = LossConfig()
    assert (cfg.lmbda_warmup_steps, cfg.lmbda_start, cfg.distill_weight, cfg.lpips_weight) == (4000, 1e-4, 1e-3, 1.0)
    assert (cfg.dmd_weight, cfg.gan_weight, cfg.stage2_pixel_weight) == (1.0, 1e-3, 0.625)
    assert (cfg.cfg_scale, cfg.dmd_t_min, cfg.dmd_t_max, cfg.gan_critic_weight) == (1.75, 20, 640, 1e-2)
    assert load_config("nano_q3", {"loss.cfg_scale": 2.0}).loss.cfg_scale == 2.0


# ---------------------------------------------------------------------------------------------------- rate
def test_rate_bpp_counts_padded_pixels():
    bits = torch.full((2, 8, 3, 5), 0.5)  # two images padded to 48 x 80
    assert rate_bpp(bits).item() == pytest.approx(0.5 * 8 * 15 / (48 * 80))
    assert rate_bpp(bits, num_pixels=100).item() == pytest.approx(bits.sum().item() / 100)
    assert z_bpp() == pytest.approx(14 / 4096)


def test_rate_of_the_gaussian_model_follows_scale():
    """Training bits: a far residual costs less as the scale grows toward it, a zero residual more; 0.11 floors."""
    scales = torch.tensor([1.0, 1.5, 2.0, 3.0])  # all below |far|: bits are smallest near scale = |v|
    far = gaussian_bits(torch.full_like(scales, 4.0), scales, training=True)
    near = gaussian_bits(torch.zeros_like(scales), scales, training=True)
    assert torch.all(far.diff() < 0) and torch.all(near.diff() > 0) and torch.all(near >= 0)
    floor = gaussian_bits(torch.full((3,), 0.3), torch.tensor([0.01, 0.05, 0.11]), training=True)
    assert torch.allclose(floor, floor[2].expand(3))


def test_rate_bpp_of_the_codec_matches_the_model_and_trains_the_codec(model):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    with training(model):
        out = model(x)
    bpp = rate_bpp(out.codec)
    torch.testing.assert_close(bpp, out.bpp_y)
    assert torch.isfinite(bpp) and bpp > 0
    model.zero_grad(set_to_none=True)
    bpp.backward()
    g = grads(model.codec)
    assert any(v for n, v in g.items() if n.startswith("enc.")) and any(v for n, v in g.items() if "hyper_enc" in n)
    assert none_have_grads(model.vae) and none_have_grads(model.generator)
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------- L1, LPIPS
def test_l1():
    x = torch.rand(2, 3, 8, 8)
    assert l1_loss(x, x).item() == 0
    assert l1_loss(x + 0.25, x).item() == pytest.approx(0.25)


def test_lpips_random_backbone_limits_and_gradients(lpips_random):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    assert lpips_random(x, x).item() == pytest.approx(0, abs=1e-7)
    value = lpips_random(y, x)
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    value.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert none_have_grads(lpips_random) and not any(p.requires_grad for p in lpips_random.parameters())


def test_lpips_uses_average_pools_and_stays_in_eval(lpips_random):
    modules = list(lpips_random.modules())
    assert not any(isinstance(m, nn.MaxPool2d) for m in modules)
    assert sum(isinstance(m, nn.AvgPool2d) for m in modules) == 4  # VGG16's pools inside the relu5_3 reach
    wrapper = nn.Sequential(lpips_random).train()
    assert wrapper.training and not any(m.training for m in lpips_random.modules())


def test_lpips_loads_given_backbone_weights_exactly(lpips_random, tmp_path):
    features = {}
    for name, param in lpips_random.model.net.named_parameters():  # slice{k}.{torchvision index}.{weight,bias}
        _, index, kind = name.split(".")
        features[f"features.{index}.{kind}"] = param.detach() + 1
    loss = LPIPSLoss(backbone_weights=features)
    loaded = dict(loss.model.net.named_parameters())
    assert torch.equal(loaded["slice3.12.weight"], features["features.12.weight"])
    assert torch.equal(loaded["slice5.28.bias"], features["features.28.bias"])
    torch.save({"module." + k: v for k, v in features.items()}, tmp_path / "vgg16.pth")  # a DDP-style file
    from_file = dict(LPIPSLoss(backbone_weights=tmp_path / "vgg16.pth").model.net.named_parameters())
    assert all(torch.equal(from_file[name], loaded[name]) for name in loaded)
    # the linear layers are the lpips wheel's v0.1 VGG ones in both
    torch.testing.assert_close(loss.model.lin2.model[1].weight, lpips_random.model.lin2.model[1].weight)


def test_lpips_refuses_missing_or_wrong_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("ONEDC_CACHE", str(tmp_path / "empty_cache"))  # nothing provisioned there
    with pytest.raises(LPIPSWeightsError, match="pretrained=False"):
        LPIPSLoss()
    monkeypatch.setattr(rd, "_provisioned_backbone", lambda arch: pytest.fail("weights were given"))
    with pytest.raises(LPIPSWeightsError, match="not found"):
        LPIPSLoss(backbone_weights=tmp_path / "missing.pth")
    with pytest.raises(LPIPSWeightsError, match="not a torchvision vgg16"):
        LPIPSLoss(backbone_weights={"features.0.weight": torch.zeros(64, 3, 3, 3)})
    import torchvision

    alexnet = {f"features.{k}": v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    alexnet["features.3.bias"] = torch.zeros(7)
    with pytest.raises(LPIPSWeightsError, match=r"features.3.bias has shape \(7,\), alexnet needs \(192,\)"):
        LPIPSLoss(backbone_weights=alexnet, net="alex")
    with pytest.raises(ValueError):
        LPIPSLoss(backbone_weights={}, pretrained=False)


def test_lpips_with_provisioned_vgg16_weights():
    try:
        loss = LPIPSLoss()
    except LPIPSWeightsError as error:
        pytest.skip(f"VGG16 weights not provisioned: {error}")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    slight = loss((x + 0.02 * torch.randn_like(x)).clamp(0, 1), x)
    other = loss(torch.rand(1, 3, 64, 64), x)
    assert 0 < slight < other


def test_lpips_alex_equals_the_lpips_metric_on_the_same_backbone():
    """net='alex' (nano's training loss) is lpips' LPIPS-AlexNet itself: same numbers as the evaluation metric's
    network when both hold the provisioned AlexNet; an unknown net is refused."""
    import lpips

    from onedc_lib.eval import backbones as metric_weights

    try:
        loss = LPIPSLoss(net="alex")
        features, _ = metric_weights.load_features_state_dict("alexnet")
    except (LPIPSWeightsError, metric_weights.MetricWeightsError) as error:
        pytest.skip(f"AlexNet weights not provisioned: {error}")
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    for name, param in reference.net.named_parameters():
        _, index, kind = name.split(".")
        param.data.copy_(features[f"features.{index}.{kind}"])
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loss(y, x), reference(y * 2 - 1, x * 2 - 1).mean())
    assert not any(isinstance(m, torch.nn.AvgPool2d) for m in loss.modules())  # pooling swap is VGG's only
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPSLoss(net="squeeze")


# ---------------------------------------------------------------------------------------------------- distillation
def test_distillation_term_trains_head_and_codec_not_tokenizer(model):
    torch.manual_seed(0)
    tokenizer = MaskGITTokenizer(NANO.tokenizer)  # deliberately left requires_grad=True: no gradient may reach it
    head = DistillationHead(NANO.head, in_ch=NANO.codec.semantic_ch, codebook_size=NANO.tokenizer.codebook_size)
    x = torch.rand(2, 3, 64, 64)
    with training(model):  # the FSQ's straight-through estimator is on in training only
        out = model.codec(x * 2 - 1, model.encode_latents(x))
    terms = distillation_term(head, tokenizer, x, out.c_map)
    assert torch.isfinite(terms.loss) and terms.loss > 0 and 0 <= terms.accuracy <= 1
    assert terms.loss >= terms.ce  # CE + 0.01 * MSE
    model.zero_grad(set_to_none=True)
    terms.loss.backward()
    assert all(grads(head)[n] for n, p in head.named_parameters() if p.requires_grad and "mlp_head" in n)
    g = grads(model.codec)
    for part in ("semantic_adaptor.", "hyper_enc.", "enc."):  # h_sem, h_enc (through the FSQ STE), g_a
        assert any(v for n, v in g.items() if n.startswith(part)), part
    assert none_have_grads(tokenizer) and none_have_grads(model.vae)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="padded"):
        distillation_term(head, tokenizer, x[..., :32, :], out.c_map)


# ---------------------------------------------------------------------------------------------------- DMD
def test_dmd_gradient_formula_and_limits():
    torch.manual_seed(0)
    latent, x0_real, x0_fake = torch.randn(3, 2, 4, 4, 4).unbind(0)
    assert torch.equal(dmd_gradient(latent, x0_real, x0_real), torch.zeros_like(latent))
    grad = dmd_gradient(latent, x0_real, x0_fake)
    norm = (latent - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(grad, (x0_fake - x0_real) / norm)
    assert torch.equal(dmd_gradient(latent, latent, x0_fake), torch.zeros_like(latent))  # 0/0 -> 0, not NaN


def test_timesteps_are_integers_in_the_closed_range():
    t = sample_timesteps(4000, 20, 640, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() == 20 and t.max() == 640
    assert torch.equal(sample_timesteps(3, 7, 7, "cpu"), torch.full((3,), 7))


def test_add_noise_and_x0_prediction_invert_each_other():
    class Oracle(nn.Module):  # a "UNet" that knows the noise
        def __init__(self, noise):
            super().__init__()
            self.noise = noise

        def forward(self, x_t, t, encoder_hidden_states):
            return type("Out", (), {"sample": self.noise})

    torch.manual_seed(0)
    latent, noise = torch.randn(2, 2, 4, 8, 8).unbind(0)
    t = torch.tensor([20, 640])
    x0 = predict_x0(Oracle(noise), add_noise(latent, noise, t), t, torch.zeros(2, 3, 8))
    torch.testing.assert_close(x0, latent, atol=1e-4, rtol=0)


def test_dmd_loss_is_zero_when_real_and_fake_scores_agree(teacher):
    latent = torch.randn(2, 4, 8, 8, requires_grad=True)
    cond = torch.randn(*TOKENS)
    out = dmd_loss(latent, teacher, teacher, cond, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.all(out.grad == 0) and out.loss.item() == 0
    out.loss.backward()
    assert torch.all(latent.grad == 0)
    assert torch.all((out.timesteps >= 20) & (out.timesteps <= 640))
    # guidance between identical cond and uncond changes nothing (up to the batched call's rounding)
    out = dmd_loss(latent, teacher, teacher, cond, cond, cfg_scale=1.75, generator=torch.Generator().manual_seed(0))
    assert out.grad.abs().max() < 1e-5 and out.loss < 1e-12


def test_dmd_loss_gradient_moves_the_latent_toward_the_real_score(teacher, fake):
    torch.manual_seed(0)
    gen = nn.Conv2d(4, 4, 3, padding=1)  # a stand-in generator
    source = torch.randn(2, 4, 8, 8)
    latent = gen(source)
    cond, uncond = torch.randn(*TOKENS), torch.zeros(1, 1, TOKENS[-1])  # different token counts: two calls
    teacher.zero_grad(set_to_none=True)
    fake.zero_grad(set_to_none=True)
    out = dmd_loss(latent, teacher, fake, cond, uncond, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out.loss) and out.loss > 0
    torch.testing.assert_close(out.loss, 0.5 * out.grad.square().mean())
    (d_latent,) = torch.autograd.grad(out.loss, latent, retain_graph=True)
    torch.testing.assert_close(d_latent, out.grad / latent.numel())
    # descent direction -grad = (x0_real - x0_fake) / norm: toward the real score's x0, away from the fake's
    assert ((out.x0_real - out.x0_fake) * -out.grad).sum() > 0
    out.loss.backward()
    assert all(grads(gen).values())
    assert none_have_grads(teacher) and none_have_grads(fake)


def test_real_score_guidance_formula():
    """eps = eps_uncond + s (eps_cond - eps_uncond), in the batched call (same token count) and in two calls."""
    class TokenScaled(nn.Module):  # a "UNet" whose epsilon is x_t times the mean of its tokens
        def forward(self, x_t, t, encoder_hidden_states):
            return type("Out", (), {"sample": x_t * encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)})

    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([20, 640])
    cond = torch.full((2, 3, 8), 3.0)
    for uncond in (torch.full((1, 3, 8), 1.0), torch.full((1, 1, 8), 1.0)):  # batched / two calls
        eps = predict_eps(TokenScaled(), x_t, t, cond, uncond, cfg_scale=1.75)
        torch.testing.assert_close(eps, x_t * (1.0 + 1.75 * (3.0 - 1.0)))
    torch.testing.assert_close(predict_eps(TokenScaled(), x_t, t, cond, uncond, cfg_scale=1.0), x_t * 3.0)


def test_dmd_guidance_needs_uncond(teacher, fake):
    with pytest.raises(ValueError, match="uncond"):
        dmd_loss(torch.randn(1, 4, 8, 8), teacher, fake, torch.randn(1, 3, TOKENS[-1]), None)


def test_fake_score_loss_trains_the_fake_unet_only(fake):
    latent = torch.randn(2, 4, 8, 8, requires_grad=True)
    fake.zero_grad(set_to_none=True)
    loss = fake_score_loss(fake, latent * 2, torch.randn(*TOKENS), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert latent.grad is None
    assert sum(grads(fake).values()) > 0.9 * len(grads(fake))
    fake.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------- GAN
@pytest.mark.parametrize("size, out", [(1, 1), (2, 1), (4, 1), (8, 1), (16, 2), (5, 1)])
def test_classifier_gives_logits_for_any_map_size(size, out):
    classifier = GANClassifier(64)
    assert classifier(torch.randn(2, 64, size, size)).shape == (2, 1, out, out)


def test_mid_block_features_stop_early_and_leave_no_hook(fake):
    torch.manual_seed(0)
    x_t, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.randn(*TOKENS)
    with torch.no_grad():
        early = mid_block_features(fake, x_t, t, cond)
        full = mid_block_features(fake, x_t, t, cond, stop_at_mid=False)
    assert early.shape == (2, fake.config.block_out_channels[-1], 4, 4)
    torch.testing.assert_close(early, full)
    assert not fake.mid_block._forward_hooks


def test_classifier_loss_ordering():
    high, low = torch.full((4, 1, 1, 1), 3.0), torch.full((4, 1, 1, 1), -3.0)
    right = classifier_loss(logits_fake=low, logits_real=high)
    wrong = classifier_loss(logits_fake=high, logits_real=low)
    undecided = classifier_loss(torch.zeros(4, 1, 1, 1), torch.zeros(4, 1, 1, 1))
    assert 0 < right < undecided < wrong
    assert undecided.item() == pytest.approx(2 * math.log(2))
    # the generator's softplus(-D) falls as the critic believes its samples more
    assert F.softplus(-high).mean() < F.softplus(-low).mean()


def test_gan_generator_loss_reaches_the_generator_only(fake):
    torch.manual_seed(0)
    classifier = GANClassifier.for_unet(fake)
    gen = nn.Conv2d(4, 4, 3, padding=1)
    fake.zero_grad(set_to_none=True)
    flags = [p.requires_grad for p in fake.parameters()]
    loss = gan_generator_loss(fake, classifier, gen(torch.randn(2, 4, 8, 8)), torch.randn(*TOKENS),
                              generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(grads(gen).values())
    assert none_have_grads(fake) and none_have_grads(classifier)
    assert [p.requires_grad for p in fake.parameters()] == flags  # restored after the call
    assert all(p.requires_grad for p in classifier.parameters())


def test_critic_loss_trains_fake_unet_and_classifier_not_generator(fake):
    torch.manual_seed(0)
    classifier = GANClassifier.for_unet(fake)
    fake_latent = torch.randn(2, 4, 8, 8, requires_grad=True)
    real_latent = torch.randn(2, 4, 8, 8, requires_grad=True)
    fake.zero_grad(set_to_none=True)
    out = critic_loss(fake, classifier, fake_latent * 1.0, real_latent * 1.0, torch.randn(*TOKENS),
                      generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v).all() for v in out)
    torch.testing.assert_close(out.loss, out.denoising + 1e-2 * out.classifier)
    assert out.classifier > 0 and out.denoising > 0
    out.loss.backward()
    assert fake_latent.grad is None and real_latent.grad is None
    assert all(grads(classifier).values())
    g = grads(fake)
    assert any(v for n, v in g.items() if n.startswith("mid_block.")) and any(
        v for n, v in g.items() if n.startswith("up_blocks."))  # the classifier and the denoising loss
    fake.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------- stages
def test_stage_combinations_apply_the_config_weights():
    one = torch.tensor(1.0)
    cfg = LossConfig(lmbda=2.0)
    total = stage2_generator_loss(dmd=one * 2, gan=one * 3, l1=one * 5, lpips=one * 7, cfg=cfg)
    assert total.item() == pytest.approx(1.0 * 2 + 1e-3 * 3 + 0.625 * (5 + 7))
    cfg = dataclasses.replace(cfg, lpips_weight=0.5)
    total = stage1_loss(l1=one, lpips=one * 4, bpp=one * 0.1, distill=one * 6, step=2000, cfg=cfg)
    assert total.item() == pytest.approx(1 + 0.5 * 4 + lmbda_at(2000, 2.0) * 0.1 + 1e-3 * 6)


def test_stage1_trains_codec_lora_and_head_never_the_frozen_parts(model, lpips_random):
    torch.manual_seed(0)
    tokenizer = MaskGITTokenizer(NANO.tokenizer).requires_grad_(False)
    head = DistillationHead(NANO.head, in_ch=NANO.codec.semantic_ch, codebook_size=NANO.tokenizer.codebook_size)
    x = torch.rand(1, 3, 64, 64)
    with training(model):
        out = model(x)
    distill = distillation_term(head, tokenizer, pad_to_multiple(x), out.codec.c_map)
    total = stage1_loss(l1=l1_loss(out.x_hat, x), lpips=lpips_random(out.x_hat, x), bpp=rate_bpp(out.codec),
                        distill=distill.loss, step=100, cfg=NANO.loss)
    assert torch.isfinite(total)
    model.zero_grad(set_to_none=True)
    total.backward()
    g = grads(model.generator)
    assert any(v for n, v in g.items() if "lora_" in n)
    assert any(v for n, v in g.items() if n.startswith("unet.conv_in.")) and \
        any(v for n, v in g.items() if n.startswith("unet.vae_reduction."))
    assert all(p.grad is None for n, p in model.generator.named_parameters() if "base_layer" in n)
    assert any(grads(model.codec).values()) and any(grads(head).values())
    assert none_have_grads(model.vae) and none_have_grads(tokenizer) and none_have_grads(lpips_random)
    model.zero_grad(set_to_none=True)


def test_stage2_trains_the_generator_only(model, teacher, fake, lpips_random):
    """Codec frozen; DMD + GAN + pixel terms reach LoRA / conv_in / vae_reduction and nothing else."""
    torch.manual_seed(0)
    classifier = GANClassifier.for_unet(fake)
    model.codec.requires_grad_(False)
    try:
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            codec = model.codec(x * 2 - 1, model.encode_latents(x))
        latent = model.generator(codec.ctrl, codec.tokens).x0
        x_hat = (model.vae.decode(latent) + 1) / 2
        cond = torch.randn(*TOKENS)
        seed = torch.Generator().manual_seed(0)
        dmd = dmd_loss(latent, teacher, fake, cond, torch.zeros_like(cond), generator=seed)
        gan = gan_generator_loss(fake, classifier, latent, cond, generator=seed)
        total = stage2_generator_loss(dmd=dmd.loss, gan=gan, l1=l1_loss(x_hat, x), lpips=lpips_random(x_hat, x),
                                      cfg=NANO.loss)
        assert torch.isfinite(total)
        for m in (model, teacher, fake, classifier):
            m.zero_grad(set_to_none=True)
        total.backward()
        g = grads(model.generator)
        assert any(v for n, v in g.items() if "lora_" in n) and g["unet.conv_in.weight"]
        assert none_have_grads(model.codec) and none_have_grads(model.vae)
        assert none_have_grads(teacher) and none_have_grads(fake) and none_have_grads(classifier)
    finally:
        model.codec.requires_grad_(True)
        model.zero_grad(set_to_none=True)
