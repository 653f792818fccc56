"""What the fast mode (bf16 autocast, FAST_ENCODING / FAST_DECODING) runs differently from the exact path, for speed.

oneDNN's bf16 convolutions (AMX / AVX512-BF16 on CPUs) are fast only on channels_last (NHWC) inputs: on an Intel
Xeon with AMX a 128-channel 3x3 convolution at 256 x 384 takes 0.03 CPU s in bf16 NHWC, 0.31 s in bf16 NCHW and
0.24 s in float32 NCHW. diffusers' transformer blocks end in `.contiguous()`, which turns channels_last maps back
into NCHW, so every later convolution of the generator's UNet (and of g_a's) ran the slow NCHW kernel. And the
generator's LoRA adds two thin convolutions (rank 64) and an addition beside nearly every layer.

`fast_layers(*modules, dtype=...)` is a context within which every 2-d convolution of `modules` takes its input
channels_last (the generator's UNet at 768x512: 10 % less CPU time). Outside the context, with gradients and
under torch.compile the layers run their own forward unchanged: the exact path never changes. The context is per
thread (a ContextVar), so a model may serve an exact and a fast decode at once.

`merge_lora` (OneDC.cast_weights, for a process that runs only the fast mode) merges the generator's LoRA into
its base weights: one convolution instead of three and an addition (merging per call instead costs more than it
saves: 2.9 CPU s of weight arithmetic for sd15's UNet).

`batched_windowed_attention` is the VAE's windowed mid-block attention (vae.windowed_attention) with all windows
of a size in one batch, for the bf16 path: 5x faster on SD's 512-channel latent at 96 x 64 (one small matmul per
window before), the same function up to rounding.
"""
from __future__ import annotations

import contextlib
import contextvars
import types
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

_DTYPE: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar("onedc_fast_layers", default=None)
_INSTALLED = "_onedc_fast_layers"  # attribute marking a module whose layers have the forwards below


@contextlib.contextmanager
def fast_layers(*modules: nn.Module | None, dtype: torch.dtype):
    """Within: the layers of `modules` (None: skipped) run the fast forwards (module docstring) computing in
    `dtype`; float32 changes nothing."""
    if dtype == torch.float32:
        yield
        return
    for module in modules:
        if module is not None and not getattr(module, _INSTALLED, False):
            install(module)
    token = _DTYPE.set(dtype)
    try:
        yield
    finally:
        _DTYPE.reset(token)


def install(module: nn.Module) -> None:
    """Gives the Conv2d layers under `module` a forward that takes its input channels_last inside `fast_layers`
    and is exactly their own forward elsewhere (instance attributes: state_dicts and deepcopy unaffected)."""
    for layer in module.modules():
        if type(layer) is nn.Conv2d and "forward" not in layer.__dict__:  # not one with a forward of its own
            layer.forward = types.MethodType(_conv_forward, layer)
    setattr(module, _INSTALLED, True)


def _active() -> torch.dtype | None:
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    return _DTYPE.get()


def _conv_forward(conv: nn.Conv2d, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if _active() is not None and x.dim() == 4 and not args and not kwargs:
        x = x.contiguous(memory_format=torch.channels_last)
    return type(conv).forward(conv, x, *args, **kwargs)


def merge_lora(module: nn.Module, dtype: torch.dtype) -> int:
    """Merges the plain LoRA adapters under `module` into their base layers' weights, stored in `dtype`
    (W + scaling * B @ A computed in float32 from the stored weights, then cast), and marks them merged (peft's
    flag: the layer then runs its base layer alone). For a process that only infers (OneDC.cast_weights): one
    convolution instead of three and an addition per layer (the sd15 generator at 768x512: 6.4 CPU s against
    8.2 with CL inputs, 1 thread). Layers that `merged_weight` does not merge are left as they are. Returns how
    many layers were merged."""
    from peft.tuners.lora.layer import LoraLayer

    count = 0
    for layer in module.modules():
        if isinstance(layer, LoraLayer) and isinstance(layer.get_base_layer(), (nn.Conv2d, nn.Linear)):
            weight = merged_weight(layer, torch.float32)
            if weight is None:
                continue
            base = layer.get_base_layer()
            base.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
            if base.bias is not None:
                base.bias = nn.Parameter(base.bias.detach().to(dtype), requires_grad=False)
            layer.merged_adapters.extend(a for a in layer.active_adapters if a in layer.lora_A.keys())
            count += 1
    return count


def merged_weight(layer: nn.Module, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The base layer's weight plus its active plain LoRA adapters (scaling * B @ A), in `dtype`; None where the
    layer is not one that this merges exactly (then it runs its own forward)."""
    base = layer.get_base_layer()
    if layer.training or layer.disable_adapters or layer.merged or getattr(layer, "fan_in_fan_out", False):
        return None
    weight = base.weight.to(dtype)
    shape = weight.shape
    weight = weight.flatten(1)
    for name in layer.active_adapters:
        if name not in layer.lora_A.keys():
            continue
        a, b = layer.lora_A[name], layer.lora_B[name]
        if name in getattr(layer, "lora_variant", {}) or b.bias is not None or a.bias is not None:
            return None  # DoRA and other variants, LoRA biases
        if isinstance(base, nn.Conv2d):  # A: the base's kernel, stride and padding; B: 1x1
            if (base.padding_mode != "zeros" or a.stride != base.stride or a.padding != base.padding
                    or a.dilation != base.dilation or a.groups != 1 or base.groups != 1 or b.kernel_size != (1, 1) or b.stride != (1, 1)
                    or a.kernel_size != base.kernel_size):
                return None
        weight = torch.addmm(weight, b.weight.flatten(1).to(dtype), a.weight.flatten(1).to(dtype),
                             alpha=layer.scaling[name])
    return weight.view(shape)


def _bands(size: int, window: int) -> list[tuple[int, int, int]]:
    """[(start, stop, tile)]: the whole windows of one side, then the remainder (vae.windowed_attention's tiles)."""
    whole = size - size % window
    bands = [(0, whole, window)] if whole else []
    if whole < size:
        bands.append((whole, size, size - whole))
    return bands


def batched_windowed_attention(x: torch.Tensor, q_weight: torch.Tensor, q_bias: Optional[torch.Tensor],
                               k_weight: torch.Tensor, k_bias: Optional[torch.Tensor], v_weight: torch.Tensor,
                               v_bias: Optional[torch.Tensor], out_weight: torch.Tensor,
                               out_bias: Optional[torch.Tensor], heads: int, window: int, tile_norm: bool = False,
                               groups: int = 1, norm_weight: Optional[torch.Tensor] = None,
                               norm_bias: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """vae.windowed_attention (same arguments, same tiles: window x window, the edge tiles the remainders) with
    every tile of one size in one batch, read and written in NHWC order (a channels_last map's own). With
    `tile_norm` each tile is group-normalised over its own positions in float32."""
    batch, channels, height, width = x.shape
    out = torch.empty_like(x)
    pixels, out_pixels = x.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)  # views: B, H, W, C
    for top, bottom, tile_h in _bands(height, window):
        for left, right, tile_w in _bands(width, window):
            rows, cols = (bottom - top) // tile_h, (right - left) // tile_w
            seq = (pixels[:, top:bottom, left:right].reshape(batch, rows, tile_h, cols, tile_w, channels)
                   .permute(0, 1, 3, 2, 4, 5).reshape(batch * rows * cols, tile_h * tile_w, channels))
            if tile_norm:
                s = seq.float().unflatten(-1, (groups, channels // groups))
                var, mean = torch.var_mean(s, dim=(1, 3), keepdim=True, correction=0)
                s = ((s - mean) * torch.rsqrt(var + eps)).flatten(2)
                if norm_weight is not None:
                    s = s * norm_weight.float()
                if norm_bias is not None:
                    s = s + norm_bias.float()
                seq = s.to(x.dtype)
            q = F.linear(seq, q_weight, q_bias).unflatten(-1, (heads, -1)).transpose(1, 2)
            k = F.linear(seq, k_weight, k_bias).unflatten(-1, (heads, -1)).transpose(1, 2)
            v = F.linear(seq, v_weight, v_bias).unflatten(-1, (heads, -1)).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
            y = F.linear(y, out_weight, out_bias)  # to_out[1] is dropout: identity at inference
            out_pixels[:, top:bottom, left:right] = (y.reshape(batch, rows, cols, tile_h, tile_w, channels)
                                                     .permute(0, 1, 3, 2, 4, 5)
                                                     .reshape(batch, rows * tile_h, cols * tile_w, channels))
    return out
