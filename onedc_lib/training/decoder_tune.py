"""Fine-tune a compact x4 decoder for the VAE slot of trained pixel_sr models, on their own small images.

Real-ESRGAN x4plus (23 RRDB blocks) makes detail well from the small images that nano_sr's codec and generator
produce, but takes seconds per photograph on a CPU; smaller pretrained networks (SPAN) lose much of its quality on
those images. This stage starts from a pretrained decoder cut to size (`initial_state`: the tensors of the student
that the pretrained network also has, e.g. the first K RRDB blocks and the whole upsampler of realesrgan-x4plus)
and trains it to turn the small images of the given models into the photographs (L1 + LPIPS, the stage-I losses),
or, with --target teacher, into what the models' own decoder makes of them (distillation: the student learns the
pretrained decoder's colours and detail, not a regression to the photograph; trained on photographs, a 3-block
student took on a colour cast), the codec and generator frozen. It writes OUT/decoder.safetensors and, for each
model, OUT/models/<name>/: that model with the decoder in its VAE slot (a new model id; bundle it as any model
folder).

    python -m onedc_lib.training.decoder_tune --models runs/q1/model runs/q3/model \\
        --decoder '{"arch": "rrdbnet", "num_feat": 64, "num_block": 12, "num_grow": 32}' --target teacher \\
        --init realesrgan-x4plus --data out/nano_data/train --out runs/decoder --steps 1500 --resume auto
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn

from ..models import sr_decoder
from ..bitstream import atomic_write
from ..weights import load_model, save_model
from . import loop
from .stage1 import reconstruct_for_loss

DECODER_FILE = "decoder.safetensors"


def initial_state(network: nn.Module, pretrained: str) -> dict[str, torch.Tensor]:
    """The student's state_dict taken from the provisioned decoder `pretrained`: every tensor of the student must
    exist there with the same shape (a network cut to size, never a partial match)."""
    source = sr_decoder.load_state_dict(None, pretrained)
    own = network.state_dict()
    missing = [k for k, v in own.items() if k not in source or tuple(source[k].shape) != tuple(v.shape)]
    if missing:
        raise ValueError(f"the decoder to train is not a part of {pretrained}: {len(missing)} of its tensors "
                         f"are not there with the same shape (first: {missing[0]})")
    return {k: source[k].to(own[k].dtype) for k in own}


@torch.no_grad()
def small_images(model, x: torch.Tensor) -> torch.Tensor:
    """x [B, 3, H, W] in [0, 1] -> the small images [B, 3, H/4, W/4] in [0, 1] that its decoder receives: codec
    (rounded, as in a file) and generator, in eval mode."""
    x0 = reconstruct_for_loss(model, x)[4]
    return (model.vae.small_image(x0).clamp(-1, 1) + 1)[..., :x.shape[-2] // 4, :x.shape[-1] // 4] / 2


TARGETS = ("photo", "teacher")


class DecoderStep(nn.Module):
    """One step: the small images of one of the frozen models (in turn) through the decoder, against the crop
    (target "photo") or against that model's own decoder's output on the same small images ("teacher")."""

    def __init__(self, decoder: nn.Module, models: list, lpips: nn.Module | None, target: str = "photo"):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        self.decoder = decoder
        self.target = target
        self.frozen = [models, lpips]  # a list: not registered, never trained or saved

    def forward(self, batch: dict, step: int) -> dict:
        models, lpips = self.frozen
        model = models[step % len(models)]
        small = small_images(model, batch["image"])
        if self.target == "teacher":
            with torch.no_grad():
                x = model.vae.sr(small)  # unclamped: the whole function is learnt, not only its [0, 1] part
        else:
            x = batch["image"]
        y = self.decoder(small)
        l1 = (y - x).abs().mean()
        perceptual = lpips(y.clamp(0, 1), x.clamp(0, 1)).float() if lpips is not None else l1.new_zeros(())
        return {"loss": l1 + perceptual, "l1": l1.detach(), "lpips": perceptual.detach(), "psnr": loop.psnr(y, x)}


def model_name(folder: Path) -> str:
    """runs/q1/model -> q1; onedc_lib/weights/nano_sr_q3 -> nano_sr_q3."""
    return folder.parent.name if folder.name == "model" else folder.name


class DecoderTask(loop.Task):
    name = "decoder_tune"

    def __init__(self, folders: list[Path], arch: dict, init: str | None, lr: float, lpips: str | None = "auto",
                 target: str = "photo"):
        from ..losses import build_lpips

        self.folders = folders
        self.models = [load_model(str(folder)).eval().requires_grad_(False) for folder in folders]
        kinds = {m.config.vae.kind for m in self.models}
        if kinds != {"pixel_sr"}:
            raise ValueError(f"decoder fine-tuning needs models whose VAE slot is a pixel_sr decoder, got {kinds}")
        self.config = self.models[0].config
        self.arch = {k: v for k, v in arch.items() if k != "pretrained"}
        decoder = sr_decoder.build_network(self.arch)
        if init is not None:
            decoder.load_state_dict(initial_state(decoder, init))
        self.lr = lr
        self.step_module = DecoderStep(decoder.train(), self.models, build_lpips(lpips, self.config.loss.lpips_net),
                                       target)

    def objectives(self) -> list[loop.Objective]:
        return [loop.Objective("decoder", self.step_module, self.lr)]

    def to(self, device):
        for model in self.models:
            model.to(device)
        if self.step_module.frozen[1] is not None:
            self.step_module.frozen[1].to(device)
        return self

    @torch.no_grad()
    def samples(self, batch):
        small = small_images(self.models[0], batch["image"])
        return {"input": batch["image"], "decoded": self.step_module.decoder(small).clamp(0, 1)}

    def save_model(self, folder: Path, provenance: dict) -> Path:
        from safetensors.torch import save

        out = folder.parent
        decoder = self.step_module.decoder
        state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
        atomic_write(out / DECODER_FILE, save(state, metadata={"arch": json.dumps(self.arch)}))
        for source, model in zip(self.folders, self.models):
            save_model(with_decoder(model, self.arch, state), out / "models" / model_name(source),
                       {**provenance, "source_model": str(source)})
        return out / "models"


def with_decoder(model, arch: dict, state: dict[str, torch.Tensor]):
    """A copy of `model` whose VAE slot is the decoder `arch` with weights `state` (config and model id change)."""
    from ..models.onedc import OneDC

    vae = dataclasses.replace(model.config.vae, sr_decoder=dict(arch))
    new = OneDC(dataclasses.replace(model.config, vae=vae))
    tensors = {k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}
    tensors.update({f"vae.sr.{k}": v for k, v in state.items()})
    new.load_state_dict(tensors, strict=True)
    new.weights_changed()
    return new.eval()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m onedc_lib.training.decoder_tune",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="trained pixel_sr model folders")
    parser.add_argument("--decoder", required=True, help="the decoder to train, a vae.sr_decoder JSON object")
    parser.add_argument("--init", default=None, help="provisioned decoder to cut it from (default: random)")
    parser.add_argument("--target", choices=TARGETS, default="photo", help="what the decoder learns to output: "
                        "the photograph, or the models' own (pretrained) decoder's output: distillation")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--crop", type=int, default=None, help="training crop in image pixels (default: the "
                        "first model's train.crop)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the first model's train.batch_size")
    parser.add_argument("--lpips", default="auto", help="'auto', 'random', 'off' or a backbone weights file")
    parser.add_argument("--out", required=True, help="output folder: checkpoints/, log.csv, decoder, models/")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", default=None, help="'auto' or a checkpoint folder")
    parser.add_argument("--data", default=None, help="image folder (default: the sample photographs)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    loop.set_threads(args.threads)
    try:
        arch = json.loads(args.decoder)
    except ValueError as error:
        parser.error(f"--decoder is not JSON ({error})")
    loop.seed_everything(args.seed)
    task = DecoderTask([Path(m) for m in args.models], arch, args.init, args.lr, args.lpips, args.target)
    cfg = task.config.train
    accelerator = loop.make_accelerator(cfg)
    dataset, what = loop.dataset_from_args(args.data)
    batches = loop.Batches(dataset, args.batch_size or cfg.batch_size, args.crop or cfg.crop, seed=args.seed,
                           rank=accelerator.process_index, world_size=accelerator.num_processes, num_workers=0)
    if accelerator.is_main_process:
        print(f"decoder {arch}: {args.steps} steps on {what}, {len(task.models)} model(s), target {args.target}",
              flush=True)
    loop.train(accelerator, task, batches, args.out, args.steps, resume=args.resume)
    return Path(args.out) / "models"


if __name__ == "__main__":
    main(sys.argv[1:])
