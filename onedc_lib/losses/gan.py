"""Diffusion-GAN of stage II (spec section 6): a classifier on the fake score UNet's mid-block features.

Latents (the generator's x0, or VAE latents of real images, both x 0.18215) are noised at t ~ U[0, 1000) and run
through the fake UNet with the cond tokens; a forward hook on `unet.mid_block` captures its output, and
`GANClassifier` turns it into logits. Losses (non-saturating, logistic):

    generator: softplus(-D(fake))                       (gan_generator_loss; gradients reach the latent only)
    critic:    softplus(D(fake)) + softplus(-D(real))   (classifier_loss)
    critic total = fake-score eps MSE + gan_critic_weight (1e-2) * classifier loss          (critic_loss)

By default the fake UNet's forward stops at the mid-block (the hook raises a private exception once it has the
features), so classification costs the down path only. That skips the up path's parameters: pass unwrapped
modules, or set `stop_at_mid=False` if a DDP wrapper must see a whole forward.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from .dmd import NUM_TRAIN_TIMESTEPS, _expand, _random_like, add_noise, fake_score_loss, sample_timesteps


class GANClassifier(nn.Module):
    """Mid-block features [B, C, h, w] -> logits [B, 1, h', w'].

    4x4 stride-2 conv (padding 1), GroupNorm, SiLU, 4x4 stride-4 conv, GroupNorm, SiLU, 1x1 conv -> 1 logit per
    location. For sd15 at 512x512 (mid-block 8x8) that is exactly one logit. Smaller maps (nano, 64-px crops)
    are zero-padded on the right/bottom up to the kernel's reach (2 before the first conv, 4 before the second),
    so any map size gives at least one logit; larger maps give a patch of logits, each a classification (the
    losses average over them).
    """

    def __init__(self, in_ch: int, groups: int = 32):
        super().__init__()
        groups = math.gcd(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, in_ch, 4, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv2 = nn.Conv2d(in_ch, in_ch, 4, stride=4)
        self.norm2 = nn.GroupNorm(groups, in_ch)
        self.out = nn.Conv2d(in_ch, 1, 1)

    @classmethod
    def for_unet(cls, unet) -> "GANClassifier":
        """A classifier sized for `unet`'s mid-block (its last block width)."""
        return cls(unet.config.block_out_channels[-1])

    @staticmethod
    def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        return F.pad(x, (0, max(0, size - w), 0, max(0, size - h))) if h < size or w < size else x

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm1(self.conv1(self._pad_to(features, 2))))
        x = F.silu(self.norm2(self.conv2(self._pad_to(x, 4))))
        return self.out(x)


class _MidBlockReached(Exception):
    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features


def _unwrap(module):
    return getattr(module, "module", module)  # DDP / accelerate wrappers keep the model in .module


def mid_block_features(unet, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                       stop_at_mid: bool = True) -> torch.Tensor:
    """The output of `unet.mid_block` for this input, captured by a temporary forward hook."""
    captured = []

    def hook(module, inputs, output):
        if stop_at_mid:
            raise _MidBlockReached(output)
        captured.append(output)

    handle = _unwrap(unet).mid_block.register_forward_hook(hook)
    try:
        unet(x_t, timesteps, encoder_hidden_states=_expand(cond, x_t.shape[0]))
    except _MidBlockReached as reached:
        return reached.features
    finally:
        handle.remove()
    return captured[0]


def gan_logits(fake_unet, classifier: GANClassifier, latent: torch.Tensor, cond: torch.Tensor, *,
               alphas_cumprod: torch.Tensor | None = None, generator: torch.Generator | None = None,
               stop_at_mid: bool = True, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """D(latent): noise at t ~ U[0, 1000), fake UNet to its mid-block, classifier -> logits [B, 1, h', w']."""
    timesteps = sample_timesteps(latent.shape[0], 0, num_train_timesteps - 1, latent.device, generator)
    x_t = add_noise(latent, _random_like(latent, generator), timesteps, alphas_cumprod)
    return classifier(mid_block_features(fake_unet, x_t, timesteps, cond, stop_at_mid)).float()


@contextlib.contextmanager
def _frozen(*modules: nn.Module):
    """Parameters of `modules` temporarily require no gradient (their previous flags come back after)."""
    params = [p for m in modules for p in _unwrap(m).parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def gan_generator_loss(fake_unet, classifier: GANClassifier, latent: torch.Tensor, cond: torch.Tensor, *,
                       alphas_cumprod: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       stop_at_mid: bool = True) -> torch.Tensor:
    """softplus(-D(latent)), averaged. The critic (fake UNet and classifier) is frozen during this call, so
    gradients reach the generator's latent only and nothing accumulates in the critic's .grad."""
    with _frozen(fake_unet, classifier):
        logits = gan_logits(fake_unet, classifier, latent, cond, alphas_cumprod=alphas_cumprod,
                            generator=generator, stop_at_mid=stop_at_mid)
    return F.softplus(-logits).mean()


def classifier_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """softplus(D(fake)) + softplus(-D(real)), each averaged."""
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


class CriticOutput(NamedTuple):
    loss: torch.Tensor  # denoising + gan_critic_weight * classifier
    denoising: torch.Tensor  # the fake score's eps MSE on detached generator latents
    classifier: torch.Tensor  # softplus(D(fake)) + softplus(-D(real))
    logits_fake: torch.Tensor  # detached, for logging
    logits_real: torch.Tensor  # detached


def critic_loss(fake_unet, classifier: GANClassifier, fake_latent: torch.Tensor, real_latent: torch.Tensor,
                cond: torch.Tensor, real_cond: torch.Tensor | None = None, *,
                gan_critic_weight: float = LossConfig.gan_critic_weight, alphas_cumprod: torch.Tensor | None = None,
                generator: torch.Generator | None = None, stop_at_mid: bool = True) -> CriticOutput:
    """The fake score / classifier step: gradients reach the fake UNet and the classifier, never the generator
    (fake latents are detached) nor the VAE (real latents are detached).

    fake_latent: the generator's x0 latents; real_latent: VAE latents (x 0.18215) of real images; cond: tokens
    of the fake latents, real_cond those of the real images (default: cond, the same images in stage II).
    Each term draws its own t ~ U[0, 1000) and noise.
    """
    fake_latent, real_latent = fake_latent.detach(), real_latent.detach()
    denoising = fake_score_loss(fake_unet, fake_latent, cond, alphas_cumprod=alphas_cumprod, generator=generator)
    kwargs = dict(alphas_cumprod=alphas_cumprod, generator=generator, stop_at_mid=stop_at_mid)
    logits_fake = gan_logits(fake_unet, classifier, fake_latent, cond, **kwargs)
    logits_real = gan_logits(fake_unet, classifier, real_latent, cond if real_cond is None else real_cond, **kwargs)
    cls_loss = classifier_loss(logits_fake, logits_real)
    return CriticOutput(denoising + gan_critic_weight * cls_loss, denoising, cls_loss,
                        logits_fake.detach(), logits_real.detach())
