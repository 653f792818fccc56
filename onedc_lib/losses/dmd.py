"""Distribution matching distillation of stage II (spec section 6), in the SD latent space (VAE latent x 0.18215).

Two score networks judge the generator's x0 latent after noising it to a random t in [t_min, t_max]:
the real score (the frozen teacher UNet, classifier-free guidance `cfg_scale` between cond and uncond tokens)
and the fake score (a trainable UNet that tracks the generator's distribution, guidance 1, cond tokens). Both
predict epsilon; their x0 predictions give

    p = latent - x0_pred,   grad = (p_real - p_fake) / mean_{C,H,W} |p_real|   (per sample)
    generator loss = 0.5 * MSE(latent, stopgrad(latent - grad))

whose gradient with respect to the latent is grad / numel: descent moves the latent toward the real score's
x0 and away from the fake score's. Neither UNet gets gradients from this loss (they run under no_grad). The fake
score learns from `fake_score_loss`: epsilon MSE on noised DETACHED generator latents at t ~ U[0, 1000).

Timesteps are integers; t ~ U[t_min, t_max] includes both ends. The noise schedule is SD-1.5's
(`models.schedule.sd15_alphas_cumprod`) unless `alphas_cumprod` is given.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..models.schedule import eps_to_x0, sd15_alphas_cumprod

NUM_TRAIN_TIMESTEPS = 1000


class DMDOutput(NamedTuple):
    loss: torch.Tensor  # 0.5 * MSE(latent, stopgrad(latent - grad)); gradients reach the latent only
    grad: torch.Tensor  # the normalised DMD gradient [B, C, H, W] (detached)
    timesteps: torch.Tensor  # [B] int64
    x0_real: torch.Tensor  # the real score's x0 prediction (detached, for logging / images)
    x0_fake: torch.Tensor  # the fake score's x0 prediction (detached)


def _alphas(alphas_cumprod: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    table = sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    return table.to(device=device, dtype=torch.float32)


def sample_timesteps(batch: int, t_min: int, t_max: int, device: torch.device | str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """[batch] int64 timesteps uniform on the integers t_min..t_max (both included)."""
    if not 0 <= t_min <= t_max:
        raise ValueError(f"timestep range [{t_min}, {t_max}] is empty or negative")
    return torch.randint(t_min, t_max + 1, (batch,), device=device, generator=generator)


def add_noise(latent: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM forward process: sqrt(abar_t) * latent + sqrt(1 - abar_t) * noise, per sample."""
    abar = _alphas(alphas_cumprod, latent.device)[timesteps].view(-1, 1, 1, 1)
    return (abar.sqrt() * latent.float() + (1 - abar).sqrt() * noise.float()).to(latent.dtype)


def _random_like(latent: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(latent.shape, device=latent.device, dtype=latent.dtype, generator=generator)


def _expand(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    return tokens.expand(batch, *tokens.shape[1:]) if tokens.shape[0] == 1 and batch > 1 else tokens


def predict_eps(unet, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                uncond: torch.Tensor | None = None, cfg_scale: float = 1.0) -> torch.Tensor:
    """Epsilon of a UNet2DConditionModel, with classifier-free guidance when cfg_scale != 1:
    eps_uncond + cfg_scale * (eps_cond - eps_uncond). cond / uncond: encoder_hidden_states [B or 1, N, D];
    one batched call when both have the same token count."""
    batch = x_t.shape[0]
    cond = _expand(cond, batch)
    if cfg_scale == 1.0:
        return unet(x_t, timesteps, encoder_hidden_states=cond).sample.float()
    if uncond is None:
        raise ValueError(f"classifier-free guidance {cfg_scale} needs uncond tokens")
    uncond = _expand(uncond, batch)
    if uncond.shape == cond.shape:
        eps = unet(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]),
                   encoder_hidden_states=torch.cat([uncond, cond])).sample.float()
        eps_uncond, eps_cond = eps.chunk(2)
    else:
        eps_uncond = unet(x_t, timesteps, encoder_hidden_states=uncond).sample.float()
        eps_cond = unet(x_t, timesteps, encoder_hidden_states=cond).sample.float()
    return eps_uncond + cfg_scale * (eps_cond - eps_uncond)


def predict_x0(unet, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
               uncond: torch.Tensor | None = None, cfg_scale: float = 1.0,
               alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) from the UNet's (guided) epsilon, in float32."""
    eps = predict_eps(unet, x_t, timesteps, cond, uncond, cfg_scale)
    abar = _alphas(alphas_cumprod, x_t.device)[timesteps].view(-1, 1, 1, 1)
    return eps_to_x0(x_t.float(), eps, abar)


def dmd_gradient(latent: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """(p_real - p_fake) / mean|p_real| with p = latent - x0_pred, the mean per sample over C, H, W
    (non-finite entries, e.g. from a zero normaliser, become 0)."""
    latent = latent.detach().float()
    p_real = latent - x0_real.float()
    p_fake = latent - x0_fake.float()
    normaliser = p_real.abs().mean(dim=(1, 2, 3), keepdim=True)
    return torch.nan_to_num((p_real - p_fake) / normaliser, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(latent: torch.Tensor, real_unet, fake_unet, cond: torch.Tensor, uncond: torch.Tensor | None = None,
             *, cfg_scale: float = LossConfig.cfg_scale, t_min: int = LossConfig.dmd_t_min,
             t_max: int = LossConfig.dmd_t_max, alphas_cumprod: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> DMDOutput:
    """The generator's DMD loss for its x0 latent [B, 4, h, w] (gradients flow into `latent` only).

    real_unet: the frozen teacher (CFG `cfg_scale` with `uncond`); fake_unet: the trainable fake score (guidance
    1). cond: the tokens both are conditioned on (the caption's text embedding for sd15). Pass unwrapped modules
    (not DDP wrappers): this forward is no part of their training step. `generator` seeds t and the noise.
    """
    with torch.no_grad():
        timesteps = sample_timesteps(latent.shape[0], t_min, t_max, latent.device, generator)
        noise = _random_like(latent, generator)
        x_t = add_noise(latent.detach(), noise, timesteps, alphas_cumprod)
        x0_real = predict_x0(real_unet, x_t, timesteps, cond, uncond, cfg_scale, alphas_cumprod)
        x0_fake = predict_x0(fake_unet, x_t, timesteps, cond, None, 1.0, alphas_cumprod)
        grad = dmd_gradient(latent, x0_real, x0_fake)
        target = latent.detach().float() - grad
    loss = 0.5 * F.mse_loss(latent.float(), target)
    return DMDOutput(loss, grad, timesteps, x0_real, x0_fake)


def fake_score_loss(fake_unet, latent: torch.Tensor, cond: torch.Tensor, *,
                    alphas_cumprod: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Denoising loss of the fake score on the generator's latents (DETACHED here): t ~ U[0, 1000),
    MSE(eps_pred, eps). Gradients reach the fake UNet only."""
    latent = latent.detach()
    timesteps = sample_timesteps(latent.shape[0], 0, num_train_timesteps - 1, latent.device, generator)
    noise = _random_like(latent, generator)
    x_t = add_noise(latent, noise, timesteps, alphas_cumprod)
    eps = fake_unet(x_t, timesteps, encoder_hidden_states=_expand(cond, latent.shape[0])).sample
    return F.mse_loss(eps.float(), noise.float())
