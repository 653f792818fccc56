"""Files of the released OneDC, read and written as the release computes them (compat README 2.4, 7.5, 9.2).

A release file has no model id, no table hash and no checksum. Its y stream codes the four prior steps in one
rANS stream, and every symbol's table index comes from a scale that the decoder recomputes from the symbols of
the steps before, so a file decodes only where the decoder's scales fall on the same side of every index
threshold as the encoder's. Hence the entropy path (h_dec, the prior, scale -> index) runs here with the
release's numerics, not with the float64 of our own files:

- "float32-cpu": float32 on the CPU without autocast, indexes by the release's CPU arithmetic. The release with
  `use_fp16: false` on a CPU; every compat golden was made so.
- "bf16-cuda": the release's default GPU inference (`use_fp16: true`): h_dec and the prior under CUDA bfloat16
  autocast, so the scales reach the index map as bfloat16. It needs a CUDA device: a CPU's bf16 kernels round
  differently, so without one such files cannot be decoded here.

A file does not say which numerics wrote it. "auto" tries float32-cpu, then bf16-cuda where a CUDA device exists;
a wrong choice desynchronises the stream, which then does not end in the coder's final state (an error, never a
silent wrong image). Even the release is not exact across machines: a scale within float noise of a threshold
(about 1e-5 relative; ~100 of the 131,072 of a 512 x 512 image) can land in the other table on another CPU or
thread count (compat 10.3), so a file decodes exactly only where both sides compute alike.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import torch

from .. import bitstream
from ..entropy import release_format
from ..entropy.coder import GaussianCoder
from ..entropy.context import NUM_STEPS
from ..entropy.tables import release_tables

NUMERICS = ("float32-cpu", "bf16-cuda")
# Relative distance of a scale to an index threshold below which another machine's float32 may pick the other
# table (compat 10.3: thread-count noise on the scales is ~1e-6 relative, the README recommends 1e-5).
BOUNDARY_MARGIN = 1e-5


class ReleaseDecoding(NamedTuple):
    y_hat: torch.Tensor       # float32, on the CPU
    z_semantic: torch.Tensor  # float32, on the CPU
    indexes: list[np.ndarray]  # table indexes of each step, as the decoder computed them
    numerics: str


class ReleaseEncoding(NamedTuple):
    data: bytes                # the whole file
    indexes: list[np.ndarray]  # table indexes of each step
    near_boundary: int         # scales within BOUNDARY_MARGIN (relative) of an index threshold


def _check_numerics(numerics: str) -> None:
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}, not {numerics!r}")
    if numerics == "bf16-cuda" and not torch.cuda.is_available():
        raise bitstream.BitstreamError(
            "numerics bf16-cuda (the release's default GPU inference: the prior under CUDA bfloat16 autocast) "
            "cannot be reproduced on this machine: there is no CUDA device")


@contextlib.contextmanager
def release_numerics(codec, numerics: str):
    """Runs the codec's entropy modules as the release does under `numerics` (device, float32 weights, autocast);
    yields the device. Their device and dtype are restored afterwards."""
    _check_numerics(numerics)
    device = torch.device("cuda" if numerics == "bf16-cuda" else "cpu")
    modules = codec.entropy_modules()
    before = [(p.device, p.dtype) for p in (next(m.parameters()) for m in modules)]
    try:
        for m in modules:
            m.to(device, torch.float32)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=numerics == "bf16-cuda"):
            yield device
    finally:
        for m, (dev, dtype) in zip(modules, before):
            m.to(dev, dtype)


def step_indexes(scales: torch.Tensor, numerics: str) -> np.ndarray:
    """The release's table index of every scale of a step (flat, coding order)."""
    if numerics == "bf16-cuda" and scales.dtype != torch.bfloat16:
        raise RuntimeError(f"bf16-cuda numerics produced {scales.dtype} scales, not bfloat16")
    arithmetic = "cuda" if numerics == "bf16-cuda" else "cpu"
    return release_format.release_index(scales.float().cpu().numpy().reshape(-1), arithmetic)


def _check_codec(model) -> None:
    if model.config.codec.z_only:
        raise bitstream.BitstreamError(f"{model.config.name} is a z-only model: the release writes no files for "
                                       "its z-only model, and its files need a model that codes y")
    if model.text_guided:
        raise bitstream.BitstreamError(f"{model.config.name} is text-guided: release files are hyperprior-guided")


def _z_hat(codec, z_indices: torch.Tensor) -> torch.Tensor:
    """FSQ codes of the indices, on the codec's device (exact values: -1, -0.5, 0, 0.5)."""
    return codec.z_from_indices(z_indices.to(next(codec.parameters()).device))  # g_s may be dropped (keep_only)


@torch.no_grad()
def decode_y(codec, z_indices: torch.Tensor, y_stream: bytes, numerics: str) -> ReleaseDecoding:
    """z indices [1, H/64, W/64] and the y stream -> y_hat step by step, with the release's tables, index
    arithmetic and escape rules; BitstreamError if the stream does not end in the coder's final state."""
    z_hat = _z_hat(codec, z_indices)
    with release_numerics(codec, numerics) as device, _stream_errors():
        decoder = GaussianCoder(release_tables()).release_stream_decoder(y_stream)
        params, z_semantic = codec.hyper_synthesis(z_hat.to(device))
        indexes = []

        def decode_fn(step: int, scales: torch.Tensor) -> torch.Tensor:
            indexes.append(step_indexes(scales, numerics))
            symbols = decoder.decode(indexes[-1])
            if step == NUM_STEPS - 1:
                decoder.finish()
            return torch.from_numpy(symbols).view(scales.shape).to(device)

        y_hat = codec.decode_steps(params, decode_fn)
    return ReleaseDecoding(y_hat.float().cpu(), z_semantic.float().cpu(), indexes, numerics)


@contextlib.contextmanager
def _stream_errors():
    try:
        yield
    except ValueError as error:
        if isinstance(error, bitstream.BitstreamError):
            raise
        raise bitstream.BitstreamError(f"the y stream cannot be decoded ({error})") from None


def decode_latents(model, data: bytes, numerics: str = "auto") -> tuple[bitstream.ReleaseFile, ReleaseDecoding]:
    """A release file -> (its parts, y_hat and z_semantic). numerics "auto": the first of NUMERICS this machine
    has under which the stream ends in the coder's final state."""
    _check_codec(model)
    f = bitstream.read_release_file(data)
    hz, wz = f.padded_height // release_format.BLOCK, f.padded_width // release_format.BLOCK
    z_indices = torch.from_numpy(release_format.unpack_z(f.z_bytes, hz * wz)).view(1, hz, wz)
    if numerics != "auto":
        return f, decode_y(model.codec, z_indices, f.y_stream, numerics)
    tried = []
    for candidate in NUMERICS:
        if candidate == "bf16-cuda" and not torch.cuda.is_available():
            continue
        try:
            return f, decode_y(model.codec, z_indices, f.y_stream, candidate)
        except bitstream.BitstreamError as error:
            tried.append(f"{candidate}: {error}")
    missing = "" if torch.cuda.is_available() else (
        "; a file the release wrote with its default GPU numerics (bf16-cuda, the prior under CUDA bfloat16 "
        "autocast) cannot be decoded on this machine, which has no CUDA device")
    raise bitstream.BitstreamError(
        f"release-format file does not decode with {model.config.name} under any numerics available here ("
        + "; ".join(tried) + f"){missing}. Is it the model that wrote the file?")


@torch.no_grad()
def decompress(model, data: bytes, numerics: str = "auto") -> tuple[torch.Tensor, str]:
    """A release file -> (image [1, 3, H, W] in [0, 1], the numerics it decoded with)."""
    f, dec = decode_latents(model, data, numerics)
    device = next(model.parameters()).device
    image = model.reconstruct(dec.y_hat.to(device), dec.z_semantic.to(device), f.height, f.width)
    return image, dec.numerics


def near_boundary(scales: np.ndarray, margin: float = BOUNDARY_MARGIN) -> int:
    """How many scales lie within `margin` (relative) of an index threshold of the release's map."""
    thresholds = release_format.index_thresholds()[1:].astype(np.float64)
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    i = np.clip(np.searchsorted(thresholds, s), 1, len(thresholds) - 1)
    nearest = np.minimum(np.abs(s - thresholds[i - 1]), np.abs(s - thresholds[i]))
    return int(np.count_nonzero(nearest <= margin * np.abs(s)))


@torch.no_grad()
def encode_y(codec, y: torch.Tensor, z_indices: torch.Tensor, numerics: str = "float32-cpu"):
    """(y stream, per-step indexes, per-step scales as float32 numpy) of y given the z indices, as the release
    encodes them."""
    z_hat = _z_hat(codec, z_indices)
    with release_numerics(codec, numerics) as device:
        params, _ = codec.hyper_synthesis(z_hat.to(device))
        enc = codec.encode_steps(y.to(device, torch.float32), params)
        indexes = [step_indexes(s, numerics) for s in enc.scales]
    symbols = np.concatenate([s.float().cpu().numpy().astype(np.int64).reshape(-1) for s in enc.symbols])
    scales = [s.float().cpu().numpy().reshape(-1) for s in enc.scales]
    return release_format.encode_y(symbols, np.concatenate(indexes)), indexes, scales


def write_file(codec, y: torch.Tensor, z_indices: torch.Tensor, height: int, width: int,
               numerics: str = "float32-cpu") -> ReleaseEncoding:
    """The release file of (y, z indices), after confirming that the release's step-wise decoder, which
    recomputes every scale from the symbols it decoded, computes the very table indexes the stream was written
    with (else BitstreamError). Scales near a threshold are counted, not moved: see the module docstring."""
    stream, indexes, scales = encode_y(codec, y, z_indices, numerics)
    data = bitstream.write_release_file(height, width, stream, release_format.pack_z(z_indices.cpu().numpy()))
    check = decode_y(codec, z_indices, stream, numerics)
    if any(not np.array_equal(a, b) for a, b in zip(check.indexes, indexes)):
        raise bitstream.BitstreamError("the release decoder would compute other table indexes than the encoder "
                                       "used: refusing to write a file that decodes to a wrong image")
    return ReleaseEncoding(data, indexes, near_boundary(np.concatenate(scales)))


@torch.no_grad()
def compress(model, x: torch.Tensor, numerics: str = "float32-cpu") -> ReleaseEncoding:
    """x: float tensor [1, 3, H, W] in [0, 1] -> a file in the release's format (y at the release's numerics)."""
    from .onedc import check_image_tensor, pad_to_multiple

    check_image_tensor(x)
    _check_codec(model)
    if model.decode_only:
        raise ValueError(f"{model.config.name} was loaded for decoding only: load the whole model to compress")
    h, w = x.shape[-2:]
    bitstream.check_image_size(h, w)
    device = next(model.parameters()).device
    xp = pad_to_multiple(x.to(device, torch.float32))
    y, sem = model.codec.analysis(xp * 2 - 1, model.encode_latents(xp))
    _, z_indices = model.codec.quantize_z(model.codec.hyper_analysis(y, sem))
    return write_file(model.codec, y, z_indices, h, w, numerics)
