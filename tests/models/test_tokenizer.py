"""MaskGIT VQGAN tokenizer: checkpoint layout (manifest), loading, and the tokenisation itself."""
import json

import pytest
import torch
import torch.nn.functional as F

from onedc_lib.config import TokenizerConfig
from onedc_lib.models.tokenizer import MaskGITTokenizer, load_maskgit_checkpoint

TINY = TokenizerConfig(hidden_ch=32, channel_mult=(1, 2), num_res_blocks=1, z_ch=8, codebook_size=16)  # f2


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MaskGITTokenizer(TINY).eval()


def test_names_shapes_and_counts_match_manifest(manifest, compat_dir):
    with torch.device("meta"):
        model = MaskGITTokenizer()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == manifest("maskgit_vqgan_tokenizer", "")
    info = json.loads((compat_dir / "manifest_maskgit_vqgan_tokenizer.json").read_text())
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    assert counts == info["param_counts_top_level"]
    assert sum(counts.values()) == info["param_count_total"] == 54_515_587


@pytest.mark.slow
def test_strict_load_of_full_size_pickle(manifest, tmp_path):
    """A torch pickle holding random values under the manifest's keys loads strictly, nested or bare."""
    generator = torch.Generator().manual_seed(0)
    state_dict = {k: torch.randn(shape, generator=generator) for k, shape in manifest("maskgit_vqgan_tokenizer", "")}
    torch.save(state_dict, tmp_path / "maskgit-vqgan-imagenet-f16-256.bin")
    model = load_maskgit_checkpoint(tmp_path / "maskgit-vqgan-imagenet-f16-256.bin")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    assert not any(p.requires_grad for p in model.parameters())


def test_loader_accepts_nested_state_dict_and_rejects_others(tiny, tmp_path):
    torch.save({"state_dict": tiny.state_dict(), "step": 3}, tmp_path / "nested.bin")
    loaded = load_maskgit_checkpoint(tmp_path / "nested.bin", TINY)
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    torch.save({"weights": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match="quantize.embedding.weight"):
        load_maskgit_checkpoint(tmp_path / "other.bin", TINY)


def test_encode_decode_shapes(tiny):
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        indices, latent = tiny.encode(x)
        image = tiny.decode_indices(indices)
    assert indices.shape == (2, 8, 12) and indices.dtype == torch.int64
    assert latent.shape == (2, 8, 8, 12)
    assert torch.equal(latent, tiny.codebook[indices].permute(0, 3, 1, 2))
    assert image.shape == x.shape and image.min() >= 0 and image.max() <= 1


def test_indices_are_the_nearest_codebook_entry(tiny):
    z = torch.randn(2, 8, 5, 7)
    indices = tiny.quantize(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    distance = (flat[:, None, :] - tiny.codebook[None]).square().sum(-1)  # brute force [positions, K]
    chosen = distance.gather(1, indices.reshape(-1, 1)).squeeze(1)
    torch.testing.assert_close(chosen, distance.min(1).values, atol=1e-5, rtol=0)
    assert (indices.reshape(-1) == distance.argmin(1)).float().mean() > 0.99  # only exact near-ties may differ


def test_tokens_for_distillation_are_at_half_the_token_resolution(tiny):
    x = torch.rand(1, 3, 32, 48)
    indices, latent = tiny.tokens_for_distillation(x)
    assert indices.shape == (1, 8, 12) and latent.shape == (1, 8, 8, 12)  # 1/(2 * 2) with the f2 tiny model
    half = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    assert torch.equal(indices, tiny.encode(half)[0])  # the average pool is bilinear 2x downsampling
