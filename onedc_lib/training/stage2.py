"""Stage II (spec section 6): the codec frozen, the generator (LoRA, conv_in, vae_reduction) refined by DMD + GAN.

    generator (every `generator_every` = 10th step):
        1.0 * DMD + 1e-3 * GAN + 0.625 * (L1 + LPIPS)                (onedc_lib.losses.stage2_generator_loss)
    critic (every step): fake score UNet + GAN classifier
        fake-score epsilon MSE on generator latents + 1e-2 * classifier loss       (onedc_lib.losses.critic_loss)

The real score is the frozen teacher (SD-1.5 at sd15 scale, stage 0's UNet at nano) with classifier-free guidance
1.75; the fake score starts as a copy of it. Both are conditioned on the caption's CLIP embedding when a text
encoder is given (`--text-encoder`, a local CLIP folder); without one (nano) on one token of zeros, the context
the nano teacher was trained with. The frozen codec runs in eval mode (hard rounding, as at decode time).

Per step the generator objective runs first (when due) and leaves its latents in the batch (detached), so the
critic step that follows trains on them instead of running the generator again, as DMD2 does.

What a healthy run shows in OUT/log.csv (`TRENDS`; `trend_report` prints it at the end of a run):
    critic/denoising    falls: the fake score learns to denoise the generator's latents
    critic/classifier   falls below 2 ln 2 = 1.386 (chance); critic/d_acc rises above 0.5
    generator/l1, generator/lpips   do not rise by more than 10% (the pixel terms anchor the generator)
    generator/dmd is the surrogate 0.5 * mean(grad^2): 0 at the start (fake score = real score), it grows as the
    two scores part and need not fall; generator/gan rises while the critic wins. Neither is a loss to minimise
    in the usual sense: their gradients, not their values, are what the generator follows.

    python -m onedc_lib.training.stage2 --preset nano --out runs/s2 --init runs/s1/model --stage0 runs/s0
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..losses import build_lpips
from ..models.onedc import OneDC, pad_to_multiple
from ..weights import load_unet_state_dict
from . import loop
from .stage0 import null_tokens
from .stage1 import Frozen, Pretrained, add_pretrained_arguments, build_onedc


# ================================================================================================ conditioning
class TextConditioner:
    """Captions -> (cond, uncond) tokens for the score networks: a local CLIP text encoder (transformers folder
    with text_encoder/ and tokenizer/, or an SD pipeline folder), or, without one, one token of zeros for both."""

    def __init__(self, config: ModelConfig, path: str | None = None):
        self.config = config
        self.encoder = self.tokenizer = None
        self._warned = False
        if path is not None:
            from ..models.text import load_text_encoder

            self.tokenizer, self.encoder = load_text_encoder(path)

    def to(self, device):
        if self.encoder is not None:
            self.encoder.to(device)
        return self

    @torch.no_grad()
    def __call__(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is None:
            if any(captions) and not self._warned:
                warnings.warn("the data has captions but no text encoder was given (--text-encoder): the score "
                              "networks get one token of zeros instead", stacklevel=2)
                self._warned = True
            tokens = null_tokens(self.config, len(captions), device)
            return tokens, tokens[:1]
        ids = self.tokenizer(list(captions) + [""], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
        states = self.encoder(ids)[0]
        return states[:-1], states[-1:]


def build_teacher(config: ModelConfig, pretrained: Pretrained):
    """The frozen real score (call after seeding: without weights it is random, with a warning)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**config.generator.unet)
    if pretrained.teacher_unet:
        unet.load_state_dict(load_unet_state_dict(pretrained.teacher_unet), strict=True)
    else:
        warnings.warn("no weights for the teacher UNet (real score): initialised RANDOMLY (nano: --stage0 DIR; "
                      "sd15: --teacher PATH, the SD-1.5 UNet)", stacklevel=2)
    return unet.eval().requires_grad_(False)


# ================================================================================================ the two objectives
def _conditioning(batch: dict, text: TextConditioner) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) of the batch's captions, computed once per step (the batch dict is shared by both steps)."""
    if "cond" not in batch:
        batch["cond"], batch["uncond"] = text(batch["caption"], batch["image"].device)
    return batch["cond"], batch["uncond"]


def _fake_latents(model: OneDC, x: torch.Tensor):
    """The frozen half: (VAE latent of x = the real latent, codec output), without gradient."""
    xp = pad_to_multiple(x)
    with torch.no_grad():
        real = model.encode_latents(xp)
        out = model.codec(xp * 2 - 1, real)
    return real, out


@contextlib.contextmanager
def _without_checkpointing(module: nn.Module):
    """Gradient checkpointing off inside: the GAN term runs the critic with its parameters frozen for the call,
    and a checkpointed block recomputed in backward (after they require grad again) would not match its forward."""
    switched = [m for m in module.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in switched:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in switched:
            m.gradient_checkpointing = True


class GeneratorStep(nn.Module):
    """Registered (trained, checkpointed): OneDC, of which only the generator's LoRA / conv_in / vae_reduction
    require grad. The critic, teacher, LPIPS and text encoder are only used."""

    def __init__(self, model: OneDC, frozen: Frozen):
        super().__init__()
        self.onedc = model
        self.frozen = frozen

    def train(self, mode: bool = True):
        super().train(mode)
        self.onedc.codec.eval()  # frozen codec: hard rounding, as at decode time
        return self

    def forward(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        from ..losses import dmd_loss, gan_generator_loss, l1_loss, stage2_generator_loss

        cfg = self.onedc.config.loss
        f = self.frozen
        x = batch["image"]
        h, w = x.shape[-2:]
        real, out = _fake_latents(self.onedc, x)
        x0 = self.onedc.generator(out.ctrl, self.onedc.guidance(out.tokens, batch["caption"])).x0.float()
        with torch.autocast(x.device.type, enabled=False):
            image = self.onedc.vae.decode(x0, clamp=False)
        x_hat = (image[..., :h, :w].float() + 1) / 2
        cond, uncond = _conditioning(batch, f.text)
        dmd = dmd_loss(x0, f.teacher, f.critic.fake_unet, cond, uncond, cfg_scale=cfg.cfg_scale, t_min=cfg.dmd_t_min,
                       t_max=cfg.dmd_t_max)
        with _without_checkpointing(f.critic.fake_unet):
            gan = gan_generator_loss(f.critic.fake_unet, f.critic.classifier, x0, cond)
        l1 = l1_loss(x_hat, x)
        lpips = f.lpips(x_hat, x).float() if f.lpips is not None else l1.new_zeros(())
        loss = stage2_generator_loss(dmd=dmd.loss, gan=gan, l1=l1, lpips=lpips, cfg=cfg)
        batch["fake_latent"], batch["real_latent"] = x0.detach(), real  # for the critic step that follows
        return {"loss": loss, "dmd": dmd.loss.detach(), "gan": gan.detach(), "l1": l1.detach(),
                "lpips": lpips.detach(), "psnr": loop.psnr(x_hat, x), "dmd_grad": dmd.grad.abs().mean()}


class CriticStep(nn.Module):
    """Registered (trained, checkpointed): the fake score UNet and the GAN classifier."""

    def __init__(self, fake_unet: nn.Module, classifier: nn.Module, frozen: Frozen):
        super().__init__()
        self.fake_unet = fake_unet
        self.classifier = classifier
        self.frozen = frozen

    def forward(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        from ..losses import critic_loss

        model = self.frozen.model
        if "fake_latent" in batch:
            fake, real = batch.pop("fake_latent"), batch.pop("real_latent")
        else:
            real, out = _fake_latents(model, batch["image"])
            with torch.no_grad():
                fake = model.generator(out.ctrl, model.guidance(out.tokens, batch["caption"])).x0.float()
        cond, _ = _conditioning(batch, self.frozen.text)
        crit = critic_loss(self.fake_unet, self.classifier, fake, real.float(), cond,
                           gan_critic_weight=model.config.loss.gan_critic_weight)
        accuracy = torch.cat([(crit.logits_fake < 0).flatten(), (crit.logits_real > 0).flatten()]).float().mean()
        return {"loss": crit.loss, "denoising": crit.denoising.detach(), "classifier": crit.classifier.detach(),
                "d_fake": crit.logits_fake.mean(), "d_real": crit.logits_real.mean(), "d_acc": accuracy}


FROZEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def frozen_dtype(config: ModelConfig) -> torch.dtype:
    """train.frozen_dtype as a torch dtype; a half dtype needs autocast (its frozen weights meet float32 inputs)."""
    name = config.train.frozen_dtype
    if name not in FROZEN_DTYPES:
        raise ValueError(f"train.frozen_dtype must be one of {', '.join(FROZEN_DTYPES)}, not {name!r}")
    if name != "float32" and config.train.mixed_precision in ("no", False):
        raise ValueError(f"train.frozen_dtype={name} needs autocast: set train.mixed_precision=bf16")
    return FROZEN_DTYPES[name]


def hold_frozen_in(dtype: torch.dtype, *modules: nn.Module) -> int:
    """Cast the parameters of `modules` that require no gradient to `dtype` (their trainable neighbours, the
    LoRA / conv_in / vae_reduction of the generator, stay float32); returns how many were cast."""
    count = 0
    for module in modules:
        for param in module.parameters():
            if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
                count += param.numel()
    return count


class Stage2Task(loop.Task):
    name = "stage2"

    def __init__(self, config: ModelConfig, pretrained: Pretrained | None = None, lpips: str | None = "auto",
                 text_encoder: str | None = None):
        from ..losses import GANClassifier

        self.config = config
        self.frozen_dtype = frozen_dtype(config)  # checked before anything is built
        pretrained = pretrained or Pretrained()
        if pretrained.init_model is None:
            warnings.warn("stage II without a stage-I model (--init MODEL_DIR): the codec is RANDOM and frozen",
                          stacklevel=2)
        model = build_onedc(config, pretrained)
        model.codec.requires_grad_(False)  # stage II trains the generator's LoRA / conv_in / vae_reduction only
        model.vae.requires_grad_(False)
        self.init_model = pretrained.init_model
        if self.frozen_dtype != torch.float32:  # cast before the UNets are built: a lower peak of memory
            if pretrained.init_model is None:
                warnings.warn(f"train.frozen_dtype={config.train.frozen_dtype} without --init: the model folder "
                              "will hold the frozen codec and base UNet rounded to that dtype", stacklevel=2)
            hold_frozen_in(self.frozen_dtype, model.codec, model.generator)
        teacher = build_teacher(config, pretrained)
        self.random_teacher = pretrained.teacher_unet is None
        self.random_codec = pretrained.init_model is None
        fake_unet = copy.deepcopy(teacher).train().requires_grad_(True)  # DMD2: the fake score starts as the teacher
        hold_frozen_in(self.frozen_dtype, teacher)
        classifier = GANClassifier.for_unet(fake_unet)
        if config.train.gradient_checkpointing:
            loop.enable_gradient_checkpointing(model)
            loop.enable_gradient_checkpointing(fake_unet)
        self.text = TextConditioner(config, text_encoder)
        self.frozen = Frozen(teacher=teacher, lpips=build_lpips(lpips, config.loss.lpips_net), text=self.text,
                             critic=None)
        self.generator_step = GeneratorStep(model, self.frozen)
        self.critic_step = CriticStep(fake_unet, classifier, Frozen(model=model, text=self.text))
        self.frozen.critic = self.critic_step
        self.generator_step.train()

    @property
    def model(self) -> OneDC:
        return self.generator_step.onedc

    def objectives(self) -> list[loop.Objective]:
        t = self.config.train
        generator_params = [p for p in self.model.generator.parameters() if p.requires_grad]
        return [loop.Objective("generator", self.generator_step, lr=t.stage2_lr, every=t.generator_every,
                               params=generator_params),
                loop.Objective("critic", self.critic_step, lr=t.stage2_critic_lr)]

    def to(self, device):
        self.frozen.teacher.to(device)
        if self.frozen.lpips is not None:
            self.frozen.lpips.to(device)
        self.text.to(device)
        return self

    @torch.no_grad()
    def _restore_frozen_precision(self) -> None:
        """The frozen weights held in `frozen_dtype` back to float32: exact from --init, else upcast."""
        from safetensors.torch import load_file

        state = load_file(str(Path(self.init_model) / "model.safetensors")) if self.init_model else {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad and param.dtype != torch.float32:
                param.data = (state[name] if name in state else param.data).to(param.device, torch.float32)

    @torch.no_grad()
    def samples(self, batch: dict) -> dict[str, torch.Tensor]:
        model = self.model
        was_training = model.generator.training
        model.eval()
        try:
            out = model(batch["image"])
        finally:
            self.generator_step.train(was_training)
        return {"input": batch["image"], "reconstruction": out.x_hat}

    def save_model(self, folder: Path, provenance: dict) -> Path:
        from ..weights import save_model

        if self.frozen_dtype != torch.float32:
            self._restore_frozen_precision()
        self.model.weights_changed()
        random_init = list(self.model.random_parts) + (["teacher UNet"] if self.random_teacher else [])
        if self.random_codec:
            random_init.append("codec (frozen)")
        return save_model(self.model, folder, {**provenance, "stage": 2, "random_init": random_init})


# ================================================================================================ trends
# column of OUT/log.csv -> how it moves in a healthy stage-II run (see the module docstring)
TRENDS = {"critic/denoising": "falls", "critic/classifier": "falls", "critic/d_acc": "rises",
          "generator/l1": "no rise", "generator/lpips": "no rise", "generator/dmd": "free", "generator/gan": "free"}


def trend_report(log_csv: str | Path, fraction: float = 0.2) -> dict[str, dict]:
    """The TRENDS columns of a log: mean of the first and of the last `fraction` of their rows, the expected
    direction and whether it was met ("falls"/"rises": moved that way; "no rise": at most 10% up; "free": no
    test)."""
    import csv

    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    report = {}
    for column, expected in TRENDS.items():
        values = [float(r[column]) for r in rows if r.get(column)]
        if not values:
            continue
        n = max(1, round(len(values) * fraction))
        first, last = sum(values[:n]) / n, sum(values[-n:]) / n
        met = {"falls": last < first, "rises": last > first, "no rise": last <= first + 0.1 * abs(first),
               "free": None}[expected]
        report[column] = {"first": first, "last": last, "expected": expected, "met": met, "rows_each": n}
    return report


def _print_trends(report: dict[str, dict]) -> None:
    for column, r in report.items():
        verdict = "" if r["met"] is None else ("  ok" if r["met"] else "  NOT MET")
        print(f"{column:20s} {r['first']:.4g} -> {r['last']:.4g}  (expected: {r['expected']}){verdict}", flush=True)


# ================================================================================================ command line
def main(argv: list[str] | None = None) -> Path:
    from .stage1 import setup

    parser = argparse.ArgumentParser(prog="python -m onedc_lib.training.stage2", description=__doc__.split("\n")[0])
    loop.common_arguments(parser)
    add_pretrained_arguments(parser)
    parser.add_argument("--teacher", dest="teacher_unet", default=None,
                        help="real score UNet (SD-1.5 unet/ or a state_dict file); the fake score starts from it")
    parser.add_argument("--text-encoder", default=None, help="local CLIP text encoder folder (sd15 captions)")
    args = parser.parse_args(argv)
    config, accelerator, steps, batches = setup(args, "stage2_steps")
    loop.seed_everything(args.seed)
    task = Stage2Task(config, Pretrained.from_args(args), lpips=args.lpips, text_encoder=args.text_encoder)
    loop.seed_everything(loop.mix_seed(args.seed, 100 + accelerator.process_index))
    last = loop.train(accelerator, task, batches, args.out, steps, resume=args.resume)
    if accelerator.is_main_process:
        _print_trends(trend_report(Path(args.out) / "log.csv"))
    return last


if __name__ == "__main__":
    main(sys.argv[1:])
