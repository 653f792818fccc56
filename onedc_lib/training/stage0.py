"""Stage 0 (nano only): train what the sd15 scale takes from pretrained weights, each part a function + preset.

    vae        a small AutoencoderKL (config.vae.autoencoder): L1 (+ LPIPS) + 1e-6 KL, then its latent space is
               rescaled so that latent x scaling_factor has unit variance, as SD's 0.18215 does for SD's VAE
    tokenizer  a small MaskGIT VQGAN (config.tokenizer): L1 (+ LPIPS) + codebook + 0.25 commitment, straight-through,
               dead codes restarted from encoder outputs; trained on images downsampled 2x, as it is used
    teacher    a small UNet2DConditionModel (config.generator.unet) in that VAE's latent space: epsilon prediction on
               the SD-1.5 schedule, unconditional (its context is one token of zeros: nano has no text encoder)
    generator  the one-step generator's base UNet, initialised from the teacher (sd15 starts from DMD2, itself
               initialised from SD-1.5); no one-step distillation here: stage II's DMD does that against the teacher

Each part is a run of the one training loop (resume, DDP, logs) in OUT/<part>/ and ends in one file:
OUT/vae.safetensors, OUT/tokenizer.safetensors, OUT/teacher_unet.safetensors, OUT/generator_unet.safetensors
(state_dicts of AutoencoderKL, MaskGITTokenizer and UNet2DConditionModel); `--stage0 OUT` hands them to stages I/II.

    python -m onedc_lib.training.stage0 --preset nano --out runs/s0 [--part all|vae|tokenizer|teacher|generator]
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..bitstream import atomic_write
from ..config import ModelConfig
from . import loop

PARTS = ("vae", "tokenizer", "teacher", "generator")
FILES = {"vae": "vae.safetensors", "tokenizer": "tokenizer.safetensors", "teacher_unet": "teacher_unet.safetensors",
         "generator_unet": "generator_unet.safetensors"}
KL_WEIGHT = 1e-6  # per latent element relative to the per-pixel reconstruction loss (as the LDM autoencoders)
COMMITMENT = 0.25


def stage0_files(folder: str | Path) -> dict[str, str]:
    """The stage-0 files present in `folder`: {vae, tokenizer, teacher_unet, generator_unet} -> path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"stage-0 folder {folder} does not exist: train one with stage 0 (notebook 10), or "
                                "leave stage0 empty for random parts (smoke runs: the bundled model's parts)")
    found = {name: str(folder / file) for name, file in FILES.items() if (folder / file).is_file()}
    missing = sorted(set(FILES) - set(found))
    if missing:
        warnings.warn(f"stage-0 folder {folder} lacks {', '.join(FILES[m] for m in missing)}", stacklevel=2)
    return found


def _save_state_dict(module: nn.Module, path: Path, info: dict) -> Path:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, save(tensors, metadata={"format": "pt", "info": json.dumps(info)}))
    return path


def null_tokens(config: ModelConfig, batch: int, device) -> torch.Tensor:
    """The nano teacher's context: one token of zeros (no text encoder at this scale)."""
    return torch.zeros(batch, 1, config.generator.unet.get("cross_attention_dim", 768), device=device)


class _Part(loop.Task):
    """A stage-0 part: one objective module; `save_model` writes OUT/<file>."""

    def __init__(self, config: ModelConfig, target: Path, lr: float):
        self.config = config
        self.target = target
        self.lr = lr

    def objectives(self):
        return [loop.Objective(self.name, self.step_module, lr=self.lr)]

    def to(self, device):
        for module in getattr(self, "frozen", {}).values():
            module.to(device)
        return self


# ================================================================================================ VAE
class VAEStep(nn.Module):
    def __init__(self, autoencoder, lpips: nn.Module | None):
        super().__init__()
        self.autoencoder = autoencoder
        self.lpips = [lpips]  # a list: not registered, never trained or saved

    def forward(self, batch: dict, step: int) -> dict:
        x = batch["image"]
        posterior = self.autoencoder.encode(x * 2 - 1).latent_dist
        rec = (self.autoencoder.decode(posterior.sample()).sample.float() + 1) / 2
        l1 = (rec - x).abs().mean()
        lpips = self.lpips[0](rec, x).float() if self.lpips[0] is not None else l1.new_zeros(())
        kl = posterior.kl().float().mean() / x[0].numel()
        loss = l1 + lpips + KL_WEIGHT * kl
        return {"loss": loss, "l1": l1.detach(), "lpips": lpips.detach(), "kl": kl.detach(),
                "psnr": loop.psnr(rec, x)}


@torch.no_grad()
def normalise_latent_scale(autoencoder, images: torch.Tensor, scaling_factor: float) -> float:
    """Rescale the latent space (quant_conv's mean and log-variance, post_quant_conv's input) by s so that the
    posterior means times `scaling_factor` have unit standard deviation on `images`; decoding is unchanged.
    Returns s."""
    if autoencoder.quant_conv is None or autoencoder.post_quant_conv is None:
        raise ValueError("latent rescaling needs quant_conv and post_quant_conv (use_quant_conv=True)")
    mean = autoencoder.encode(images * 2 - 1).latent_dist.mean
    s = float(1.0 / (mean.float().std() * scaling_factor))
    c = autoencoder.config.latent_channels
    autoencoder.quant_conv.weight[:c] *= s
    autoencoder.quant_conv.bias[:c] *= s
    autoencoder.quant_conv.bias[c:] += 2 * torch.log(torch.tensor(s))
    autoencoder.post_quant_conv.weight /= s
    return s


class VAETask(_Part):
    name = "stage0_vae"

    def __init__(self, config: ModelConfig, target: Path, lpips: str | None = "auto"):
        from diffusers import AutoencoderKL

        from ..losses import build_lpips

        super().__init__(config, target, config.train.stage0_lr)
        autoencoder = AutoencoderKL(**config.vae.autoencoder).train()
        if config.train.gradient_checkpointing:
            loop.enable_gradient_checkpointing(autoencoder)
        self.step_module = VAEStep(autoencoder, build_lpips(lpips, config.loss.lpips_net))
        self.frozen = {"lpips": self.step_module.lpips[0]} if self.step_module.lpips[0] is not None else {}
        self.calibration: torch.Tensor | None = None  # images that set the latent scale (train_part sets them)

    @torch.no_grad()
    def samples(self, batch):
        ae = self.step_module.autoencoder
        ae.eval()
        try:
            rec = ae.decode(ae.encode(batch["image"] * 2 - 1).latent_dist.mean).sample
        finally:
            ae.train()
        return {"input": batch["image"], "reconstruction": (rec + 1) / 2}

    def save_model(self, folder, provenance=None):
        import copy

        ae = copy.deepcopy(self.step_module.autoencoder).cpu().eval()
        info = {"part": "vae", "scaling_factor": self.config.vae.scaling_factor}
        if self.calibration is not None:
            info["latent_rescale"] = normalise_latent_scale(ae, self.calibration, self.config.vae.scaling_factor)
        return _save_state_dict(ae, self.target, info)


# ================================================================================================ tokenizer
class TokenizerStep(nn.Module):
    """VQGAN training without the adversary: reconstruction + codebook + commitment, straight-through."""

    def __init__(self, tokenizer, lpips: nn.Module | None, restart_every: int = 50):
        super().__init__()
        self.tokenizer = tokenizer
        self.lpips = [lpips]
        self.restart_every = restart_every
        self.register_buffer("usage", torch.zeros(tokenizer.config.codebook_size))

    def forward(self, batch: dict, step: int) -> dict:
        tok = self.tokenizer
        x = F.avg_pool2d(batch["image"], 2)  # OneDC tokenises the image downsampled 2x
        z = tok.encoder(x)
        indices = tok.quantize(z)
        zq = tok.quantize.lookup(indices)
        codebook = F.mse_loss(zq.float(), z.detach().float())
        commitment = F.mse_loss(z.float(), zq.detach().float())
        rec = tok.decoder(z + (zq - z).detach()).float()
        l1 = (rec - x).abs().mean()
        lpips = self.lpips[0](rec.clamp(0, 1), x).float() if self.lpips[0] is not None else l1.new_zeros(())
        loss = l1 + lpips + codebook + COMMITMENT * commitment
        with torch.no_grad():
            counts = torch.bincount(indices.flatten(), minlength=self.usage.numel()).float()
            self.usage.mul_(0.9).add_(counts, alpha=0.1)
            if self.training and (step + 1) % self.restart_every == 0:
                self._restart_dead_codes(z)
        return {"loss": loss, "l1": l1.detach(), "lpips": lpips.detach(), "codebook": codebook.detach(),
                "commitment": commitment.detach(), "codes_used": (counts > 0).float().sum(), "psnr": loop.psnr(rec, x)}

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor) -> None:
        """Codes unused lately take the values of random encoder outputs of this batch (global torch RNG)."""
        dead = (self.usage < 1e-3).nonzero().flatten()
        if dead.numel() == 0:
            return
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        weight = self.tokenizer.quantize.embedding.weight
        weight[dead] = (flat[pick] + 0.01 * torch.randn_like(flat[pick])).to(weight.dtype)
        self.usage[dead] = 1.0


class TokenizerTask(_Part):
    name = "stage0_tokenizer"

    def __init__(self, config: ModelConfig, target: Path, lpips: str | None = "auto"):
        from ..models.tokenizer import MaskGITTokenizer
        from ..losses import build_lpips

        super().__init__(config, target, config.train.stage0_lr)
        self.step_module = TokenizerStep(MaskGITTokenizer(config.tokenizer).train(),
                                          build_lpips(lpips, config.loss.lpips_net))
        self.frozen = {"lpips": self.step_module.lpips[0]} if self.step_module.lpips[0] is not None else {}

    @torch.no_grad()
    def samples(self, batch):
        tok = self.step_module.tokenizer
        x = F.avg_pool2d(batch["image"], 2)
        indices, _ = tok.encode(x)
        return {"input": x, "reconstruction": tok.decode_indices(indices)}

    def save_model(self, folder, provenance=None):
        return _save_state_dict(self.step_module.tokenizer, self.target, {"part": "tokenizer"})


# ================================================================================================ teacher UNet
class TeacherStep(nn.Module):
    """Epsilon prediction in the (frozen) VAE's latent space, t ~ U[0, 1000), SD-1.5 schedule."""

    def __init__(self, unet, vae, config: ModelConfig):
        super().__init__()
        from ..models.schedule import sd15_alphas_cumprod

        g = config.generator
        self.unet = unet
        self.vae = [vae]
        self.config = config
        self.register_buffer("alphas_cumprod", sd15_alphas_cumprod(g.num_train_timesteps, g.beta_start, g.beta_end),
                             persistent=False)

    def forward(self, batch: dict, step: int) -> dict:
        from ..losses import add_noise, sample_timesteps

        with torch.no_grad():
            latent = self.vae[0].encode(batch["image"] * 2 - 1).float()
        t = sample_timesteps(latent.shape[0], 0, self.config.generator.num_train_timesteps - 1, latent.device)
        noise = torch.randn_like(latent)
        x_t = add_noise(latent, noise, t, self.alphas_cumprod)
        context = null_tokens(self.config, latent.shape[0], latent.device)
        eps = self.unet(x_t, t, encoder_hidden_states=context).sample.float()
        loss = F.mse_loss(eps, noise)
        return {"loss": loss, "latent_std": latent.std().detach()}


def build_vae(config: ModelConfig, path: str | None):
    """The teacher's latent space: the stage-0 VAE, or a provisioned pretrained one (config.vae.provisioned)."""
    from ..models.vae import build_vae as build_slot, load_vae

    if path is None and not config.vae.provisioned:
        warnings.warn("no stage-0 VAE: the teacher trains in the latent space of a RANDOM VAE (train the VAE first)",
                      stacklevel=3)
        return build_slot(config.vae).eval()
    return load_vae(path, config.vae).eval()


def trainable_parts(config: ModelConfig) -> tuple[str, ...]:
    """The parts stage 0 trains for `config`: all of PARTS, but no VAE where the slot holds a provisioned
    pretrained decoder."""
    return tuple(p for p in PARTS if not (p == "vae" and config.vae.provisioned))


class TeacherTask(_Part):
    name = "stage0_teacher"

    def __init__(self, config: ModelConfig, target: Path, vae_path: str | None):
        from diffusers import UNet2DConditionModel

        super().__init__(config, target, config.train.stage0_lr)
        vae = build_vae(config, vae_path)
        unet = UNet2DConditionModel(**config.generator.unet).train()
        if config.train.gradient_checkpointing:
            loop.enable_gradient_checkpointing(unet)
        self.step_module = TeacherStep(unet, vae, config)
        self.frozen = {"vae": vae}

    @torch.no_grad()
    def samples(self, batch):
        """Inputs noised to t = 500 and the teacher's one-step x0 estimate, decoded."""
        from ..losses import add_noise, predict_x0

        step = self.step_module
        vae = self.frozen["vae"]
        latent = vae.encode(batch["image"] * 2 - 1).float()
        t = torch.full((latent.shape[0],), 500, device=latent.device)
        x_t = add_noise(latent, torch.randn_like(latent), t, step.alphas_cumprod)
        step.unet.eval()
        try:
            x0 = predict_x0(step.unet, x_t, t, null_tokens(self.config, latent.shape[0], latent.device),
                            alphas_cumprod=step.alphas_cumprod)
        finally:
            step.unet.train()
        decode = lambda lat: (vae.decode(lat) + 1) / 2
        return {"input": batch["image"], "noised_t500": decode(x_t), "x0_estimate": decode(x0)}

    def save_model(self, folder, provenance=None):
        return _save_state_dict(self.step_module.unet, self.target, {"part": "teacher_unet"})


def init_generator(config: ModelConfig, out: Path) -> Path:
    """The generator's base UNet = the teacher's weights (as DMD2 starts from SD-1.5)."""
    from safetensors.torch import load_file

    teacher = out / FILES["teacher_unet"]
    if not teacher.is_file():
        raise FileNotFoundError(f"{teacher} is missing: train the teacher first (--part teacher)")
    state = load_file(str(teacher))
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**config.generator.unet)
    unet.load_state_dict(state, strict=True)  # the generator's base layout is the teacher's
    return _save_state_dict(unet, out / FILES["generator_unet"], {"part": "generator_unet",
                                                                  "initialised_from": str(teacher)})


# ================================================================================================ running the parts
def train_part(part: str, config: ModelConfig, out: str | Path, steps: int, *, seed: int = 0,
               resume: str | None = None, data: str | None = None, lpips: str | None = "auto") -> Path:
    """Train one part (vae, tokenizer, teacher) into OUT/<part>/ and write OUT/<file>; 'generator' copies the
    teacher. Returns the file written."""
    out = Path(out)
    if part == "generator":
        return init_generator(config, out)
    cfg = config.train
    accelerator = loop.make_accelerator(cfg)
    dataset, what = loop.dataset_from_args(data)
    batches = loop.Batches(dataset, cfg.stage0_batch_size, cfg.stage0_crop, seed=seed,
                           rank=accelerator.process_index, world_size=accelerator.num_processes,
                           num_workers=cfg.num_workers if data else 0)
    loop.seed_everything(seed)
    if part == "vae":
        if config.vae.provisioned:
            raise ValueError(f"preset {config.name!r} holds a provisioned pretrained decoder in its VAE slot "
                             f"(vae.kind {config.vae.kind!r}): stage 0 has no VAE to train")
        task = VAETask(config, out / FILES["vae"], lpips)
    elif part == "tokenizer":
        task = TokenizerTask(config, out / FILES["tokenizer"], lpips)
    elif part == "teacher":
        vae = out / FILES["vae"]
        task = TeacherTask(config, out / FILES["teacher_unet"], str(vae) if vae.is_file() else None)
    else:
        raise ValueError(f"unknown stage-0 part {part!r}; parts: {', '.join(PARTS)}")
    loop.seed_everything(loop.mix_seed(seed, 100 + accelerator.process_index))
    if accelerator.is_main_process:
        print(f"stage 0 {part}: {steps} steps on {what}", flush=True)
    if part == "vae":
        task.calibration = batches.fixed(32)["image"]
    loop.train(accelerator, task, batches, out / part, steps, resume=resume, num_samples=8)
    accelerator.wait_for_everyone()
    return task.target


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m onedc_lib.training.stage0", description=__doc__.split("\n")[0])
    loop.common_arguments(parser)
    parser.add_argument("--part", default="all", choices=("all",) + PARTS)
    parser.add_argument("--lpips", default="auto", help="'auto', 'random', 'off' or a backbone weights file (net: loss.lpips_net)")
    args = parser.parse_args(argv)
    loop.set_threads(args.threads)
    config = loop.config_from_args(args)
    steps = args.steps if args.steps is not None else config.train.stage0_steps
    if steps <= 0:
        raise SystemExit(f"preset {config.name!r} sets no stage-0 steps (its parts are pretrained); pass --steps")
    parts = trainable_parts(config) if args.part == "all" else (args.part,)
    out = Path(args.out)
    written = None
    for part in parts:
        target = out / (FILES["teacher_unet"] if part == "teacher" else
                        FILES["generator_unet"] if part == "generator" else FILES[part])
        if args.resume == "auto" and target.is_file() and args.part == "all":
            print(f"stage 0 {part}: {target} exists, skipped", flush=True)
            written = target
            continue
        written = train_part(part, config, out, steps, seed=args.seed, resume=args.resume, data=args.data,
                             lpips=args.lpips)
        print(f"{part}: {written}", flush=True)
    print(f"stage 0 folder: {out}", flush=True)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
