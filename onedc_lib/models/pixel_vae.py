"""The VAE slot filled by a pretrained x4 super-resolution network (nano scale; ARCHITECTURE: "the VAE slot holds
any frozen pretrained decoder chosen by configuration").

No registry package ships an SD VAE; some ship x4 decoders (models/sr_decoder.py: Real-ESRGAN, SPAN). Its
latent is the image itself, area-downsampled x4 and pixel-unshuffled x2: 12 channels at 1/8 of the image, the
geometry of SD's latents, so the codec and the generator are the same classes at any scale. Decoding
pixel-shuffles the latent back to the small image and lets the network generate the detail. Training compares
that small image with the downsampled input (`loss_pair`), so the decoder never runs in a training step.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .. import progress
from ..config import VAEConfig
from . import sr_decoder

UNSHUFFLE = 2  # small image -> latent
SCALE = 4      # the decoder's upscaling: SCALE * UNSHUFFLE = 8, SD's latent stride
DECODE_TILE = 128  # latent pixels (1024 image pixels): larger latents decode in tiles
TILE_MARGIN = 8  # latent pixels of context around a tile's own part (16 small-image pixels)


class PixelSRVAE(nn.Module):
    """Images in [-1, 1] <-> latents = unshuffled small image x `scaling_factor`. Frozen; decode stays
    differentiable in its input."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.arch = dict(cfg.sr_decoder)
        self.sr = sr_decoder.build_network(cfg.sr_decoder)
        self.scaling_factor = cfg.scaling_factor
        self.attention_window = 1  # no attention: any tile size lines up
        self.decode_tile = DECODE_TILE
        self.requires_grad_(False)

    def load_pretrained(self, weights: str | os.PathLike | None = None) -> "PixelSRVAE":
        """The decoder's weights: `weights` (your file) or the provisioned pretrained network."""
        name = sr_decoder.pretrained_name(self.arch) if weights is None else None
        self.sr.load_state_dict(sr_decoder.load_state_dict(weights, name), strict=True)
        return self

    def provisioned_tensors(self) -> tuple[str, dict[str, torch.Tensor]] | None:
        """(name, the slot's state_dict entries) of the provisioned decoder when this slot holds exactly its
        weights, else None: a bundle then refers to it instead of storing 33 MB (weights.load_model_folder reads
        it back with `provisioned_state_dict`)."""
        try:
            name = sr_decoder.pretrained_name(self.arch)
            state = sr_decoder.load_state_dict(None, name)
        except sr_decoder.SRDecoderError:
            return None
        own = self.sr.state_dict()
        if state.keys() != own.keys() or any(not torch.equal(state[k].float(), own[k].float()) for k in own):
            return None
        return name, {f"sr.{k}": v for k, v in state.items()}

    def encode(self, x: torch.Tensor, sample_posterior: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Deterministic (no posterior): the arguments are those of the AutoencoderKL slot."""
        return F.pixel_unshuffle(F.avg_pool2d(x, SCALE), UNSHUFFLE) * self.scaling_factor

    @property
    def encoder_part(self) -> nn.Module:
        return nn.ModuleList()  # pooling and a reshape: no parameters

    @property
    def decoder_part(self) -> nn.Module:
        return self.sr

    def small_image(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent -> the small image in [-1, 1] (unclamped) that it holds."""
        return F.pixel_shuffle(latent / self.scaling_factor, UNSHUFFLE)

    def loss_pair(self, latent: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, target) in [-1, 1] for the training losses: the small images, so that the frozen
        decoder, trained to make detail from a small image, never runs in a step; both upsampled bilinearly to
        x's size, where LPIPS sees them at the scale it was made for (AlexNet needs 32 pixels at least)."""
        size = x.shape[-2:]
        upsample = lambda small: F.interpolate(small, size=size, mode="bilinear", align_corners=False)
        return upsample(self.small_image(latent)[..., :size[0] // SCALE, :size[1] // SCALE]), \
            upsample(F.avg_pool2d(x, SCALE))

    def decode(self, latent: torch.Tensor, clamp: bool = True, tile: int | None = None) -> torch.Tensor:
        """Latent -> image in [-1, 1]. Without gradients, a latent larger than `tile` on either side is decoded in
        tiles with TILE_MARGIN latent pixels of context each (the network is convolutional and local)."""
        tile = self.decode_tile if tile is None else tile
        small = (self.small_image(latent).clamp(-1, 1) + 1) / 2
        if torch.is_grad_enabled() or max(latent.shape[-2:]) <= tile:
            image = self.sr(small)
        else:
            image = self._tiled(small, tile * UNSHUFFLE, TILE_MARGIN * UNSHUFFLE)
        image = image * 2 - 1
        return image.clamp(-1, 1) if clamp else image

    def _tiled(self, small: torch.Tensor, tile: int, margin: int) -> torch.Tensor:
        height, width = small.shape[-2:]
        out = small.new_empty(small.shape[0], 3, height * SCALE, width * SCALE)
        progress.plan(-(-height // tile) * -(-width // tile))
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                t, l = max(top - margin, 0), max(left - margin, 0)
                piece = self.sr(small[..., t:min(bottom + margin, height), l:min(right + margin, width)])
                out[..., top * SCALE:bottom * SCALE, left * SCALE:right * SCALE] = piece[
                    ..., (top - t) * SCALE:(bottom - t) * SCALE, (left - l) * SCALE:(right - l) * SCALE]
                progress.done()
        return out


def provisioned_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The slot's state_dict entries of the provisioned decoder `name` (verified against its pinned sha256)."""
    return {f"sr.{k}": v for k, v in sr_decoder.load_state_dict(None, name).items()}
