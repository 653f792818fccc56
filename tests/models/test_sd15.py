"""The whole sd15 OneDC: layout and sizes on the meta device (fast), and a real random-weight round trip through
`load_release_checkpoint` (slow: ~1.4 B parameters, ~5.6 GB in fp32, several GB of temporary files)."""
import dataclasses
import gc
import json
import warnings

import pytest
import torch

from onedc_lib.config import load_config
from onedc_lib.models.onedc import OneDC

CODEC_TOTAL = 394_147_783
GENERATOR_TOTAL = 928_619_276
LORA_TOTAL = 67_252_224
BASE_UNET_TOTAL = 859_520_964  # spec: UNet 859.5 M before surgery


def count(module: torch.nn.Module, prefix: str = "", lora: bool | None = None) -> int:
    """Parameters of `module` whose name starts with `prefix.` (all if empty); lora=True/False filters LoRA."""
    total = 0
    for name, p in module.named_parameters():
        if prefix and not name.startswith(prefix + "."):
            continue
        if lora is not None and ("lora_" in name) != lora:
            continue
        total += p.numel()
    return total


@pytest.fixture(scope="module")
def sd15_meta():
    with torch.device("meta"):
        return OneDC(load_config("sd15"))


@pytest.fixture(scope="module")
def manifests(compat_dir):
    return {name: json.loads((compat_dir / f"manifest_{name}.json").read_text())
            for name in ("model_1_codec", "model_generator")}


def test_meta_build_has_no_storage(sd15_meta):
    assert all(p.is_meta for p in sd15_meta.parameters())
    assert sd15_meta.codec.z_vq.codebook_size == 4 ** 7
    # what the full model weighs in fp32: the budget of the slow test below
    assert count(sd15_meta) == CODEC_TOTAL + GENERATOR_TOTAL + 34_163_592 + 49_490_179 + 72 + 20


def test_codec_counts_match_manifest(sd15_meta, manifests):
    codec, expected = sd15_meta.codec, manifests["model_1_codec"]
    assert count(codec) == expected["param_count_total"] == expected["num_elements"] == CODEC_TOTAL
    for level in ("param_counts_top_level", "param_counts_second_level"):
        assert {name: count(codec, name) for name in expected[level]} == expected[level]
    # every top-level child is listed (a new module would be a layout change); the release also registers its
    # parameter-free loss modules on the codec, which we keep outside the model
    release_losses = {"mse", "ssim", "cross_entropy"}
    assert all(expected["param_counts_top_level"][name] == 0 for name in release_losses)
    assert {name for name, _ in codec.named_children()} == set(expected["param_counts_top_level"]) - release_losses


def test_generator_counts_match_manifest(sd15_meta, manifests):
    unet, expected = sd15_meta.generator.unet, manifests["model_generator"]
    assert count(unet) == expected["param_count_total"] == expected["num_elements"] == GENERATOR_TOTAL
    assert count(unet, lora=True) == LORA_TOTAL
    ours = {name: {"total": count(unet, name), "lora": count(unet, name, lora=True),
                   "non_lora": count(unet, name, lora=False)} for name in expected["param_counts_top_level"]}
    assert ours == expected["param_counts_top_level"]
    assert sum(v["lora"] for v in expected["param_counts_top_level"].values()) == LORA_TOTAL
    # spec section 2: UNet 859.5 M + LoRA 67.25 M + conv_in 0.92 M + vae_reduction 0.94 M
    base = expected["param_counts_base_unet_before_surgery"]
    assert sum(base.values()) == BASE_UNET_TOTAL
    new_conv_in, reduction = count(unet, "conv_in"), count(unet, "vae_reduction")
    assert (new_conv_in, reduction) == (921_920, 936_008)
    assert count(unet, lora=False) - new_conv_in - reduction + base["conv_in"] == BASE_UNET_TOTAL


def test_state_dict_layout_matches_manifests(sd15_meta, manifests):
    """Exactly the keys, order and shapes of model.safetensors and model_1.safetensors (no saved buffers)."""
    for module, name in ((sd15_meta.codec, "model_1_codec"), (sd15_meta.generator.unet, "model_generator")):
        ours = [[k, list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in module.state_dict().items()]
        assert ours == manifests[name]["keys_in_state_dict_order"], name


def test_vae_sizes(sd15_meta):
    """Spec section 2: SD VAE encoder 34.2 M, decoder 49.5 M (quant convs: 72 + 20 parameters)."""
    ae = sd15_meta.vae.autoencoder
    encoder, decoder = count(ae, "encoder"), count(ae, "decoder")
    assert (encoder, decoder) == (34_163_592, 49_490_179)
    assert (round(encoder / 1e6, 1), round(decoder / 1e6, 1)) == (34.2, 49.5)
    assert (count(ae, "quant_conv"), count(ae, "post_quant_conv")) == (72, 20)
    assert not any(p.requires_grad for p in ae.parameters())


def test_zonly_preset_differs_only_by_z_only():
    base, zonly = load_config("sd15"), load_config("sd15_zonly")
    assert zonly.codec.z_only and not base.codec.z_only
    # same architecture as sd15 in every part; only the training rate point (sd15_q1's lambda) besides
    for part in ("generator", "vae", "tokenizer", "head"):
        assert getattr(zonly, part) == getattr(base, part), part
    assert dataclasses.replace(zonly.codec, z_only=False) == base.codec
    q1 = load_config("sd15_q1")
    # its training freezes the encoder side (train.freeze); nothing else differs from sd15_q1
    assert zonly.train.freeze and all(p.startswith(("codec.enc", "codec.hyper_enc")) for p in zonly.train.freeze)
    assert dataclasses.replace(zonly, name=q1.name, codec=q1.codec, train=q1.train) == q1


def test_zonly_model_has_the_same_layout(sd15_meta):
    with torch.device("meta"):
        zonly = OneDC(load_config("sd15_zonly"))
    shapes = lambda m: [(k, tuple(t.shape)) for k, t in m.state_dict().items()]
    assert shapes(zonly) == shapes(sd15_meta)


# ---------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_release_checkpoint_round_trip_random_weights(manifests, tmp_path):
    """Full-size sd15 with random weights -> model.safetensors + model_1.safetensors laid out as the release ->
    load_release_checkpoint -> compress + decompress of a 128x192 image on CPU.

    Memory: one model (~5.6 GB) at a time. The files are written from the model's own state_dicts, the model is
    freed before the loader builds its own; the loader's peak is its model plus the 3.7 GB generator file.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from onedc_lib.weights import build_model, load_release_checkpoint

    model = build_model("sd15", seed=0)
    probes = {}  # a few written values, to show that the loader really took them from the files
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # peft starts LoRA B at zero, which would hide the LoRA path: small random values instead
        for name, p in model.generator.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
    for module, file, name in ((model.generator.unet, "model.safetensors", "model_generator"),
                               (model.codec, "model_1.safetensors", "model_1_codec")):
        state = module.state_dict()
        expected = manifests[name]
        assert [[k, list(t.shape)] for k, t in state.items()] == [e[:2] for e in expected["keys_in_state_dict_order"]]
        keys = list(state)
        lora_b = [k for k in keys if "lora_B" in k]
        for key in [keys[0], keys[len(keys) // 2], keys[-1]] + lora_b[len(lora_b) // 2:][:1]:
            probes[(name, key)] = state[key].flatten()[:64].clone()
        save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / file,
                  metadata=expected["safetensors_metadata"])
        del state
        with safe_open(tmp_path / file, "pt") as f:
            assert list(f.keys()) == [e[0] for e in expected["keys_in_file_order"]]
            assert f.metadata() == expected["safetensors_metadata"]
        assert (tmp_path / file).stat().st_size == expected["file_size_bytes"]
    assert len(probes) == 7
    del model, module
    gc.collect()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_release_checkpoint(tmp_path)
    assert any("VAE" in str(w.message) for w in caught), [str(w.message) for w in caught]
    for f in ("model.safetensors", "model_1.safetensors"):
        (tmp_path / f).unlink()  # disk back before the long part
    assert loaded.untrained_parts == ("vae",)
    assert not loaded.training
    assert count(loaded.codec) == CODEC_TOTAL and count(loaded.generator.unet) == GENERATOR_TOTAL
    states = {"model_generator": loaded.generator.unet.state_dict(), "model_1_codec": loaded.codec.state_dict()}
    for (name, key), values in probes.items():
        assert torch.equal(states[name][key].flatten()[:64], values), key
    del states

    torch.manual_seed(0)
    x = torch.rand(1, 3, 128, 192)
    compressed = loaded.compress(x)
    assert compressed.container.height == 128 and compressed.container.width == 192
    # the VAE has random weights (no VAE in the release folder): the file says so in its note section
    assert [s.name for s in compressed.container.sections] == ["z", "y", "note"]
    assert b"UNTRAINED" in compressed.container.section("note").payload
    assert compressed.num_bytes > 0 and compressed.bpp > 0
    data = compressed.to_bytes()
    assert len(data) == compressed.num_bytes
    x_hat = loaded.decompress(data)
    assert x_hat.shape == (1, 3, 128, 192) and x_hat.dtype == torch.float32
    assert torch.isfinite(x_hat).all()
    assert 0 <= x_hat.min() and x_hat.max() <= 1
