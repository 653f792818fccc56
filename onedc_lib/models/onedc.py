"""OneDC: VAE encoder -> learned codec -> one-step generator -> VAE decoder, with real bitstreams.

The entropy-parameter path (h_dec, the four-step prior, scale -> table index) runs in float64 without autocast on
whatever device, so that a file encoded on one machine decodes bit-exactly on another; the symbols CRC in the
container turns any residual mismatch into an error instead of a wrong image.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import bitstream, memory, progress
from ..config import ModelConfig, identity_dict
from ..entropy import release_format
from ..entropy.coder import GaussianCoder
from ..entropy.context import NUM_STEPS
from ..entropy.tables import odc_tables
from ..paths import cached_models_dir, find_model
from .codec import Codec
from .fast import fast_layers
from .text import TextGuidance

PAD = 64  # the codec works on multiples of 64 (z is at 1/64)
UNTRAINED_NOTE = "note"  # section written only by models with untrained parts (random weights)
CAPTION = "cap"  # section of text-guided models: the caption, UTF-8 (it is part of the rate)
TEXT_FIELDS = ("guidance", "text_encoder", "text_dim", "text_max_tokens")
# The largest image compress and decompress take (the container allows 2^28 pixels): memory grows with the pixels
# (benchmarks/memory.py: the default model, about 0.2 GB per megapixel to compress above the loaded model), so this
# is what a machine with 16 GB processes; larger images are refused before any work.
MAX_CODEC_PIXELS = 1 << 26  # 64 MP, e.g. 8192 x 8192
TILE_SYMBOLS = 1 << 18  # odc tiles above this many y symbols, so large images code on several threads


@dataclass(frozen=True)
class CompressedImage:
    """A compressed image: the container plus what it costs. bpp always comes from the serialised bytes."""

    container: bitstream.Container

    @property
    def num_bytes(self) -> int:
        return self.container.num_bytes

    @property
    def bpp(self) -> float:
        return self.container.bpp

    def to_bytes(self) -> bytes:
        return bitstream.write_container(self.container)


@dataclass
class DecodeOptions:
    """How decompress runs the image path (h_sem, g_s, the generator, the VAE decoder). Speed and memory only:
    bitstreams never depend on these, and the entropy path stays float64 without autocast whatever is set.

    channels_last: NHWC activations (oneDNN's and cuDNN's faster convolutions); results differ from NCHW by
    float rounding only. dtype: autocast dtype of the image path; None = bfloat16 on CUDA and on CPUs with bf16
    units (`cpu_has_bf16`: AMX makes Real-ESRGAN x4plus ~4.7x faster than float32), float32 elsewhere (CPUs without
    them are slower in bf16), except that the exported graph, float32 only, runs where it applies (its fast start
    matters more at nano scale); a plain-torch VAE slot beside the graph follows dtype. compile_backend:
    torch.compile the generator and the VAE decoder with this backend on first use (e.g. "inductor"; None =
    eager). vae_tile: see VAE.decode.
    exported: run the generator and the VAE decoder as the model's exported graph (`models/export.py`, no diffusers)
    where it applies (float32, no compile, the latent within one VAE tile); False = always the diffusers modules."""

    channels_last: bool = True
    dtype: torch.dtype | None = None
    compile_backend: str | None = None
    vae_tile: int | None = None  # None: the VAE's decode_tile
    exported: bool = True

    def autocast_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.bfloat16 if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else torch.float32


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 units (AVX512-BF16 or AMX), where bf16 autocast pays on a CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


REFERENCE_DECODING = DecodeOptions(channels_last=False, dtype=torch.float32, exported=False)  # the plain path


@dataclass
class EncodeOptions:
    """How compress runs the analysis networks (the VAE encoder, g_a, h_enc). The default is the exact path
    (float32, NCHW). dtype bfloat16 autocasts them (about twice as fast on CPUs with bf16 units and on GPUs): y and
    z then differ from a float32 encode by rounding, so a few symbols may differ; the file format, its decoding and
    the float64 entropy path do not change. channels_last: NHWC activations."""

    channels_last: bool = False
    dtype: torch.dtype = torch.float32


FAST_ENCODING = EncodeOptions(channels_last=True, dtype=torch.bfloat16)
FAST_DECODING = DecodeOptions(channels_last=True, dtype=torch.bfloat16)  # measured: benchmarks/paper_scale.py


class OneDCOutput(NamedTuple):
    """Training/evaluation forward: reconstruction in [0, 1] and the codec's own output (rate, aux terms)."""

    x_hat: torch.Tensor
    codec: NamedTuple
    bpp_y: torch.Tensor


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD) -> torch.Tensor:
    """Replicate-pad right and bottom, as the release does."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


def model_id_of(config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> bytes:
    """16 bytes of SHA-256 over the decoding config and every tensor of the whole model's state_dict."""
    # Only what decoding computes with: the loss, training and teacher settings do not change a file.
    decoding = identity_dict(config, ("codec", "generator", "vae"))
    if config.codec.guidance == "hyperprior":  # the text fields do not decode anything then:
        for key in TEXT_FIELDS:                 # the ids of hyperprior models stay what they were
            decoding["codec"].pop(key)
    h = hashlib.sha256(json.dumps(decoding, sort_keys=True).encode())
    for name, tensor in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()[:16]


class OneDC(nn.Module):
    """The whole model; `decode_only=True` builds a decoder without g_a, h_enc, the generator and the VAE, whose
    generator and VAE decoder come from an exported graph (`weights.load_model(..., decode_only=True)` attaches it
    and sets the model id from the whole model's tensors) and need neither diffusers nor peft."""

    def __init__(self, config: ModelConfig, decode_only: bool = False):
        super().__init__()
        self.config = config
        self.decode_only = decode_only
        self.codec = Codec(config.codec, encoder=not decode_only)
        if not decode_only:
            from .generator import OneStepGenerator  # diffusers and peft: imported only by models that need them
            from .vae import build_vae

            self.generator = OneStepGenerator(config.generator, config.codec.ctrl_ch)
            self.vae = build_vae(config.vae)
        self.decoder_graph = None  # models/export.DecoderGraph: the generator and VAE decoder without diffusers
        if config.codec.guidance == "text":  # after the release's modules: the hyperprior state_dict is unchanged
            self.text_guidance = TextGuidance(config.codec, config.generator.unet["cross_attention_dim"])
        self.tables = odc_tables()
        self.untrained_parts: tuple[str, ...] = ("codec", "generator", "vae")  # cleared by the weight loaders
        self._model_id: bytes | None = None
        self.decode_options = DecodeOptions()
        self.encode_options = EncodeOptions()
        self._compiled_with: str | None = None
        self.weights_dtype = torch.float32  # of the image networks' convolutions and linear layers (cast_weights)
        self.kept: str | None = None  # "compress" or "decompress": the one direction left (keep_only)

    # ------------------------------------------------------------------ identity
    @property
    def model_id(self) -> bytes:
        """16 bytes of SHA-256 over the decoding config and every tensor: a file names the exact model that wrote it."""
        if self._model_id is None:
            if self.kept is not None:
                raise RuntimeError("keep_only dropped part of this model: its id was the whole model's")
            if self.decode_only:  # its state_dict is part of the model's: the loader sets the id
                raise RuntimeError("a decode-only model has no id until its loader sets it (weights.load_model)")
            self._model_id = model_id_of(self.config, self.state_dict())
        return self._model_id

    def weights_changed(self) -> None:
        """Call after changing weights in place (training, loading) so that the model id is recomputed (and a
        whole model's exported graph, which holds the tensors it was given, is dropped)."""
        self._model_id = None
        if not self.decode_only:
            self.decoder_graph = None

    def load_state_dict(self, *args, **kwargs):
        self.weights_changed()
        return super().load_state_dict(*args, **kwargs)

    def cast_weights(self, dtype: torch.dtype, merge_lora: bool = True) -> "OneDC":
        """Stores the convolution and linear weights of the large image networks (the VAE, the generator, g_a) in
        `dtype`, for a process that runs them only autocast to `dtype` (FAST_ENCODING / FAST_DECODING with bf16):
        autocast computes those layers from their weights cast to its dtype, so with `merge_lora=False` the
        results are the same bits, and the weights take half the memory (sd15: 5.2 -> 2.7 GB; autocast of float32
        weights holds both copies of the trainable ones). `merge_lora` (default) also merges the generator's LoRA
        into its base weights before the cast (models/fast.merge_lora: one convolution per layer instead of three,
        the sd15 generator about a quarter faster), so the results differ from autocast's by bf16 rounding only.
        Norm layers, g_s, h_sem, h_enc and the entropy path keep float32 (files do not change); the model id stays
        the float32 model's. Not undone: the float32 path refuses to run after."""
        _ = self.model_id  # of the float32 tensors, before the cast
        if self.decode_only:  # the exported graph runs float32 only: the diffusers modules, from its tensors
            self.reference_decoder()
            self.decoder_graph = None
        if merge_lora and getattr(self, "generator", None) is not None:
            from .fast import merge_lora as merge

            merge(self.generator, dtype)
        for part in (getattr(self, "vae", None), getattr(self, "generator", None), self.codec.enc):
            for module in part.modules() if part is not None else ():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    module.to(dtype)
        self.weights_dtype = dtype
        memory.trim()  # the float32 copies, freed
        return self

    def keep_only(self, direction: str) -> "OneDC":
        """Drops the networks that `direction` never runs, for a process that only compresses or only decompresses:
        "compress" needs neither the generator, the VAE decoder, g_s nor h_sem (sd15: 1.9 of its 2.8 GB of bf16
        weights, 3.7 of 5.2 GB in float32); "decompress" needs neither g_a, h_enc nor the VAE encoder (0.7 GB in
        bf16). The model id stays the whole model's (taken first); the other direction refuses afterwards. Not
        undone; weights cannot be loaded after."""
        if direction not in ("compress", "decompress"):
            raise ValueError(f"keep_only: 'compress' or 'decompress', not {direction!r}")
        if self.kept not in (None, direction):
            raise ValueError(f"this model kept only what {self.kept} runs: it cannot keep only {direction}")
        _ = self.model_id  # of the whole model
        vae = getattr(self, "vae", None)
        if direction == "compress":
            for name in ("generator", "text_guidance"):
                if hasattr(self, name):
                    delattr(self, name)
            self.decoder_graph = None
            self.codec.dec = self.codec.semantic_adaptor = None
        else:
            self.codec.enc = self.codec.hyper_enc = None
        if vae is not None and hasattr(vae, "drop_part"):
            vae.drop_part("decoder" if direction == "compress" else "encoder")
        self.kept = direction
        memory.trim()
        return self

    def _require(self, direction: str) -> None:
        if self.kept is not None and self.kept != direction:
            raise ValueError(f"this model kept only what {self.kept} runs (keep_only): it cannot {direction}")

    def _check_dtype(self, dtype: torch.dtype) -> None:
        if self.weights_dtype != torch.float32 and dtype != self.weights_dtype:
            raise ValueError(f"this model stores its image networks' weights in {self.weights_dtype} (cast_weights): "
                             f"encode and decode with dtype={self.weights_dtype}, not {dtype}")

    # ------------------------------------------------------------------ the two halves
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """x in [0, 1], padded -> the VAE latent (x scaling factor)."""
        return self.vae.encode(x * 2 - 1)

    @property
    def text_guided(self) -> bool:
        """True when the generator attends to the caption (which the file then carries) instead of h_sem's tokens."""
        return self.config.codec.guidance == "text"

    def guidance(self, tokens: torch.Tensor, captions: list[str] | None) -> torch.Tensor:
        """The generator's cross-attention context: h_sem's tokens (captions unused), or the captions' projected
        text tokens."""
        if not self.text_guided:
            return tokens
        if captions is None or len(captions) != tokens.shape[0]:
            raise ValueError(f"{self.config.name} is text-guided: pass one caption per image "
                             f"({tokens.shape[0]}), got {captions!r}")
        return self.text_guidance(list(captions)).to(tokens.dtype)

    def reconstruct(self, y_hat: torch.Tensor, z_semantic: torch.Tensor, height: int, width: int,
                    captions: list[str] | None = None) -> torch.Tensor:
        """y_hat and z_semantic (and the captions of a text-guided model) -> image in [0, 1], height x width,
        computed as `self.decode_options` say."""
        self._require("decompress")
        options = self.decode_options
        layout = torch.channels_last if options.channels_last else torch.contiguous_format
        dtype = options.autocast_dtype(y_hat.device)
        graph = self.decoder_graph if self._graph_applies(y_hat, dtype) else None
        if graph is not None and graph.vae is None:
            dtype = torch.float32  # a traced generator and VAE: the whole image path in the graph's float32
        self._check_dtype(dtype)
        if graph is None:
            self._compile_decoder(options.compile_backend)
        generator = self.reference_decoder().generator if graph is None else None
        fast = dtype if options.compile_backend is None else torch.float32  # models/fast.py: eager bf16 only
        with (torch.autocast(y_hat.device.type, dtype=dtype, enabled=dtype != torch.float32),
              fast_layers(self.codec.semantic_adaptor, self.codec.dec, generator, dtype=fast)):
            c_map, tokens = self.codec.semantic(z_semantic)
            ctrl = self.codec.synthesis(y_hat, c_map).contiguous(memory_format=layout)
            tokens = self.guidance(tokens, captions)
            progress.done()
            if graph is not None:
                x0 = graph.generate(ctrl, tokens)
                progress.done()
                image = graph.decode(x0.contiguous(memory_format=layout))
            else:
                x0 = generator(ctrl, tokens).x0
                progress.done()
                image = self.vae.decode(x0.contiguous(memory_format=layout), tile=options.vae_tile)
            progress.done()
        return ((image[..., :height, :width].float() + 1) / 2).clamp(0, 1).contiguous()

    def _graph_applies(self, y_hat: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether reconstruct runs the exported graph: it exists and was asked for, without compile on the graph's
        device, float32 (asked for or by default) or a plain VAE beside it (the traced generator runs float32, the
        VAE in `dtype`), and the latent (y_hat is at 1/16, the latent at 1/8) within one VAE decode tile."""
        from .vae import DECODE_TILE, check_tiling

        options = self.decode_options
        tile = options.vae_tile if options.vae_tile is not None else DECODE_TILE
        check_tiling(tile, self.config.vae.attention_window)  # a bad setting fails on either path
        return (self.decoder_graph is not None and options.exported
                and (dtype == torch.float32 or options.dtype is None or self.decoder_graph.vae is not None)
                and options.compile_backend is None and y_hat.device == self.decoder_graph.device
                and 2 * max(y_hat.shape[-2:]) <= tile)

    def reference_decoder(self) -> "OneDC":
        """self, with the diffusers generator and VAE: a decode-only model builds them on first use from the
        tensors its graph holds (large images, other dtypes, `exported=False`)."""
        if self.decode_only and not hasattr(self, "generator"):
            from .generator import OneStepGenerator
            from .vae import build_vae

            generator = OneStepGenerator(self.config.generator, self.config.codec.ctrl_ch)
            vae = build_vae(self.config.vae)
            for prefix, module in (("generator.", generator), ("vae.", vae)):
                module.load_state_dict(self.decoder_graph.tensors(prefix), strict=True)
            self.generator, self.vae = generator.to(self._device).eval(), vae.to(self._device).eval()
        return self

    def _compile_decoder(self, backend: str | None) -> None:
        """torch.compile the generator and the VAE decoder in place (their state_dicts and hooks stay)."""
        if backend is None or backend == self._compiled_with:
            return
        self.reference_decoder()
        self.generator.compile(backend=backend)
        parts = self.vae.decoder_part  # the modules that run: a list holding them is never called itself
        for module in parts if isinstance(parts, nn.ModuleList) else [parts]:
            module.compile(backend=backend)
        self._compiled_with = backend

    def forward(self, x: torch.Tensor, captions: list[str] | None = None) -> OneDCOutput:
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x)
        cond = self.encode_latents(xp)
        out = self.codec(xp * 2 - 1, cond)
        x0 = self.generator(out.ctrl, self.guidance(out.tokens, captions)).x0
        image = self.vae.decode(x0)
        x_hat = ((image[..., :h, :w] + 1) / 2).clamp(0, 1)
        return OneDCOutput(x_hat, out, out.bits_y.sum() / (xp.shape[-2] * xp.shape[-1] * xp.shape[0]))

    # ------------------------------------------------------------------ entropy path
    @contextlib.contextmanager
    def _float64_entropy_path(self):
        """Yields the codec with h_dec and the prior in float64 (Codec.float64_entropy: copies, so the model itself
        never changes and several threads can code with it), autocast off."""
        with torch.autocast(self._device.type, enabled=False):
            yield self.codec.float64_entropy()

    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _tiles(self, n: int) -> int:
        return max(1, min(64, n // TILE_SYMBOLS))

    # ------------------------------------------------------------------ files
    @torch.no_grad()
    def compress(self, x: torch.Tensor, caption: str | None = None) -> CompressedImage:
        """x: float tensor [1, 3, H, W] in [0, 1] -> CompressedImage (our container).

        A text-guided model needs the image's caption and writes it into the file (section `cap`): the decoder
        has no other way to know it, so its bytes count in the bpp. Hyperprior-guided models ignore it."""
        check_image_tensor(x)
        self._require("compress")
        if self.decode_only:
            raise ValueError(f"{self.config.name} was loaded for decoding only (decode_only=True): load it with "
                             "weights.load_model(name) to compress")
        caption = caption if self.text_guided else None
        if self.text_guided and not isinstance(caption, str):
            raise ValueError(f"{self.config.name} is text-guided: pass the image's caption (a str), not {caption!r}")
        h, w = x.shape[-2:]
        progress.plan(3 if self.config.codec.z_only else 3 + NUM_STEPS + 1)  # what _entropy_inputs and rANS do
        z_indices, enc = self._entropy_inputs(x)
        sections = [bitstream.Section("z", release_format.pack_z(z_indices.cpu().numpy()))]
        if enc is not None:
            symbols = np.concatenate([s.cpu().numpy().astype(np.int32).reshape(-1) for s in enc.symbols])
            indexes = np.concatenate([self.tables.scale_to_index(s.cpu()).numpy().reshape(-1) for s in enc.scales])
            segments = [s.numel() for s in enc.symbols]
            stream = GaussianCoder(self.tables).encode(
                symbols, indexes, tiles=self._tiles(len(symbols)), threads=0, segments=segments
            )
            progress.done()
            sections.append(bitstream.Section("y", stream, bitstream.symbols_crc(symbols)))
        if caption is not None:
            sections.append(bitstream.Section(CAPTION, caption.encode("utf-8")))
        if self.untrained_parts:  # so that `onedc info` can say what the file is; trained models add nothing
            note = f"UNTRAINED {self.config.name}: random {', '.join(self.untrained_parts)}"
            sections.append(bitstream.Section(UNTRAINED_NOTE, note.encode()))
        container = bitstream.Container(self.model_id, self.tables.table_hash, h, w, tuple(sections))
        return CompressedImage(container)

    def _entropy_inputs(self, x: torch.Tensor):
        """(z indices, the prior's steps with y's symbols and scales, or None for the z-only model) of an image."""
        bitstream.check_image_size(*x.shape[-2:])
        self._require("compress")
        xp = pad_to_multiple(x.to(self._device, torch.float32))
        options = self.encode_options
        self._check_dtype(options.dtype)
        xp = xp.contiguous(memory_format=torch.channels_last if options.channels_last else torch.contiguous_format)
        with (torch.autocast(self._device.type, dtype=options.dtype, enabled=options.dtype != torch.float32),
              fast_layers(self.codec.enc, self.codec.hyper_enc, dtype=options.dtype)):
            cond = self.encode_latents(xp)
            progress.done()
            y, sem = self.codec.analysis(xp * 2 - 1, cond)
            progress.done()
            z = self.codec.hyper_analysis(y, sem)
            progress.done()
        y, z = y.float(), z.float()
        _, z_indices = self.codec.quantize_z(z)
        if self.config.codec.z_only:
            return z_indices, None
        with self._float64_entropy_path() as codec:
            z_hat = codec.z_from_indices(z_indices).to(torch.float64)
            params, _ = codec.hyper_synthesis(z_hat)
            return z_indices, codec.encode_steps(y.to(torch.float64), params)

    @torch.no_grad()
    def release_bits(self, x: torch.Tensor) -> int:
        """Bits that the released OneDC counts for x (spec section 8: its bpp is these over the original pixels):
        its file, i.e. its 16-byte header, its y stream (its tables, its scale -> index map on the float32 scales,
        its coder) and z; for the z-only model z's 14 bits per block alone (the release writes no file for it)."""
        z_indices, enc = self._entropy_inputs(x)
        if enc is None:
            return release_format.Z_BITS * z_indices.numel()
        symbols = np.concatenate([s.cpu().numpy().reshape(-1) for s in enc.symbols])
        indexes = release_format.release_index(np.concatenate([s.cpu().numpy().reshape(-1) for s in enc.scales]))
        y_stream = release_format.encode_y(symbols, indexes)
        return 8 * (release_format.HEADER.size + len(y_stream) + release_format.z_bytes(z_indices.numel()))

    @torch.no_grad()
    def decompress(self, compressed: CompressedImage | bitstream.Container | bytes) -> torch.Tensor:
        """-> float tensor [1, 3, H, W] in [0, 1]."""
        container = compressed.container if isinstance(compressed, CompressedImage) else compressed
        if isinstance(container, (bytes, bytearray)):
            if bitstream.detect_format(container) == "release":  # models/release.py builds on this module
                raise bitstream.BitstreamError(
                    "a file of the released OneDC (release format, no model id): decode it with "
                    "onedc_lib.models.release.decompress(model, data), or `onedc decompress FILE --model MODEL`")
            container = bitstream.read_container(container)
        self.check_container(container)
        check_codec_size(container.height, container.width, bitstream.BitstreamError)
        hp, wp = container.padded_height, container.padded_width
        z_indices = release_format.unpack_z(container.section("z").payload, (hp // PAD) * (wp // PAD))
        z_indices = torch.from_numpy(z_indices).view(1, hp // PAD, wp // PAD).to(self._device)
        progress.plan(1 + NUM_STEPS + 3)  # h_s, the steps, then reconstruct's g_s, generator and VAE decoder
        with self._float64_entropy_path() as codec:
            z_hat = codec.z_from_indices(z_indices).to(torch.float64)
            params, z_semantic = codec.hyper_synthesis(z_hat)
            progress.done()
            y_hat = codec.decode_steps(params, self._symbol_source(container))
        z_semantic = z_semantic.to(torch.float32)
        memory.trim()  # what the entropy path freed into malloc's heap, before the generator's maps
        captions = [self._caption(container)] if self.text_guided else None
        return self.reconstruct(y_hat.to(torch.float32), z_semantic, container.height, container.width, captions)

    @staticmethod
    def _caption(container: bitstream.Container) -> str:
        try:
            return container.section(CAPTION).payload.decode("utf-8")
        except UnicodeDecodeError:
            raise bitstream.BitstreamError(f"section {CAPTION} is not UTF-8 text: the file is corrupt") from None

    def _symbol_source(self, container: bitstream.Container):
        """decode_fn for the prior: zeros for the z-only model, else the y stream one step at a time."""
        if self.config.codec.z_only:
            return lambda step, scales: torch.zeros_like(scales)
        section = container.section("y")
        with _corrupt_stream_errors(section):
            decoder = GaussianCoder(self.tables).stream_decoder(section.payload, threads=0)
        decoded = []

        def decode_fn(step: int, scales: torch.Tensor) -> torch.Tensor:
            indexes = self.tables.scale_to_index(scales.cpu()).numpy().reshape(-1)
            with _corrupt_stream_errors(section):
                symbols = decoder.decode(indexes)
                decoded.append(symbols)
                if step == NUM_STEPS - 1:
                    decoder.finish()
            if step == NUM_STEPS - 1:
                bitstream.check_symbols(section, np.concatenate(decoded))
            return torch.from_numpy(symbols.astype(np.float64)).view_as(scales).to(scales.device)

        return decode_fn

    def check_container(self, container: bitstream.Container) -> None:
        if container.model_id != self.model_id:
            writer = find_model(container.model_id.hex())
            raise bitstream.BitstreamError(
                f"this file was written by model {container.model_id.hex()} "
                f"({writer or 'not bundled, not in ' + str(cached_models_dir())}) but you are decoding with model "
                f"{self.model_id.hex()} ({self.config.name}); "
                + (f"decode it with {writer}" if writer else "pass the model that wrote it")
            )
        if container.table_hash != self.tables.table_hash:
            raise bitstream.BitstreamError(
                f"this file uses coding tables {container.table_hash.hex()}, this onedc has "
                f"{self.tables.table_hash.hex()}"
            )

    def compress_file(self, image_path, out_path, caption: str | None = None) -> CompressedImage:
        from ..image_io import ImageError, image_size, load_image

        check_codec_size(*image_size(image_path), ImageError, f"{image_path}: ")  # before decoding its pixels
        compressed = self.compress(load_image(image_path).unsqueeze(0), caption)
        bitstream.write_file(out_path, compressed.container)
        return compressed

    def decompress_file(self, in_path, out_path) -> torch.Tensor:
        from ..image_io import save_image

        image = self.decompress(bitstream.read_bytes(in_path))
        save_image(image[0], out_path)
        return image


@contextlib.contextmanager
def _corrupt_stream_errors(section: bitstream.Section):
    """The coder reports a stream it cannot decode as ValueError: re-raise it as the BitstreamError it is."""
    try:
        yield
    except bitstream.BitstreamError:
        raise
    except ValueError as error:
        raise bitstream.BitstreamError(
            f"section {section.name} cannot be decoded ({error}): the file is corrupt, or this decoder does not "
            "reproduce the encoder (different model, tables or platform)"
        ) from None


def check_image_tensor(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a float tensor [1, 3, H, W] in [0, 1], got {shape}")
    if not torch.is_floating_point(x):
        raise ValueError(f"expected a float tensor in [0, 1], got {x.dtype}")
    bitstream.check_image_size(*x.shape[-2:])
    check_codec_size(*x.shape[-2:])
    finite = torch.isfinite(x)
    if not finite.all():
        raise ValueError(f"expected a float tensor in [0, 1], got {int((~finite).sum())} NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        hint = "8-bit values? divide by 255" if low >= 0 else "values in [-1, 1]? use (x + 1) / 2"
        raise ValueError(f"expected a float tensor in [0, 1], got values in [{low:.4g}, {high:.4g}] ({hint})")


def check_codec_size(height: int, width: int, error=ValueError, prefix: str = "") -> None:
    """Refuses, before any work, an image larger than MAX_CODEC_PIXELS."""
    if height * width > MAX_CODEC_PIXELS:
        raise error(f"{prefix}image of {width} x {height} pixels ({height * width / 1e6:.1f} MP) is larger than onedc "
                    f"processes ({MAX_CODEC_PIXELS / 1e6:.1f} MP, e.g. 8192 x 8192): downscale it or cut it into parts")
