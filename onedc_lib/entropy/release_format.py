"""The released OneDC's on-disk formats, bit-exact (spec section 4, compat README 2): its Gaussian tables, its y
stream, its 14-bit z packing and its 16-byte header. Used to read and write files of the release.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from .tables import release_tables

HEADER = struct.Struct(">IIII")  # original height, width, y-stream bytes (incl. flag byte), caption bytes
Z_BITS = 14
BLOCK = 64
SYMBOL_CLAMP = 30000


def gaussian_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantized_cdf int32[256, 103], cdf_length int32[256], offset int32[256]) as the release builds them."""
    tables = release_tables()
    return tables.cdf, tables.cdf_length, tables.offset


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
