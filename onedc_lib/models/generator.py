"""The one-step generator: an SD-1.5 UNet turned into a decoder of the g_s feature (spec section 1, step 5).

Surgery on a `UNet2DConditionModel`, in the release's order so that `unet.state_dict()` equals the released
`model.safetensors` (keys, order, shapes; ../../shared/compat/manifest_model_generator.json):
1. LoRA (peft) on the configured targets: keys become `<path>.base_layer.*` and `<path>.lora_{A,B}.default.*`;
2. `conv_in` replaced by a plain 3x3 conv from the g_s feature (ctrl_ch) to the first block width;
3. `vae_reduction` attached to the UNet itself (its keys are top level in the release file).
At decode the UNet runs once at t = 999 with the semantic tokens as cross-attention context; its output is read
as epsilon and turned into x0 against the pseudo x_t that `vae_reduction` predicts. No noise is drawn.
"""
from contextlib import contextmanager
from typing import NamedTuple

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from torch import nn

from ..config import GeneratorConfig
from .blocks import ReductionBlock
from .schedule import eps_to_x0, sd15_alphas_cumprod


class GeneratorOutput(NamedTuple):
    x0: torch.Tensor  # predicted clean latent (unscaled SD latent space, i.e. VAE latent * 0.18215)
    eps: torch.Tensor  # UNet output read as epsilon
    x_t: torch.Tensor  # pseudo noisy latent from vae_reduction


class OneStepGenerator(nn.Module):
    """g_s feature [B, ctrl_ch, h, w] + tokens [B, N, D] -> latent x0 [B, 4, h, w], in one UNet pass.

    `unet` is the base UNet before surgery (e.g. with SD-1.5 / DMD2 weights); a fresh one is built from
    `cfg.unet` when omitted. Build under `torch.device("meta")` to inspect the full-size layout for free.
    """

    def __init__(self, cfg: GeneratorConfig, ctrl_ch: int, unet: UNet2DConditionModel | None = None):
        super().__init__()
        unet = UNet2DConditionModel(**cfg.unet) if unet is None else unet
        # add_adapter (rather than peft's bare inject) enables unet.disable_adapters()/enable_adapters();
        # peft also freezes every non-LoRA weight, so only LoRA + the modules added below train.
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                    target_modules=list(cfg.lora_targets)))
        width = unet.config.block_out_channels[0]
        unet.conv_in = nn.Conv2d(ctrl_ch, width, 3, padding=1)
        unet.vae_reduction = ReductionBlock(ctrl_ch, unet.config.out_channels)
        self.unet = unet
        self.timestep = cfg.timestep
        self.schedule = dict(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                             beta_end=cfg.beta_end)
        with torch.device("cpu"):  # a plain number, also when the module is built on the meta device
            table = sd15_alphas_cumprod(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        self.alpha_bar = float(table[cfg.timestep])

    @classmethod
    def from_base_unet_state_dict(cls, cfg: GeneratorConfig, ctrl_ch: int,
                                  state_dict: dict[str, torch.Tensor]) -> "OneStepGenerator":
        """Initialise from a plain UNet checkpoint (SD-1.5 `unet/`, DMD2 one-step .bin), loaded strictly
        before the surgery; LoRA then starts as a no-op (B = 0) and conv_in / vae_reduction are new."""
        unet = UNet2DConditionModel(**cfg.unet)
        unet.load_state_dict(state_dict, strict=True)
        return cls(cfg, ctrl_ch, unet)

    def forward(self, ctrl: torch.Tensor, tokens: torch.Tensor) -> GeneratorOutput:
        """`tokens` replace the text embedding in every cross-attention; any count N works."""
        x_t = self.unet.vae_reduction(ctrl)
        eps = self.unet(ctrl, self.timestep, encoder_hidden_states=tokens).sample
        return GeneratorOutput(eps_to_x0(x_t, eps, self.alpha_bar), eps, x_t)

    def sample(self, ctrl: torch.Tensor, tokens: torch.Tensor, steps: int) -> torch.Tensor:
        """x0 from `steps` UNet passes of a DDIM sampler (eta 0, trailing spacing: t = 999 first) started from
        vae_reduction's pseudo x_t, SD-1.5's scaled-linear schedule. One step is exactly `forward`'s x0; more
        steps cost `steps` UNet passes (the benchmark's multi-step comparison: what decoding in one step saves)."""
        from diffusers.schedulers.scheduling_ddim import DDIMScheduler  # not needed by one-step decoding

        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        scheduler = DDIMScheduler(**self.schedule, beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=True, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        x = self.unet.vae_reduction(ctrl)
        for t in scheduler.timesteps:
            eps = self.unet(ctrl, t, encoder_hidden_states=tokens).sample
            x = scheduler.step(eps, t, x).prev_sample
        return x

    @contextmanager
    def lora_disabled(self):
        """Run the UNet without its LoRA deltas (conv_in and vae_reduction stay), e.g. for ablations."""
        self.unet.disable_adapters()
        try:
            yield self
        finally:
            self.unet.enable_adapters()
