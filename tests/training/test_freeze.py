"""train.freeze and the z-only start (spec section 7): stage I from a y model's folder with the encoder side frozen;
a prefix that names nothing and an init model of another architecture are refused (nano, 64-px crops, 1 thread)."""
from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file

from onedc_lib.config import load_config
from onedc_lib.training.run import SMOKE, run_stage
from onedc_lib.training.stage1 import Pretrained, build_onedc, freeze_parameters
from onedc_lib.weights import build_model, save_model

TINY = {**SMOKE, "train.batch_size": 1, "train.sample_every": 0}


@pytest.fixture
def low_rate_model(tmp_path):
    """A nano_q1 model folder (seeded random weights: what matters here is which weights move)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_model(build_model("nano_q1"), tmp_path / "q1", {"note": "test"})


def test_zonly_preset_freezes_the_encoder_side():
    config = load_config("nano_zonly")
    assert config.codec.z_only and config.train.freeze == ("codec.enc", "codec.hyper_enc")
    model = build_model("nano_zonly")
    model.requires_grad_(True)
    frozen = freeze_parameters(model, config.train.freeze)
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if n.startswith(("codec.enc.",
                                                                                         "codec.hyper_enc.")))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("codec.dec."))
    with pytest.raises(ValueError, match="codec.encoder"):
        freeze_parameters(model, ["codec.encoder"])  # a typo would otherwise train everything


def test_zonly_trains_from_a_low_rate_model_with_its_encoder_kept(tmp_path, low_rate_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random tokenizer
        model_dir = run_stage(1, "nano_zonly", tmp_path / "zonly", steps=2, overrides=TINY, init=str(low_rate_model),
                              lpips="off", threads=1, device="cpu")
    before = load_file(str(low_rate_model / "model.safetensors"))
    after = load_file(str(model_dir / "model.safetensors"))
    moved = {prefix: any(not before[k].equal(after[k]) for k in before if k.startswith(prefix))
             for prefix in ("codec.enc.", "codec.hyper_enc.", "codec.dec.", "codec.hyper_dec.", "vae.")}
    assert moved == {"codec.enc.": False, "codec.hyper_enc.": False, "codec.dec.": True, "codec.hyper_dec.": True,
                     "vae.": False}
    from onedc_lib.weights import load_model_folder

    zonly = load_model_folder(model_dir)
    assert zonly.config.codec.z_only and zonly.codec.cfg.z_only
    with torch.no_grad():
        sections = {s.name for s in zonly.eval().compress(torch.rand(1, 3, 64, 64)).container.sections}
    assert "z" in sections and "y" not in sections  # no y is sent


def test_init_of_another_architecture_is_refused(low_rate_model):
    config = load_config("nano_zonly", {"codec.internal_ch": 96})
    with pytest.raises(ValueError, match="codec differ"):
        build_onedc(config, Pretrained(init_model=str(low_rate_model)))


def test_unfreeze_trains_the_generator_base_and_freeze_still_wins():
    from onedc_lib.training.stage1 import Stage1Task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Stage1Task(load_config("nano", {"train.unfreeze": []}), lpips="off").model
        task = Stage1Task(load_config("nano", {"train.unfreeze": ["generator.unet"],
                                               "train.freeze": ["generator.unet.conv_out"]}), lpips="off")
    base = lambda m: {n: p.requires_grad for n, p in m.generator.named_parameters() if "base_layer" in n}
    assert base(plain) and not any(base(plain).values())  # peft's default: the base UNet frozen
    assert all(base(task.model).values())
    assert not any(p.requires_grad for n, p in task.model.generator.named_parameters() if "conv_out" in n)
    assert not any(p.requires_grad for p in task.model.vae.parameters())
    with pytest.raises(ValueError, match="train.unfreeze: no parameter"):
        freeze_parameters(task.model, ["generator.unet2"], trainable=True)
