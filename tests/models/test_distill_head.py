"""Distillation head: checkpoint layout (manifest), shifted-window masks, window locality, padding, loss."""
import json

import pytest
import torch
import torch.nn.functional as F

from onedc_lib.config import HeadConfig
from onedc_lib.models.distill_head import DistillationHead, WindowAttention, distillation_loss, shift_masks

TINY = HeadConfig(width=64, num_blocks=2, window=4, num_heads=4, mlp_ch=128, logit_hidden_ch=128)
MANIFEST = "model_2_distillation_head"


def test_names_shapes_and_counts_match_manifest(manifest, compat_dir):
    with torch.device("meta"):
        head = DistillationHead()
    assert [(k, list(v.shape)) for k, v in head.state_dict().items()] == manifest(MANIFEST, "")
    info = json.loads((compat_dir / f"manifest_{MANIFEST}.json").read_text())
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in head.named_children()}
    assert counts == {k: v for k, v in info["param_counts_top_level"].items() if v}  # `softmax` holds nothing
    assert sum(counts.values()) == info["param_count_total"] == 60_315_392


def test_strict_load_of_manifest_keys(manifest):
    generator = torch.Generator().manual_seed(0)
    state_dict = {k: torch.randn(shape, generator=generator) for k, shape in manifest(MANIFEST, "")}
    with torch.device("meta"):
        head = DistillationHead()
    head.load_state_dict(state_dict, strict=True, assign=True)
    assert torch.equal(head.blocks[1].block_sw.attention_block.left_right_mask,
                       state_dict["blocks.1.block_sw.attention_block.left_right_mask"])
    masks = [p for name, p in head.named_parameters() if name.endswith("_mask")]
    assert len(masks) == 6


def test_masks_are_frozen_parameters_in_the_state_dict():
    head = DistillationHead(TINY, in_ch=32, codebook_size=16)
    masks = {name: p for name, p in head.named_parameters() if name.endswith("_mask")}
    assert sorted(masks) == [f"blocks.{i}.block_sw.attention_block.{side}_mask"
                             for i in range(2) for side in ("left_right", "upper_lower")]
    assert not any(p.requires_grad for p in masks.values())
    assert set(masks) <= set(head.state_dict())


@pytest.mark.parametrize("window", [4, 16])
def test_shift_masks_forbid_exactly_the_pairs_that_wrap(window):
    """Derived independently: roll a map of original coordinates and read the bottom-right window."""
    s, size = window // 2, 2 * window
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    rolled_rows = rows.roll((-s, -s), dims=(0, 1))[-window:, -window:].reshape(-1)
    rolled_cols = cols.roll((-s, -s), dims=(0, 1))[-window:, -window:].reshape(-1)
    wrapped_row, wrapped_col = rolled_rows < s, rolled_cols < s  # came around from the top / the left
    upper_lower, left_right = shift_masks(window)
    assert torch.equal(upper_lower == float("-inf"), wrapped_row[:, None] != wrapped_row[None, :])
    assert torch.equal(left_right == float("-inf"), wrapped_col[:, None] != wrapped_col[None, :])
    assert set(upper_lower.unique().tolist()) == {0.0, float("-inf")}
    assert (upper_lower == float("-inf")).sum() == 2 * (window**2 // 2) ** 2


def _changed_region(attention, position, valid=None):
    """Boolean [H, W] map of the outputs that move when the input token at `position` changes."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 16)
    y = x.clone()
    y[(0, *position)] += 1.0
    with torch.no_grad():
        return (attention(x, valid) - attention(y, valid)).abs().amax(-1)[0] > 1e-6


def test_window_attention_stays_inside_its_windows():
    expected = torch.zeros(8, 8, dtype=torch.bool)
    plain = WindowAttention(16, 2, 4, shifted=False, position_bias=True)
    expected[4:, 4:] = True
    assert torch.equal(_changed_region(plain, (5, 6)), expected)

    shifted = WindowAttention(16, 2, 4, shifted=True, position_bias=False)
    expected.zero_()
    expected[2:6, 2:6] = True  # an interior shifted window
    assert torch.equal(_changed_region(shifted, (3, 3)), expected)
    expected.zero_()
    expected[:2, :2] = True  # the corner wrapped into the bottom-right window is masked off from the rest
    assert torch.equal(_changed_region(shifted, (0, 0)), expected)


@pytest.mark.parametrize("shifted", [False, True])
def test_padded_tokens_are_invisible(shifted):
    attention = WindowAttention(16, 2, 4, shifted=shifted, position_bias=not shifted)
    valid = torch.zeros(8, 8, dtype=torch.bool)
    valid[:5, :7] = True
    x = torch.randn(1, 8, 8, 16)
    y = x.clone()
    y[:, ~valid] = torch.randn_like(y[:, ~valid])
    with torch.no_grad():
        out_x, out_y = attention(x, valid), attention(y, valid)
    assert torch.isfinite(out_y).all()
    torch.testing.assert_close(out_x[:, valid], out_y[:, valid])


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5)])
def test_forward_shapes_at_any_size(size):
    head = DistillationHead(TINY, in_ch=32, codebook_size=16)
    with torch.no_grad():
        logits = head(torch.randn(2, 32, *size))
    assert logits.shape == (2, 16, 2 * size[0], 2 * size[1])
    assert torch.isfinite(logits).all()


def test_loss_is_finite_and_reaches_the_input():
    torch.manual_seed(0)
    head = DistillationHead(TINY, in_ch=32, codebook_size=16)
    c = torch.randn(2, 32, 3, 5, requires_grad=True)
    codebook = torch.randn(16, 8)
    indices = torch.randint(0, 16, (2, 6, 10))
    loss = distillation_loss(head(c), indices, codebook[indices].permute(0, 3, 1, 2), codebook)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0


def test_loss_vanishes_for_a_confident_correct_prediction():
    codebook = torch.randn(16, 8)
    indices = torch.randint(0, 16, (1, 3, 4))
    logits = 100.0 * F.one_hot(indices, 16).permute(0, 3, 1, 2).float()
    loss = distillation_loss(logits, indices, codebook[indices].permute(0, 3, 1, 2), codebook)
    assert loss < 1e-6


@pytest.mark.slow
def test_full_size_forward():
    head = DistillationHead()
    with torch.no_grad():
        logits = head(torch.randn(1, 768, 2, 3))
    assert logits.shape == (1, 1024, 4, 6) and torch.isfinite(logits).all()
