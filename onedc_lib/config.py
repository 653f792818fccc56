"""Configuration: frozen dataclasses, YAML presets (onedc_lib/presets/*.yaml) and dotted overrides.

A preset is a YAML file with the same nesting as `ModelConfig`; `base: other` inherits another preset first.
Scale is configuration: the sd15 and nano models are the same classes with different numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent / "presets"
GUIDANCE = ("hyperprior", "text")  # codec.guidance


@dataclass(frozen=True)
class CodecConfig:
    """The learned codec (spec section 2): g_a, h_enc, FSQ, h_dec, four-step prior, h_sem, g_s."""

    cond_ch: int = 4  # VAE latent channels fed to g_a
    ctrl_ch: int = 320  # g_s output, input of the generator's new conv_in
    internal_ch: int = 512  # width of g_s's y branch and of h_enc's last blocks
    bottleneck_ch: int = 128  # y channels (4 groups for the four-step prior)
    patch_ch: int = 192  # g_a's 8x8 patch embedding of the image (192 also in the release's reduced codecs)
    unet_in_ch: int = 320  # g_a's fused 1/8 feature, input of the UNet stem (320 at every width in the release)
    # g_a's UNet2DModel block_out_channels: the first is the width of g_a's tail, the last the `sem` width
    unet_ch: tuple[int, ...] = (512, 768, 768)
    unet_layers_per_block: int = 2
    unet_attention_head_dim: int = 8
    unet_norm_num_groups: int = 32
    semantic_ch: int = 768  # tokens of the generator's cross attention (h_sem output)
    fsq_levels: tuple[int, ...] = (4, 4, 4, 4, 4, 4, 4)
    z_only: bool = False  # no y is sent: every step's y_hat is the predicted mean
    # What the generator's cross-attention attends to (the paper's guidance ablation): "hyperprior" = h_sem's
    # tokens (OneDC); "text" = the image's caption through a frozen local text encoder and a learned projection
    # (models.text; the caption travels in the file). g_s gets h_sem's map in both.
    guidance: str = "hyperprior"
    text_encoder: str = ""  # a local folder (SD-1.5: text_encoder/ + tokenizer/) or a package shipping one
    text_dim: int = 768  # width of the text encoder's tokens (CLIP ViT-L: 768; MiniLM-L6: 384)
    text_max_tokens: int = 77  # captions padded / truncated to this many tokens

    def __post_init__(self):
        if self.guidance not in GUIDANCE:
            raise ValueError(f"codec.guidance must be one of {', '.join(GUIDANCE)}, not {self.guidance!r}")


@dataclass(frozen=True)
class GeneratorConfig:
    """The one-step generator: a UNet2DConditionModel with LoRA, a new conv_in and vae_reduction."""

    # UNet2DConditionModel kwargs of the base UNet (before surgery): SD-1.5 = diffusers defaults plus these.
    unet: dict = field(default_factory=lambda: dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8))
    lora_rank: int = 64
    lora_alpha: float = 8.0
    lora_targets: tuple[str, ...] = (
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
    )
    timestep: int = 999
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL kwargs (SD-2.1's VAE at sd15 scale) and how it is used."""

    # AutoencoderKL kwargs: SD-2.1's VAE (diffusers defaults plus these). Lists, as a saved config reads back.
    autoencoder: dict = field(default_factory=lambda: dict(
        block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=768))
    scaling_factor: float = 0.18215
    attention_window: int = 16  # mid-block self-attention in windows of this many latent pixels
    # "window": encoder and decoder mid-block attention per window, GroupNorm statistics per window (the release,
    # sd15); "global": decoder only, global statistics (nano, and every model saved before this field existed)
    attention_statistics: str = "global"
    sample_posterior: bool = False  # the release samples; we default to the mean (deterministic encoding)
    # "autoencoder_kl": the AutoencoderKL above (models/vae.py); "pixel_sr": a pretrained x4 super-resolution
    # network whose latent is the image downsampled (models/pixel_vae.py), `sr_decoder` its architecture
    kind: str = "autoencoder_kl"
    sr_decoder: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.attention_statistics not in ("window", "global"):
            raise ValueError(f"vae.attention_statistics must be 'window' or 'global', not {self.attention_statistics!r}")
        if self.kind not in ("autoencoder_kl", "pixel_sr"):
            raise ValueError(f"vae.kind must be 'autoencoder_kl' or 'pixel_sr', not {self.kind!r}")
        if self.kind == "pixel_sr" and self.autoencoder:  # unused by this kind: configs that differ only there
            object.__setattr__(self, "autoencoder", {})   # (an inherited preset value) are one architecture

    @property
    def latent_channels(self) -> int:
        return 12 if self.kind == "pixel_sr" else self.autoencoder.get("latent_channels", 4)

    @property
    def provisioned(self) -> bool:
        """Whether the slot's pretrained weights come from the setup's provisioning (no path needed)."""
        return self.kind == "pixel_sr"


@dataclass(frozen=True)
class TokenizerConfig:
    """The MaskGIT VQGAN tokenizer, teacher of the semantic distillation."""

    hidden_ch: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_ch: int = 256
    codebook_size: int = 1024


@dataclass(frozen=True)
class HeadConfig:
    """The distillation head (training only): c -> logits over the tokenizer's codebook at 1/32."""

    width: int = 768
    num_blocks: int = 3
    window: int = 16
    num_heads: int = 12  # head width = width / num_heads (64)
    mlp_ch: int = 3072  # the transformer MLP's hidden width
    logit_hidden_ch: int = 3072  # first 1x1 of the MLP head that maps features to codebook logits
    logit_norm_groups: int = 16  # GroupNorm groups inside that MLP head


@dataclass(frozen=True)
class LossConfig:
    """Loss weights of the two training stages (spec section 6); onedc_lib.losses applies them."""

    # Stage I: L1 + lpips_weight * LPIPS + lambda * bpp_y + distill_weight * distillation
    lmbda: float = 4.6  # rate weight; released models span 0.6 ... 12.2
    lmbda_warmup_steps: int = 4000  # lambda rises quadratically from lmbda_start to lmbda over these steps
    lmbda_start: float = 1e-4
    distill_weight: float = 0.001
    lpips_weight: float = 1.0  # LPIPS relative to L1, in both stages (and in stage 0's VAE and tokenizer)
    lpips_net: str = "vgg"  # "vgg" (average pooling, as the release trains) or "alex" (10x cheaper on CPU)
    # Stage II: dmd_weight * DMD + gan_weight * GAN + stage2_pixel_weight * (L1 + lpips_weight * LPIPS)
    dmd_weight: float = 1.0
    gan_weight: float = 1e-3
    stage2_pixel_weight: float = 0.625
    cfg_scale: float = 1.75  # classifier-free guidance of the real score (frozen teacher)
    dmd_t_min: int = 20  # DMD timesteps drawn uniformly from [dmd_t_min, dmd_t_max] of 1000
    dmd_t_max: int = 640
    gan_critic_weight: float = 1e-2  # critic loss = fake-score eps MSE + gan_critic_weight * classifier loss


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (onedc_lib.training, spec section 6): one loop for stages 0, I and II.

    Steps count optimiser steps of the whole run; batch_size is per process (the global batch is
    batch_size x processes). Learning rates rise linearly over warmup_steps updates, then stay constant.
    """

    batch_size: int = 8  # per process: the paper trains 8 per GPU on 4 A100
    crop: int = 512  # training crop (with batch_transform: the small one, the big one is 2 x crop)
    # per step, over random 2crop x 2crop crops: Resize(crop) p=.2, RandomCrop(crop) p=.5, the big crops p=.3
    # (batch cut to a quarter), as the release (onedc_lib.data.transforms); off: random crop x crop crops
    batch_transform: bool = True
    mixed_precision: str = "bf16"  # "bf16" | "fp16" | "no": autocast; FSQ and the VAE decode stay in fp32
    gradient_checkpointing: bool = True  # UNets (generator, g_a, VAE decoder, critic) recompute activations
    betas: tuple[float, ...] = (0.9, 0.999)  # AdamW
    weight_decay: float = 0.01
    warmup_steps: int = 500  # linear warm-up of every optimiser, counted in its own updates
    grad_clip: float = 5.0  # max global gradient norm per optimiser
    stage1_lr: float = 5e-5
    stage1_steps: int = 400_000
    # Stage I: parameters of the OneDC model whose dotted names start with one of these stay frozen (the z-only
    # model fine-tunes the decoder side of a low-rate model: its encoder, codec.enc and codec.hyper_enc, is kept)
    freeze: tuple[str, ...] = ()
    # Stage I: parameters made trainable besides the codec, LoRA, conv_in and vae_reduction (nano trains its
    # generator's base UNet too: its teacher had minutes of training, not SD-1.5's); applied before `freeze`
    unfreeze: tuple[str, ...] = ()
    stage2_lr: float = 1e-6  # generator: LoRA, conv_in, vae_reduction (codec frozen)
    stage2_critic_lr: float = 1e-6  # fake score UNet + GAN classifier
    stage2_steps: int = 1_000_000
    generator_every: int = 10  # stage II: the critic is updated every step, the generator every 10th
    # Stage II: dtype of the frozen networks that only run forward under autocast (the teacher, the codec, the
    # generator's base UNet): "bfloat16" halves their memory (sd15: 2.2 B parameters, 8.9 -> 4.5 GB) and needs
    # mixed_precision bf16; the VAE stays float32 (its decode runs outside autocast). The model folder written
    # at the end takes those weights from --init in full precision; checkpoints hold them in this dtype.
    frozen_dtype: str = "float32"
    # Stage 0 trains what the sd15 scale takes from pretrained weights (VAE, tokenizer, teacher UNet).
    stage0_lr: float = 1e-4
    stage0_steps: int = 0  # per part; sd15 never runs stage 0 (its parts are pretrained)
    stage0_batch_size: int = 8
    stage0_crop: int = 256
    # Bookkeeping.
    ckpt_every: int = 5000  # a checkpoint every N steps (and always at the end)
    keep_last: int = 3  # older checkpoints are deleted
    log_every: int = 50  # CSV (and TensorBoard) rows
    sample_every: int = 5000  # sample reconstructions written as PNG
    num_workers: int = 4  # data loader processes per training process


@dataclass(frozen=True)
class ModelConfig:
    name: str = "sd15"
    codec: CodecConfig = field(default_factory=CodecConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _build(cls, values: dict[str, Any]):
    """Instantiate a (nested) dataclass from a dict, refusing unknown keys; lists become tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key) if key in names else None
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), {**dataclasses.asdict(default), **value})
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for key in path:
        tree = tree.setdefault(key, {})
    tree[last] = value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _load_yaml_tree(name_or_path: str, seen: tuple[str, ...] = ()) -> dict:
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name_or_path!r}; available: {', '.join(preset_names())}")
    if str(path) in seen:
        raise ValueError(f"preset {path} inherits itself")
    tree = yaml.safe_load(path.read_text()) or {}
    base = tree.pop("base", None)
    if base is not None:
        tree = _deep_merge(_load_yaml_tree(base, seen + (str(path),)), tree)
    return tree


def load_config(preset: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """A preset name (or YAML path) plus dotted overrides such as {"loss.lmbda": 1.8}."""
    tree = _load_yaml_tree(preset)
    tree.setdefault("name", Path(preset).stem)
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    return _build(ModelConfig, tree)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


# Fields added after models were saved, with the value those models have: left out of identities (model ids,
# exported-graph keys) while they hold it, so that earlier models keep theirs.
LATER_FIELDS = {"vae": {"attention_statistics": "global", "kind": "autoencoder_kl", "sr_decoder": {}}}


def identity_dict(config: ModelConfig, parts: tuple[str, ...]) -> dict:
    """config_to_dict of `parts`, without the LATER_FIELDS that hold their earlier value."""
    tree = config_to_dict(config)
    out = {part: tree[part] for part in parts}
    for part, fields in LATER_FIELDS.items():
        if part in out:
            for key, value in fields.items():
                if out[part].get(key) == value:
                    out[part].pop(key)
    return out


def config_from_dict(values: dict) -> ModelConfig:
    return _build(ModelConfig, values)
