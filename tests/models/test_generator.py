"""The one-step generator: tiny golden (math and wiring) and the full-size release layout (manifest)."""
import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from onedc_lib.config import GeneratorConfig
from onedc_lib.models.generator import OneStepGenerator


@pytest.fixture(scope="module")
def tiny(golden):
    """generator_tiny: its UNet config, LoRA rank 8 / alpha 1 (the released scale 0.125), conv_in 64->32."""
    g = golden("generator_tiny")
    cfg = GeneratorConfig(unet=g.info["unet_config"], lora_rank=g.info["lora"]["rank"],
                          lora_alpha=g.info["lora"]["alpha"])
    generator = OneStepGenerator(cfg, ctrl_ch=64).eval()
    generator.unet.load_state_dict(g.params, strict=True)
    return g, generator


def test_tiny_golden(tiny):
    g, generator = tiny
    assert g.inputs["timestep"].tolist() == [generator.timestep]
    with torch.no_grad():
        out = generator(g.inputs["sample"], g.inputs["encoder_hidden_states"])
    torch.testing.assert_close(out.eps, g.outputs["eps"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.x_t, g.outputs["x_t"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.x0, g.outputs["x0"], atol=2e-4, rtol=0)


def test_tiny_golden_with_lora_disabled(tiny):
    g, generator = tiny
    with torch.no_grad():
        with generator.lora_disabled():
            eps_base = generator(g.inputs["sample"], g.inputs["encoder_hidden_states"]).eps
        eps = generator(g.inputs["sample"], g.inputs["encoder_hidden_states"]).eps
    torch.testing.assert_close(eps_base, g.outputs["eps_with_lora_disabled"], atol=1e-5, rtol=0)
    torch.testing.assert_close(eps, g.outputs["eps"], atol=1e-5, rtol=0)  # re-enabled on exit


@pytest.mark.parametrize("num_tokens", [1, 7])
def test_any_token_count(tiny, num_tokens):
    _, generator = tiny
    with torch.no_grad():
        out = generator(torch.randn(1, 64, 8, 16), torch.randn(1, num_tokens, 32))
    assert [t.shape for t in out] == [(1, 4, 8, 16)] * 3


def test_from_base_unet_state_dict(golden):
    """Base weights land under base_layer; fresh LoRA is a no-op (B = 0); the load is strict."""
    cfg = GeneratorConfig(unet=golden("generator_tiny").info["unet_config"], lora_rank=8, lora_alpha=1.0)
    torch.manual_seed(0)
    base = UNet2DConditionModel(**cfg.unet).state_dict()
    generator = OneStepGenerator.from_base_unet_state_dict(cfg, 64, base).eval()
    ours = generator.unet.state_dict()
    assert torch.equal(ours["mid_block.resnets.0.conv1.base_layer.weight"],
                       base["mid_block.resnets.0.conv1.weight"])
    assert torch.equal(ours["time_embedding.linear_1.weight"], base["time_embedding.linear_1.weight"])
    ctrl, tokens = torch.randn(1, 64, 8, 8), torch.randn(1, 3, 32)
    with torch.no_grad():
        with generator.lora_disabled():
            eps_base = generator(ctrl, tokens).eps
        assert torch.equal(generator(ctrl, tokens).eps, eps_base)
    del base["conv_out.bias"]
    with pytest.raises(RuntimeError, match="conv_out.bias"):
        OneStepGenerator.from_base_unet_state_dict(cfg, 64, base)


@pytest.fixture(scope="module")
def release_manifest(compat_dir):
    return json.loads((compat_dir / "manifest_model_generator.json").read_text())


def test_sd15_layout_matches_release_on_meta(release_manifest):
    """Keys, order, shapes and dtypes of model.safetensors; the 278 LoRA modules; parameter counts."""
    with torch.device("meta"):
        generator = OneStepGenerator(GeneratorConfig(), ctrl_ch=320)
    unet = generator.unet
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in unet.state_dict().items()]
    assert ours == release_manifest["keys_in_state_dict_order"]
    lora_modules = sorted(name for name, m in unet.named_modules() if isinstance(m, BaseTunerLayer))
    assert lora_modules == release_manifest["lora_target_module_names"]

    counts = {}
    for name, child in unet.named_children():
        params = dict(child.named_parameters())
        lora = sum(p.numel() for k, p in params.items() if ".lora_" in k)
        total = sum(p.numel() for p in params.values())
        counts[name] = {"total": total, "lora": lora, "non_lora": total - lora}
    assert counts == release_manifest["param_counts_top_level"]
    assert sum(c["total"] for c in counts.values()) == release_manifest["param_count_total"] == 928_619_276
    assert sum(c["lora"] for c in counts.values()) == 67_252_224  # "67.25 M"

    # Only LoRA, conv_in and vae_reduction train (stage I/II); the base UNet is frozen.
    trainable = sum(p.numel() for p in generator.parameters() if p.requires_grad)
    assert trainable == 67_252_224 + counts["conv_in"]["total"] + counts["vae_reduction"]["total"]


@pytest.mark.slow
def test_sd15_loads_release_layout_strictly(tmp_path, release_manifest):
    """A file with the release's keys and random values loads strictly into a real sd15 generator."""
    gen = torch.Generator().manual_seed(0)
    file = {key: torch.randn(shape, generator=gen) * 0.01
            for key, shape, _ in release_manifest["keys_in_file_order"]}
    save_file(file, tmp_path / "model.safetensors")
    del file
    generator = OneStepGenerator(GeneratorConfig(), ctrl_ch=320).eval()
    state_dict = load_file(tmp_path / "model.safetensors")
    generator.unet.load_state_dict(state_dict, strict=True)
    for key in ("conv_in.weight", "vae_reduction.blocks.5.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.default.weight"):
        assert torch.equal(generator.unet.state_dict()[key], state_dict[key])
    with torch.no_grad():
        out = generator(torch.randn(1, 320, 8, 8), torch.randn(1, 1, 768))
    assert [t.shape for t in out] == [(1, 4, 8, 8)] * 3 and all(t.isfinite().all() for t in out)


def test_sample_in_one_step_is_the_one_step_x0_and_more_steps_run_the_unet_more(tiny):
    g, generator = tiny
    ctrl, tokens = g.inputs["sample"], g.inputs["encoder_hidden_states"]
    calls = []
    hook = generator.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        one = generator(ctrl, tokens).x0
        calls.clear()
        torch.testing.assert_close(generator.sample(ctrl, tokens, 1), one, atol=1e-5, rtol=1e-5)
        assert len(calls) == 1
        calls.clear()
        four = generator.sample(ctrl, tokens, 4)
    hook.remove()
    assert len(calls) == 4 and four.shape == one.shape and torch.isfinite(four).all()
    with pytest.raises(ValueError, match="steps"):
        generator.sample(ctrl, tokens, 0)
