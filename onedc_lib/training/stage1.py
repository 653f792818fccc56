"""Stage I (spec section 6): codec, generator LoRA + conv_in + vae_reduction and the distillation head, jointly.

    loss = L1 + LPIPS + lambda(step) * bpp_y + 0.001 * distillation           (onedc_lib.losses.stage1_loss)

The VAE and the generator's base UNet are frozen; the MaskGIT tokenizer only supplies distillation targets.
FSQ and the VAE decode run in fp32 under bf16 autocast. The reconstruction for the losses is the VAE decode
without clamping (a clamp would stop the gradient of every saturated pixel).

Initial weights (`Pretrained`): the VAE, the generator's base UNet (DMD2 one-step SD-1.5 at sd15 scale) and the
tokenizer come from local files; at nano scale stage 0 trains them (`--stage0 DIR`). A part without weights is
initialised randomly, with a warning. `--init MODEL_DIR` starts from a whole model folder instead.

    python -m onedc_lib.training.stage1 --preset nano --out runs/s1 --steps 300 --ckpt-every 100 [--resume auto]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..losses import build_lpips
from ..models.distill_head import DistillationHead
from ..models.generator import OneStepGenerator
from ..models.onedc import OneDC, pad_to_multiple
from ..models.tokenizer import MaskGITTokenizer
from ..weights import load_unet_state_dict
from . import loop


# ================================================================================================ initial weights
@dataclass(frozen=True)
class Pretrained:
    """Local weight files of the parts OneDC does not train from scratch; None = random init (with a warning).

    vae: diffusers AutoencoderKL folder or state_dict file; generator_unet: base UNet of the generator (DMD2 .bin,
    SD-1.5 unet/ safetensors); tokenizer: MaskGIT VQGAN (.bin) or safetensors; teacher_unet: the frozen real score
    of stage II (SD-1.5 UNet), also the fake score's initialisation; init_model: a whole OneDC model folder
    (weights.save_model) that replaces the codec, generator and VAE.
    """

    vae: str | None = None
    generator_unet: str | None = None
    tokenizer: str | None = None
    teacher_unet: str | None = None
    init_model: str | None = None

    @classmethod
    def from_args(cls, args) -> Pretrained:
        from .stage0 import stage0_files

        found = stage0_files(args.stage0) if getattr(args, "stage0", None) else {}
        pick = lambda name: getattr(args, name, None) or found.get(name)
        return cls(vae=pick("vae"), generator_unet=pick("generator_unet"), tokenizer=pick("tokenizer"),
                   teacher_unet=pick("teacher_unet"), init_model=getattr(args, "init", None))


def _random_warning(part: str, how: str) -> None:
    warnings.warn(f"no weights for the {part}: initialised RANDOMLY ({how})", stacklevel=3)


def architecture_differences(loaded: ModelConfig, config: ModelConfig) -> list[str]:
    """The parts ("codec", "generator", "vae") whose architecture differs: a model folder of `loaded` can start a
    run of `config` when there are none. The loss / train settings may differ (that is what a new stage changes);
    z_only is no architecture (same modules, spec section 7): the z-only model starts from a y model."""
    loaded = dataclasses.replace(loaded, codec=dataclasses.replace(loaded.codec, z_only=config.codec.z_only))
    return [k for k in ("codec", "generator", "vae") if getattr(loaded, k) != getattr(config, k)]


def build_onedc(config: ModelConfig, pretrained: Pretrained) -> OneDC:
    """OneDC with the pretrained parts loaded (call after seeding: the random parts follow the seed)."""
    from ..models.vae import load_vae
    from ..weights import load_model_folder

    if pretrained.init_model:
        model = load_model_folder(pretrained.init_model)
        if model.config != config:
            differ = architecture_differences(model.config, config)
            if differ:
                raise ValueError(f"{pretrained.init_model} has a different architecture than preset "
                                 f"{config.name!r} ({', '.join(differ)} differ)")
            model.config = config
            model.codec.cfg = config.codec
            model.weights_changed()
        model.random_parts = []
        return model.train()
    model = OneDC(config)
    model.random_parts = []  # pretrained parts that started from random weights (recorded in the model folder)
    if pretrained.vae or config.vae.provisioned:
        model.vae = load_vae(pretrained.vae, config.vae)
    else:
        _random_warning("VAE", "stage 0 trains one for nano: --stage0 DIR; sd15: --vae PATH")
        model.random_parts.append("vae")
    if pretrained.generator_unet:
        state = load_unet_state_dict(pretrained.generator_unet)
        model.generator = OneStepGenerator.from_base_unet_state_dict(config.generator, config.codec.ctrl_ch, state)
    else:
        _random_warning("generator's base UNet", "nano: --stage0 DIR; sd15: --unet PATH (DMD2 one-step SD-1.5)")
        model.random_parts.append("generator base UNet")
    model.untrained_parts = ("codec",)
    model.weights_changed()
    return model.train()


def freeze_parameters(model: nn.Module, prefixes, trainable: bool = False) -> int:
    """Parameters named `prefix` or `prefix.*` stop training (train.freeze), or start (trainable=True,
    train.unfreeze); returns how many values changed. A prefix that names no parameter is an error: a typo would
    otherwise train everything (or nothing new) silently."""
    named = dict(model.named_parameters())
    option = "train.unfreeze" if trainable else "train.freeze"
    changed = 0
    for prefix in prefixes:
        matched = [p for name, p in named.items() if name == prefix or name.startswith(prefix + ".")]
        if not matched:
            raise ValueError(f"{option}: no parameter of the model is named {prefix!r} or {prefix!r}.* "
                             f"(top-level modules: {', '.join(sorted({n.split('.')[0] for n in named}))})")
        for p in matched:
            if p.requires_grad != trainable:
                changed += p.numel()
            p.requires_grad_(trainable)
    return changed


def build_tokenizer(config: ModelConfig, pretrained: Pretrained) -> MaskGITTokenizer:
    """The frozen distillation teacher (call after seeding)."""
    if pretrained.tokenizer:
        path = Path(pretrained.tokenizer)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tokenizer = MaskGITTokenizer(config.tokenizer)
            tokenizer.load_state_dict(load_file(str(path)), strict=True)
        else:
            from ..models.tokenizer import load_maskgit_checkpoint

            tokenizer = load_maskgit_checkpoint(path, config.tokenizer)
    else:
        _random_warning("MaskGIT tokenizer", "nano: --stage0 DIR; sd15: --tokenizer maskgit-vqgan-imagenet-f16-256.bin")
        tokenizer = MaskGITTokenizer(config.tokenizer)
    return tokenizer.eval().requires_grad_(False)


class Frozen:
    """Modules a step uses but does not train or checkpoint (teachers, loss networks): not registered as
    submodules, so DDP, the optimiser and the checkpoint never see them; they are rebuilt from files or seeds."""

    def __init__(self, **modules: nn.Module | None):
        self.__dict__.update(modules)

    def to(self, device: torch.device) -> Frozen:
        for name, module in vars(self).items():
            if isinstance(module, nn.Module):
                setattr(self, name, module.to(device))
        return self


# ================================================================================================ the step
def reconstruct_for_loss(model: OneDC, x: torch.Tensor, captions: list[str] | None = None):
    """x in [0, 1] (multiples of 64) -> (x_hat unclamped, its target, codec output, padded x, x0): OneDC.forward
    for training (captions: the batch's, used by text-guided models). x_hat and target are what the VAE slot's
    loss_pair compares: the decoded image and x, or (a pixel_sr slot) both small images, upsampled.

    The frozen VAE encoder runs without gradient; the VAE decode runs in fp32 outside autocast, unclamped."""
    xp = pad_to_multiple(x)
    with torch.no_grad():
        cond = model.encode_latents(xp)
    out = model.codec(xp * 2 - 1, cond)
    x0 = model.generator(out.ctrl, model.guidance(out.tokens, captions)).x0
    with torch.autocast(x.device.type, enabled=False):
        image, target = model.vae.loss_pair(x0.float(), x * 2 - 1)
    return (image + 1) / 2, (target + 1) / 2, out, xp, x0


class Stage1Step(nn.Module):
    """image batch -> stage-I losses. Registered (trained, checkpointed): the OneDC model and the head."""

    def __init__(self, model: OneDC, head: DistillationHead, tokenizer: MaskGITTokenizer, lpips: nn.Module | None):
        super().__init__()
        self.onedc = model
        self.head = head
        self.frozen = Frozen(tokenizer=tokenizer, lpips=lpips)

    def forward(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        from ..losses import distillation_term, l1_loss, lmbda_at, rate_bpp, stage1_loss

        cfg = self.onedc.config.loss
        x = batch["image"]
        x_hat, target, out, xp, _ = reconstruct_for_loss(self.onedc, x, batch.get("caption"))
        x_hat = x_hat.float()
        l1 = l1_loss(x_hat, target)
        lpips = self.frozen.lpips(x_hat, target).float() if self.frozen.lpips is not None else l1.new_zeros(())
        bpp = rate_bpp(out.bits_y.float())
        logs = {}
        if cfg.distill_weight:
            distill = distillation_term(self.head, self.frozen.tokenizer, xp, out.c_map)
            distill_loss = distill.loss
            logs = {"distill": distill.loss.detach(), "distill_acc": distill.accuracy}
        else:  # no semantic distillation (the ablation's variants): neither teacher nor head runs
            distill_loss = l1.new_zeros(())
        loss = stage1_loss(l1=l1, lpips=lpips, bpp=bpp, distill=distill_loss, step=step, cfg=cfg)
        lmbda = lmbda_at(step, cfg.lmbda, cfg.lmbda_warmup_steps, cfg.lmbda_start)
        return {"loss": loss, "l1": l1.detach(), "lpips": lpips.detach(), "bpp_y": bpp.detach(), **logs,
                "psnr": loop.psnr(x_hat, target), "lmbda": torch.tensor(lmbda)}


class Stage1Task(loop.Task):
    name = "stage1"

    def __init__(self, config: ModelConfig, pretrained: Pretrained | None = None, lpips: str | None = "auto"):
        self.config = config
        pretrained = pretrained or Pretrained()
        model = build_onedc(config, pretrained)
        tokenizer = build_tokenizer(config, pretrained)
        self.random_tokenizer = pretrained.tokenizer is None
        head = DistillationHead(config.head, in_ch=config.codec.semantic_ch,
                                codebook_size=config.tokenizer.codebook_size)
        # Stage I trains the codec, the generator's LoRA / conv_in / vae_reduction (peft froze the base) and the
        # head; the VAE is frozen by construction.
        model.codec.requires_grad_(True)
        freeze_parameters(model, config.train.unfreeze, trainable=True)
        freeze_parameters(model, config.train.freeze)
        head.requires_grad_(bool(config.loss.distill_weight))  # unused without distillation (DDP needs it frozen)
        if config.train.gradient_checkpointing:
            loop.enable_gradient_checkpointing(model)
        self.step_module = Stage1Step(model, head, tokenizer, build_lpips(lpips, config.loss.lpips_net))

    @property
    def model(self) -> OneDC:
        return self.step_module.onedc

    def objectives(self) -> list[loop.Objective]:
        return [loop.Objective("stage1", self.step_module, lr=self.config.train.stage1_lr)]

    def to(self, device):
        self.step_module.frozen.to(device)
        return self

    @torch.no_grad()
    def samples(self, batch: dict) -> dict[str, torch.Tensor]:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            out = model(batch["image"], batch.get("caption"))
        finally:
            model.train(was_training)
        return {"input": batch["image"], "reconstruction": out.x_hat}

    def save_model(self, folder: Path, provenance: dict) -> Path:
        from ..weights import save_model

        self.model.weights_changed()
        random_init = list(self.model.random_parts) + (["tokenizer"] if self.random_tokenizer else [])
        return save_model(self.model, folder, {**provenance, "stage": 1, "random_init": random_init})


# ================================================================================================ command line
def add_pretrained_arguments(parser) -> None:
    parser.add_argument("--stage0", default=None, help="folder written by stage 0 (nano VAE, tokenizer, UNets)")
    parser.add_argument("--vae", default=None, help="VAE weights: diffusers folder or state_dict file (SD-2.1)")
    parser.add_argument("--unet", dest="generator_unet", default=None,
                        help="base UNet of the generator (DMD2 one-step SD-1.5 .bin or SD-1.5 unet/)")
    parser.add_argument("--tokenizer", default=None, help="MaskGIT VQGAN (maskgit-vqgan-imagenet-f16-256.bin)")
    parser.add_argument("--init", default=None, help="start from this OneDC model folder (weights.save_model)")
    parser.add_argument("--lpips", default="auto",
                        help="'auto' (the provisioned backbone of loss.lpips_net, else no LPIPS term), 'random', "
                             "'off' or a backbone weights file")


def setup(args, steps_field: str):
    """Shared start of the stage entry points: threads, accelerator, config, seeds, data."""
    loop.set_threads(args.threads)
    config = loop.config_from_args(args)
    accelerator = loop.make_accelerator(config.train)
    steps = args.steps if args.steps is not None else getattr(config.train, steps_field)
    dataset, what = loop.dataset_from_args(args.data)
    if accelerator.is_main_process:
        print(f"{config.name}: {steps} steps on {what} ({len(dataset)} images), {accelerator.num_processes} "
              f"process(es), {accelerator.device}, mixed precision {accelerator.mixed_precision}", flush=True)
    batches = loop.Batches(dataset, config.train.batch_size, loop.transform_config(config.train), seed=args.seed,
                           rank=accelerator.process_index, world_size=accelerator.num_processes,
                           num_workers=config.train.num_workers if args.data else 0)
    return config, accelerator, steps, batches


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m onedc_lib.training.stage1", description=__doc__.split("\n")[0])
    loop.common_arguments(parser)
    add_pretrained_arguments(parser)
    args = parser.parse_args(argv)
    config, accelerator, steps, batches = setup(args, "stage1_steps")
    loop.seed_everything(args.seed)  # same seed on every process: identical initial weights
    task = Stage1Task(config, Pretrained.from_args(args), lpips=args.lpips)
    loop.seed_everything(loop.mix_seed(args.seed, 100 + accelerator.process_index))  # per-process noise from here on
    return loop.train(accelerator, task, batches, args.out, steps, resume=args.resume)


if __name__ == "__main__":
    main(sys.argv[1:])
