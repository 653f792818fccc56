"""The released OneDC's on-disk formats, bit-exact (spec section 4, compat README 2): its Gaussian tables, its y
stream, its 14-bit z packing and its 16-byte header. Used to read and write files of the release.
"""
from __future__ import annotations

import math
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from .tables import LOG_SCALE_MIN, LOG_SCALE_STEP, NUM_TABLES, release_tables

HEADER = struct.Struct(">IIII")  # original height, width, y-stream bytes (incl. flag byte), caption bytes
Z_BITS = 14
BLOCK = 64
SYMBOL_CLAMP = 30000


def gaussian_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantized_cdf int32[256, 103], cdf_length int32[256], offset int32[256]) as the release builds them."""
    tables = release_tables()
    return tables.cdf, tables.cdf_length, tables.offset


# The index arithmetic as the release computes it (compat README 9.2): the double constants rounded to float32.
LOG_SCALE_MIN_F32 = np.float32(LOG_SCALE_MIN)
LOG_SCALE_STEP_F32 = np.float32(LOG_SCALE_STEP)
# "cpu": the release on a CPU, torch's float32 log (not correctly rounded; its vector path, which every y tensor
# of the release takes, C/4 * H * W being a multiple of 32) and a float32 division. torch's log is MKL's, whose
# code path depends on the CPU: the release's is MKL's vendor-neutral one (MKL_CBWR=COMPATIBLE, what AMD CPUs
# get; Intel CPUs with AVX-512 get a correctly rounded log, 18 thresholds apart), so its thresholds are computed
# once under that setting (`python -m onedc_lib.entropy.release_thresholds`) and shipped in CPU_THRESHOLDS.
# "cuda": the emulation of compat 9.2 for CUDA, where a division by a Python scalar is a multiplication by the
# float32 reciprocal, with a correctly rounded float32 log (CUDA's own logf is not reproduced; bf16 scales, the
# release's default GPU numerics, map alike under either).
ARITHMETIC = ("cpu", "cuda")
VECTOR = 64  # torch's CPU kernels take the scalar path for a tail shorter than two vectors: pad past it
CPU_THRESHOLDS = Path(__file__).with_name("release_cpu_thresholds.npy")


def _release_index_f32(scales: np.ndarray, arithmetic: str) -> np.ndarray:
    """floor(clamp((ln max(s, 1e-5) - ln 0.11) / step, 0, 255)) on float32 scales, in float32."""
    import torch

    s = np.maximum(np.asarray(scales, dtype=np.float32), np.float32(1e-5))
    if arithmetic == "cpu":
        padded = np.concatenate([s, np.ones(-len(s) % VECTOR, dtype=np.float32)])
        log = torch.log(torch.from_numpy(padded)).numpy()[: len(s)]
        t = (log - LOG_SCALE_MIN_F32) / LOG_SCALE_STEP_F32
    else:
        log = np.log(s.astype(np.float64)).astype(np.float32)
        t = (log - LOG_SCALE_MIN_F32) * (np.float32(1) / LOG_SCALE_STEP_F32)
    return np.clip(t, 0, NUM_TABLES - 1).astype(np.int32)


@lru_cache(maxsize=None)
def index_thresholds(arithmetic: str = "cpu") -> np.ndarray:
    """float32 [256]: entry k (k >= 1) is the smallest float32 scale the release maps to index >= k (entry 0 is 0);
    index(s) is the number of thresholds <= s, independent of the log of the machine that uses it."""
    if arithmetic not in ARITHMETIC:
        raise ValueError(f"arithmetic must be one of {ARITHMETIC}, not {arithmetic!r}")
    thresholds = np.load(CPU_THRESHOLDS) if arithmetic == "cpu" else search_thresholds(arithmetic)
    if thresholds.shape != (NUM_TABLES,) or thresholds.dtype != np.float32 or (np.diff(thresholds) <= 0).any():
        raise ValueError(f"{CPU_THRESHOLDS} is not 256 increasing float32 thresholds: damaged")
    thresholds.setflags(write=False)
    return thresholds


def search_thresholds(arithmetic: str) -> np.ndarray:
    """The thresholds of `arithmetic` under this machine's arithmetic: the map is monotone, so a binary search over
    the float32 bit patterns of (0.1, 64.5] finds every threshold at once. For "cpu", only where torch's log is the
    release's (MKL_CBWR=COMPATIBLE set before the process starts)."""
    k = np.arange(1, NUM_TABLES, dtype=np.int64)
    lo = np.full(k.shape, np.float32(0.1).view(np.int32), dtype=np.int64)  # index 0 < k
    hi = np.full(k.shape, np.float32(64.5).view(np.int32), dtype=np.int64)  # index 255 >= k
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        above = _release_index_f32(mid.astype(np.int32).view(np.float32), arithmetic) >= k
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    thresholds = np.zeros(NUM_TABLES, dtype=np.float32)
    thresholds[1:] = hi.astype(np.int32).view(np.float32)
    return thresholds


def release_index(scales, arithmetic: str = "cpu") -> np.ndarray:
    """int32 table index of each scale as the release maps it; float32 or bfloat16 scales (the release's dtypes)
    are exact here, float64 ones are rounded to float32 first. NaN gives 0."""
    s = np.asarray(scales, dtype=np.float32)
    index = np.searchsorted(index_thresholds(arithmetic)[1:], s, side="right").astype(np.int32)
    return np.where(np.isnan(s), 0, index).astype(np.int32)


def encode_y(symbols, indexes) -> bytes:
    """The whole y stream (flag byte included) for symbols in coding order; clamped to +-30000 like the release."""
    from .coder import GaussianCoder

    symbols = np.clip(np.asarray(symbols, dtype=np.int64).reshape(-1), -SYMBOL_CLAMP, SYMBOL_CLAMP)
    return GaussianCoder(release_tables()).encode_release(symbols.astype(np.int32), indexes)


def decode_y(data: bytes, indexes) -> np.ndarray:
    from .coder import GaussianCoder

    return GaussianCoder(release_tables()).decode_release(data, indexes)


def z_count(height: int, width: int) -> int:
    """Number of 64x64 blocks, i.e. of z indices, of an image padded to multiples of 64."""
    return math.ceil(height / BLOCK) * math.ceil(width / BLOCK)


def z_bytes(count: int) -> int:
    return math.ceil(Z_BITS * count / 8)


def pack_z(indices) -> bytes:
    """Raster-ordered 14-bit indices as one big-endian integer; padding bits lead the first byte."""
    indices = np.asarray(indices).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= 1 << Z_BITS):
        raise ValueError(f"z indices must lie in [0, {1 << Z_BITS})")
    value = 0
    for index in indices.tolist():
        value = (value << Z_BITS) | index
    return value.to_bytes(z_bytes(len(indices)), "big")


def unpack_z(data: bytes, count: int) -> np.ndarray:
    data = bytes(data)
    if len(data) != z_bytes(count):
        raise ValueError(f"z stream of {len(data)} bytes, {z_bytes(count)} expected for {count} indices")
    value = int.from_bytes(data, "big")
    if value >> (Z_BITS * count):
        raise ValueError("corrupt z stream: its padding bits are not zero")
    mask = (1 << Z_BITS) - 1
    return np.array([(value >> (Z_BITS * (count - 1 - i))) & mask for i in range(count)], dtype=np.int32)


def write_header(h: int, w: int, y_len: int) -> bytes:
    for name, value in (("height", h), ("width", w), ("y length", y_len)):
        if not 0 <= value < 1 << 32:
            raise ValueError(f"{name} {value} does not fit the release header's uint32")
    return HEADER.pack(h, w, y_len, 0)


def read_header(data: bytes) -> tuple[int, int, int, int]:
    """(h, w, y_len, caption_len) from the first 16 bytes."""
    if len(data) < HEADER.size:
        raise ValueError(f"release header needs {HEADER.size} bytes, got {len(data)}")
    return HEADER.unpack(bytes(data[: HEADER.size]))

