"""Thin wrapper over the C++ rANS coder (`onedc_lib._coder`, cpp_coder/STREAMS.md): array conversion and checks.

Corrupt streams, bad indexes and mismatched lengths raise ValueError; the C++ side never reads or writes out of
bounds. The coding itself runs with the GIL released.
"""
from __future__ import annotations

import weakref

import numpy as np

from .. import _coder
from .tables import CodingTables, odc_tables

_INT32 = np.iinfo(np.int32)
_cache: "weakref.WeakKeyDictionary[CodingTables, _coder.Tables]" = weakref.WeakKeyDictionary()


def cpp_tables(tables: CodingTables) -> _coder.Tables:
    """The validated C++ table set (with its lookup structures) of `tables`, built once per table set."""
    built = _cache.get(tables)
    if built is None:
        built = _cache[tables] = _coder.Tables(tables.cdf, tables.cdf_length, tables.offset)
    return built


def as_int32(values, name: str) -> np.ndarray:
    """Flat contiguous int32 copy or view of an integer array; ValueError if a value does not fit."""
    a = np.asarray(values)
    if a.size == 0:
        return np.zeros(0, dtype=np.int32)
    if a.dtype.kind not in "biu":
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    a = a.reshape(-1)
    if a.dtype != np.int32:
        if a.min() < _INT32.min or a.max() > _INT32.max:
            raise ValueError(f"{name} must fit in int32")
        a = a.astype(np.int32)
    return np.ascontiguousarray(a)


def _pair(symbols, indexes) -> tuple[np.ndarray, np.ndarray]:
    symbols, indexes = as_int32(symbols, "symbols"), as_int32(indexes, "indexes")
    if symbols.size != indexes.size:
        raise ValueError(f"{symbols.size} symbols but {indexes.size} indexes")
    return symbols, indexes


def _segments(segments):
    return None if segments is None else np.asarray(segments, dtype=np.int64).reshape(-1)


class StreamDecoder:
    """Decodes a stream segment by segment (`decode(indexes)` per segment), then `finish()`: an odc stream
    (_coder.OdcDecoder) or a release y stream (_coder.ReleaseDecoder, one segment per prior step)."""

    def __init__(self, decoder):
        self._decoder = decoder

    @property
    def tiles(self) -> int:
        """Tiles of an odc stream."""
        return self._decoder.tiles

    def decode(self, indexes) -> np.ndarray:
        return self._decoder.decode(as_int32(indexes, "indexes"))

    def finish(self) -> None:
        """Checks that the stream ended exactly where its last symbol did (odc: every tile; release: in the coder's
        final state, every byte read); ValueError otherwise."""
        self._decoder.finish()


class GaussianCoder:
    """rANS coding of integer symbols with per-symbol table indexes, odc mode by default (STREAMS.md)."""

    def __init__(self, tables: CodingTables | None = None):
        self.tables = odc_tables() if tables is None else tables
        self._cpp = cpp_tables(self.tables)

    def encode(self, symbols, indexes, tiles: int = 1, threads: int = 1, segments=None, lanes: int = 0) -> bytes:
        """`lanes`: interleaved states per tile (1, 2, 4, 8, 16), 0 to let the coder pick them by size."""
        symbols, indexes = _pair(symbols, indexes)
        return _coder.odc_encode(self._cpp, symbols, indexes, tiles, threads, _segments(segments), lanes)

    def decode(self, data: bytes, indexes, threads: int = 1, segments=None, simd: bool = True) -> np.ndarray:
        """`simd=False` forces the scalar decoder (the same result; for tests and comparisons)."""
        return _coder.odc_decode(self._cpp, bytes(data), as_int32(indexes, "indexes"), threads, _segments(segments),
                                 simd)

    def stream_decoder(self, data: bytes, threads: int = 1, simd: bool = True) -> StreamDecoder:
        return StreamDecoder(_coder.OdcDecoder(self._cpp, bytes(data), threads, simd))

    def encode_release(self, symbols, indexes) -> bytes:
        """The release's y stream (flag byte included); index -1 skips a symbol. Symbols must be clamped already."""
        symbols, indexes = _pair(symbols, indexes)
        return _coder.release_encode(self._cpp, symbols, indexes)

    def decode_release(self, data: bytes, indexes) -> np.ndarray:
        return _coder.release_decode(self._cpp, bytes(data), as_int32(indexes, "indexes"))

    def release_stream_decoder(self, data: bytes) -> StreamDecoder:
        """The release's y stream one prior step at a time: step k's indexes need step k-1's symbols."""
        return StreamDecoder(_coder.ReleaseDecoder(self._cpp, bytes(data)))
