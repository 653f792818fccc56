"""The learned codec (spec sections 1-3, 7): g_a, h_enc, FSQ, h_dec, the four-step prior, h_sem and g_s.

One class for every preset: `cfg` sets the widths and whether y is sent at all (`z_only`). Module names and
registration order are the release's, so `Codec(CodecConfig())` loads `model_1.safetensors` with strict=True
and its state_dict lists the keys in the release's order.
"""
import copy
import weakref
from typing import NamedTuple

import torch

from ..config import CodecConfig
from ..entropy.fsq import FSQ
from ..entropy.rate import gaussian_bits
from .analysis import AnalysisTransform
from .hyper import HyperEncoder
from .prior import FourStepPrior, HyperDecoder
from .semantic import SemanticAdaptor
from .synthesis import SynthesisTransform


# codec -> (what its entropy parameters were, its float64 entropy copy); see Codec.float64_entropy
_FLOAT64: "weakref.WeakKeyDictionary[Codec, tuple]" = weakref.WeakKeyDictionary()


class CodecOutput(NamedTuple):
    """The codec's forward: what the generator needs, the rate estimate, and what training needs besides."""

    y_hat: torch.Tensor      # straight-through rounded in training, hard-rounded in eval
    ctrl: torch.Tensor       # g_s output [B, ctrl_ch, H/8, W/8]
    tokens: torch.Tensor     # [B, (H/64)(W/64), semantic_ch], the generator's encoder_hidden_states
    c_map: torch.Tensor      # the same semantics as a map [B, semantic_ch, H/64, W/64] (distillation input)
    z_indices: torch.Tensor  # int32 [B, H/64, W/64]
    bits_y: torch.Tensor     # estimated bits of every y element (zeros for the z-only model)
    y: torch.Tensor
    sem: torch.Tensor
    z: torch.Tensor


class Codec(FourStepPrior):
    """The prior's modules are this module's own top-level children, as in the release checkpoint.

    `forward` is the codec's (x, cond) -> CodecOutput; the prior's own forward stays reachable as
    `FourStepPrior.forward(codec, y, hyper_params)`, and encode_steps / decode_steps are inherited as they are.
    `encoder=False` leaves out g_a and h_enc (a decoder: its state_dict lacks their keys, and g_a's diffusers UNet
    is never built or imported).
    """

    def __init__(self, cfg: CodecConfig, encoder: bool = True):
        super().__init__(cfg.bottleneck_ch)
        # The release registers its transforms first and the prior modules last: re-register them after.
        prior = list(self.named_children())
        for name, _ in prior:
            delattr(self, name)
        self.cfg = cfg
        self.enc = AnalysisTransform(cfg) if encoder else None
        self.dec = SynthesisTransform(cfg)
        self.semantic_adaptor = SemanticAdaptor(cfg)
        self.hyper_enc = HyperEncoder(cfg) if encoder else None
        self.hyper_dec = HyperDecoder(len(cfg.fsq_levels), cfg.bottleneck_ch)
        self.z_vq = FSQ(list(cfg.fsq_levels))
        for name, module in prior:
            self.add_module(name, module)
        self._prior_names = [name for name, _ in prior]

    def entropy_modules(self) -> list[torch.nn.Module]:
        """The modules that compute the entropy parameters; run them in float64 for machine-independent streams."""
        return [self.hyper_dec] + [getattr(self, name) for name in self._prior_names]

    def float64_entropy(self) -> "Codec":
        """This codec with float64 copies of its entropy modules (its other modules shared, not copied): the
        entropy path runs on it without changing this codec's dtypes, which other threads may be using. Kept
        until the entropy parameters change (moved, loaded or trained: new storage or a new tensor version)."""
        modules = self.entropy_modules()
        key = tuple((t.data_ptr(), t._version) for m in modules for t in [*m.parameters(), *m.buffers()])
        cached = _FLOAT64.get(self)
        if cached is not None and cached[0] == key:
            return cached[1]
        entropy = {id(m) for m in modules}
        shared = {id(m): m for m in self.children() if id(m) not in entropy}  # deepcopy's memo: not copied
        codec64 = copy.deepcopy(self, shared)
        for module in codec64.entropy_modules():
            module.to(torch.float64)
        _FLOAT64[self] = (key, codec64)
        return codec64

    # ------------------------------------------------------------------ encoder side
    def analysis(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] padded to multiples of 64, cond the scaled VAE latent at 1/8 -> (y, sem)."""
        return self.enc(x, cond)

    def hyper_analysis(self, y: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        return self.hyper_enc(y, sem)

    def quantize_z(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (z_hat, int32 indices [B, H/64, W/64]); straight-through in training."""
        return self.z_vq(z)

    # ------------------------------------------------------------------ decoder side
    def z_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.z_vq.indices_to_codes(indices)

    def hyper_synthesis(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (entropy parameters at 1/16, z_semantic at 1/64), in the dtype of the entropy modules."""
        return self.hyper_dec(z_hat.to(_dtype(self.hyper_dec)))

    def semantic(self, z_semantic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (c_map, tokens); accepts z_semantic from a float64 entropy path."""
        return self.semantic_adaptor(z_semantic.to(_dtype(self.semantic_adaptor)))

    def synthesis(self, y_hat: torch.Tensor, c_map: torch.Tensor) -> torch.Tensor:
        """-> the ctrl feature [B, ctrl_ch, H/8, W/8]; accepts y_hat from a float64 entropy path."""
        dtype = _dtype(self.dec)
        return self.dec(y_hat.to(dtype), c_map.to(dtype))

    # ------------------------------------------------------------------ training / evaluation
    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> CodecOutput:
        """Eval: hard rounding, as the coder. Training: straight-through y_hat, U(-0.5, 0.5) noise for the rate.

        The z-only model sends no y: y_hat is the prior's predicted mean at every step and costs no bits.
        """
        y, sem = self.analysis(x, cond)
        z = self.hyper_analysis(y, sem)
        z_hat, z_indices = self.quantize_z(z)
        params, z_semantic = self.hyper_synthesis(z_hat)
        if self.cfg.z_only:
            y_hat = self.decode_steps(params, lambda step, scales: torch.zeros_like(scales))
            bits_y = torch.zeros_like(y_hat)
        else:
            prior = super().forward(y, params)
            y_hat = prior.y_hat
            bits_y = gaussian_bits(prior.residual, prior.scales, training=self.training)
        c_map, tokens = self.semantic(z_semantic)
        ctrl = self.synthesis(y_hat, c_map)
        return CodecOutput(y_hat, ctrl, tokens, c_map, z_indices, bits_y, y, sem, z)


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
