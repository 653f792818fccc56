"""The frozen SD VAE (diffusers AutoencoderKL) as OneDC uses it: scaled latents, windowed decoder attention.

The decoder's mid-block self-attention runs at latent resolution over all positions; at full attention its
memory grows with the square of the pixel count (a 2048x2048 image: 65536 positions, 16 GiB of scores per
head in fp32). The release computes it in 16x16-latent tiles, and so do we.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file
from torch import nn

from ..config import VAEConfig


class WindowedAttnProcessor:
    """diffusers attention processor: spatial self-attention within non-overlapping window x window tiles.

    GroupNorm statistics stay global, as in full attention; only the softmax is restricted to a tile
    (edge tiles may be smaller). A map no larger than one tile gets exactly diffusers' full attention.
    """

    def __init__(self, window: int):
        self.window = window

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None) -> torch.Tensor:
        normed = attn.group_norm(hidden_states)
        out = torch.empty_like(hidden_states)
        height, width = hidden_states.shape[-2:]
        for top in range(0, height, self.window):
            for left in range(0, width, self.window):
                tile = normed[:, :, top:top + self.window, left:left + self.window]
                tile_h, tile_w = tile.shape[-2:]
                x = tile.flatten(2).transpose(1, 2)  # B, positions, C
                q, k, v = (proj(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # B, heads, positions, d
                           for proj in (attn.to_q, attn.to_k, attn.to_v))
                y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
                y = attn.to_out[1](attn.to_out[0](y))
                out[:, :, top:top + tile_h, left:left + tile_w] = y.transpose(1, 2).unflatten(-1, (tile_h, tile_w))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class VAE(nn.Module):
    """Images in [-1, 1] <-> SD latents scaled by `scaling_factor` (the space the UNet works in).

    Frozen (requires_grad off) because OneDC never trains it; decode stays differentiable in its input.
    """

    def __init__(self, cfg: VAEConfig, autoencoder: AutoencoderKL | None = None):
        super().__init__()
        self.autoencoder = AutoencoderKL(**cfg.autoencoder) if autoencoder is None else autoencoder
        self.scaling_factor = cfg.scaling_factor
        self.sample_posterior = cfg.sample_posterior
        for attn in self.autoencoder.decoder.mid_block.attentions:
            if attn is not None:
                attn.set_processor(WindowedAttnProcessor(cfg.attention_window))
        self.requires_grad_(False)

    @classmethod
    def from_pretrained_local(cls, path: str | Path, cfg: VAEConfig | None = None) -> "VAE":
        """Load local weights only (never the hub).

        `path` is a diffusers folder (an AutoencoderKL folder, or a pipeline folder with `vae/`; its
        config.json defines the architecture) or a single .safetensors / .bin / .pt file holding a
        diffusers- or original-SD-format (LDM, e.g. a whole SD checkpoint) state_dict, loaded strictly into
        the architecture of `cfg.autoencoder`. `cfg` (default: sd15) also gives scaling and window.
        """
        cfg = cfg or VAEConfig()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no VAE weights at {path}")
        if path.is_dir():
            folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
            return cls(cfg, AutoencoderKL.from_pretrained(folder, local_files_only=True))
        vae = cls(cfg)
        if path.suffix == ".safetensors":
            state_dict = load_file(path)
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if not any(key.startswith("decoder.up_blocks.") for key in state_dict):
            state_dict = convert_ldm_vae_checkpoint(state_dict, vae.autoencoder.config)
        vae.autoencoder.load_state_dict(state_dict, strict=True)
        return vae

    def encode(self, x: torch.Tensor, sample_posterior: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior mean (deterministic) unless sampling is asked for here or in the config (the release
        samples); `generator` makes a sample reproducible."""
        posterior = self.autoencoder.encode(x).latent_dist
        sample = self.sample_posterior if sample_posterior is None else sample_posterior
        latent = posterior.sample(generator) if sample else posterior.mode()
        return latent * self.scaling_factor

    def decode(self, latent: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Latent (scaled) -> image; clamped to [-1, 1] unless a loss wants the raw output."""
        image = self.autoencoder.decode(latent / self.scaling_factor).sample
        return image.clamp(-1, 1) if clamp else image
