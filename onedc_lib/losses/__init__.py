"""Training losses of OneDC (spec sections 3, 5, 6). Images in [0, 1]; latents in the SD latent space (x 0.18215).

API (what the training loop imports):

rd.py       rate_bpp(codec_out | bits_y, num_pixels=None) -> bpp of y over the padded pixels (batch mean)
            z_bpp(fsq_levels) -> the constant z rate (14 bits per 64x64 block), for logging only
            lmbda_at(step, lmbda, warmup_steps=4000, start=1e-4) -> quadratic lambda warm-up
            l1_loss(x_hat, x)
            LPIPSLoss(backbone_weights=None, pretrained=True)(x_hat, x) -> LPIPS-VGG with average pools (frozen)
            LPIPSWeightsError
            build_lpips(choice, net) -> the training loss's LPIPS term: 'auto' | 'random' | 'off' | a weights file
distill.py  distillation_term(head, tokenizer, x01_padded, c_map) -> DistillTerms(loss (unweighted), ce, accuracy)
            teacher_targets(tokenizer, x01_padded)
dmd.py      dmd_loss(latent, real_unet, fake_unet, cond, uncond, *, cfg_scale, t_min, t_max, alphas_cumprod,
                     generator) -> DMDOutput(loss, grad, timesteps, x0_real, x0_fake)
            fake_score_loss(fake_unet, latent, cond) -> eps MSE on detached latents, t ~ U[0, 1000)
            dmd_gradient, predict_eps, predict_x0, add_noise, sample_timesteps
gan.py      GANClassifier(in_ch) / GANClassifier.for_unet(fake_unet)
            gan_generator_loss(fake_unet, classifier, latent, cond) -> softplus(-D(fake)) (critic frozen inside)
            critic_loss(fake_unet, classifier, fake_latent, real_latent, cond, real_cond=None, *, gan_critic_weight)
                -> CriticOutput(loss, denoising, classifier, logits_fake, logits_real)
            classifier_loss, gan_logits, mid_block_features
combine.py  stage1_loss(*, l1, lpips, bpp, distill, step, cfg)  (L1 + LPIPS + lambda(step) bpp + 0.001 distill)
            stage2_generator_loss(*, dmd, gan, l1, lpips, cfg)  (1.0 DMD + 1e-3 GAN + 0.625 (L1 + LPIPS))

Weights live in `config.LossConfig`; the combination helpers apply them, every other function returns its term
unweighted (except critic_loss, whose total is the critic's whole objective).
"""
from .combine import stage1_loss, stage2_generator_loss
from .distill import DistillTerms, distillation_term, teacher_targets
from .dmd import (DMDOutput, add_noise, dmd_gradient, dmd_loss, fake_score_loss, predict_eps, predict_x0,
                  sample_timesteps)
from .gan import (CriticOutput, GANClassifier, classifier_loss, critic_loss, gan_generator_loss, gan_logits,
                  mid_block_features)
from .rd import LPIPSLoss, LPIPSWeightsError, build_lpips, l1_loss, lmbda_at, rate_bpp, z_bpp

__all__ = [
    "stage1_loss", "stage2_generator_loss",
    "DistillTerms", "distillation_term", "teacher_targets",
    "DMDOutput", "add_noise", "dmd_gradient", "dmd_loss", "fake_score_loss", "predict_eps", "predict_x0",
    "sample_timesteps",
    "CriticOutput", "GANClassifier", "classifier_loss", "critic_loss", "gan_generator_loss", "gan_logits",
    "mid_block_features",
    "LPIPSLoss", "LPIPSWeightsError", "build_lpips", "l1_loss", "lmbda_at", "rate_bpp", "z_bpp",
]
