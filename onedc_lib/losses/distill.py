"""Semantic distillation of stage I (spec section 5): the head predicts the MaskGIT teacher's tokens from c.

The teacher (frozen MaskGIT VQGAN) tokenises the image downsampled 2x, so its tokens lie at 1/32 of the padded
image, where the head's logits (c at 1/64, upsampled 2x) lie too. The loss is
CE(logits, teacher indices) + 0.01 * MSE(softmax-weighted codebook vector, teacher quantised latent)
(`models.distill_head.distillation_loss`); `stage1_loss` multiplies it by LossConfig.distill_weight (0.001).
Gradients reach the head and, through c_map, h_sem, the FSQ (straight-through), h_enc and g_a; never the
tokenizer (targets under no_grad, codebook detached).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..models.distill_head import DistillationHead, distillation_loss
from ..models.tokenizer import MaskGITTokenizer


class DistillTerms(NamedTuple):
    loss: torch.Tensor  # CE + 0.01 * feature MSE, UNWEIGHTED (stage1_loss applies distill_weight)
    ce: torch.Tensor  # the cross-entropy alone (detached, for logging)
    accuracy: torch.Tensor  # fraction of teacher tokens the head's argmax hits (detached, for logging)


@torch.no_grad()
def teacher_targets(tokenizer: MaskGITTokenizer, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [B, H/32, W/32], quantised latent [B, z_ch, H/32, W/32]) of the padded image x01 in [0, 1]."""
    indices, quantised = tokenizer.tokens_for_distillation(x01)
    return indices, quantised.float()


def distillation_term(head: DistillationHead, tokenizer: MaskGITTokenizer, x01: torch.Tensor,
                      c_map: torch.Tensor, feature_weight: float = 0.01) -> DistillTerms:
    """The distillation loss of one batch.

    x01: the PADDED image in [0, 1] (multiples of 64, as the codec saw it); c_map: CodecOutput.c_map
    [B, semantic_ch, H/64, W/64]. Returns the unweighted loss and logging terms.
    """
    indices, quantised = teacher_targets(tokenizer, x01)
    logits = head(c_map)
    if logits.shape[-2:] != indices.shape[-2:]:
        raise ValueError(f"distillation: head logits at {tuple(logits.shape[-2:])} but teacher tokens at "
                         f"{tuple(indices.shape[-2:])}; pass the padded image (multiples of 64) the codec saw")
    logits = logits.float()
    codebook = tokenizer.codebook.detach().float()
    loss = distillation_loss(logits, indices, quantised, codebook, feature_weight)
    with torch.no_grad():
        ce = F.cross_entropy(logits, indices)
        accuracy = (logits.argmax(1) == indices).float().mean()
    return DistillTerms(loss, ce, accuracy)
