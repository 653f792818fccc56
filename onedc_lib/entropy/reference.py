"""Slow pure-Python rANS coders, written for clarity: the oracle that the C++ coder must match byte for byte.

Both formats are specified in cpp_coder/STREAMS.md. Every decoding error raises ValueError.
"""
from __future__ import annotations

import bisect
import functools

import numpy as np

from .tables import CodingTables

RELEASE_FLAG = 0x01
RELEASE_LOWER = 1 << 23
RELEASE_MAX_CHUNKS = 16
ODC_LOWER = 1 << 23  # state lower bound; byte-wise renormalisation keeps x in [2^23, 2^31)
ODC_MAX_TILES = 255
ODC_INT32_MIN, ODC_INT32_MAX = -(1 << 31), (1 << 31) - 1


def _flat(symbols, indexes) -> tuple[np.ndarray, np.ndarray]:
    symbols, indexes = np.asarray(symbols).reshape(-1), np.asarray(indexes).reshape(-1)
    if len(symbols) != len(indexes):
        raise ValueError(f"{len(symbols)} symbols but {len(indexes)} indexes")
    return symbols, indexes


def _check_index(tables: CodingTables, k: int) -> None:
    if not 0 <= k < len(tables.cdf_length):
        raise ValueError(f"table index {k} out of range [0, {len(tables.cdf_length)})")


def _table_bin(tables: CodingTables, k: int, value: int) -> tuple[tuple[int, int], int, int]:
    """((start, freq) of the bin coding `value` with table k: its own or the escape bin, v = bin, m = escape)."""
    _check_index(tables, k)
    cdf = tables.cdf[k]
    m = int(tables.cdf_length[k]) - 2
    v = value - int(tables.offset[k])
    b = v if 0 <= v < m else m
    return (int(cdf[b]), int(cdf[b + 1] - cdf[b])), v, m


# ---------------------------------------------------------------- release mode

def release_encode(tables: CodingTables, symbols, indexes) -> bytes:
    """The release's y stream: flag byte, 4 state bytes (little endian), renormalisation bytes."""
    symbols, indexes = _flat(symbols, indexes)
    items = []  # (start, freq) of a table bin, or (bits, None) of a 2-bit bypass chunk
    for value, k in zip(map(int, symbols), map(int, indexes)):
        if k == -1:
            continue
        item, v, m = _table_bin(tables, k, value)
        items.append(item)
        if 0 <= v < m:
            continue
        raw = -2 * v - 1 if v < 0 else 2 * (v - m)
        n = 0
        while raw >> (2 * n):
            n += 1
        if n > RELEASE_MAX_CHUNKS:
            raise ValueError(f"value {value} is too large for the release's escape code")
        items.extend([(3, None)] * (n // 3) + [(n % 3, None)])
        items.extend(((raw >> (2 * i)) & 3, None) for i in range(n))

    x = RELEASE_LOWER
    out = bytearray()
    for start, freq in reversed(items):
        if freq is None:
            while x >= 1 << 29:
                out.append(x & 0xFF)
                x >>= 8
            x = (x << 2) | start
        else:
            while x >= freq << 15:
                out.append(x & 0xFF)
                x >>= 8
            x = ((x // freq) << 16) + (x % freq) + start
    return bytes([RELEASE_FLAG]) + x.to_bytes(4, "little") + bytes(reversed(out))


class _ByteReader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def next(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("corrupt y stream: it ends before the last symbol")
        self.pos += 1
        return self.data[self.pos - 1]


def release_decode(tables: CodingTables, data: bytes, indexes) -> np.ndarray:
    data = bytes(data)
    indexes = np.asarray(indexes).reshape(-1)
    out = np.zeros(len(indexes), dtype=np.int32)
    if len(data) < 5:
        raise ValueError(f"corrupt y stream: {len(data)} bytes, a stream has at least 5")
    if data[0] != RELEASE_FLAG:
        raise ValueError(f"unsupported y stream flag 0x{data[0]:02x} (only 0x01, one sub-stream, is known)")
    x = int.from_bytes(data[1:5], "little")
    reader = _ByteReader(data, 5)

    def renormalise(x: int) -> int:
        while x < RELEASE_LOWER:
            x = (x << 8) | reader.next()
        return x

    def chunk() -> int:
        nonlocal x
        bits = x & 3
        x = renormalise(x >> 2)
        return bits

    for i, k in enumerate(map(int, indexes)):
        if k == -1:
            continue
        _check_index(tables, k)
        length = int(tables.cdf_length[k])
        cdf = tables.cdf[k][:length].tolist()
        m = length - 2
        cum = x & 0xFFFF
        v = bisect.bisect_right(cdf, cum) - 1
        x = renormalise((cdf[v + 1] - cdf[v]) * (x >> 16) + cum - cdf[v])
        if v == m:
            digit = chunk()
            n = digit
            while digit == 3:
                digit = chunk()
                n += digit
                if n > RELEASE_MAX_CHUNKS:
                    raise ValueError("corrupt y stream: escape value longer than 32 bits")
            raw = 0
            for j in range(n):
                raw |= chunk() << (2 * j)
            v = -(raw + 1) // 2 if raw & 1 else m + raw // 2
        value = v + int(tables.offset[k])
        if not ODC_INT32_MIN <= value <= ODC_INT32_MAX:
            raise ValueError("corrupt y stream: decoded value outside int32")
        out[i] = value
    if x != RELEASE_LOWER or reader.pos != len(data):
        raise ValueError("corrupt y stream: it does not end where the last symbol ends")
    return out


# ---------------------------------------------------------------- odc mode

ODC_MAX_LANES = 16


def _bits_q8(freq: int) -> int:
    """-log2(freq / 2^16) in 1/256 bits: bit length plus a linear mantissa (integers only, as in tables.cpp)."""
    e = freq.bit_length() - 1
    return 256 * (16 - e) - (((freq - (1 << e)) << 8) >> e)


@functools.lru_cache(maxsize=None)  # per table set (hashed by identity): not recomputed for every tile
def table_costs(tables: CodingTables) -> np.ndarray:
    """Estimated cost of a symbol per table, in 1/256 bits (the encoder's choice of lanes rests on it)."""
    costs = []
    for row, length in zip(tables.cdf, tables.cdf_length):
        freqs = np.diff(np.asarray(row[: int(length)], dtype=np.int64)).tolist()
        costs.append(sum(f * _bits_q8(f) for f in freqs) >> 16)
    costs = np.asarray(costs, dtype=np.int64)
    costs.setflags(write=False)  # shared by every caller (cached)
    return costs


def choose_lanes(tables: CodingTables, indexes) -> int:
    """States of a tile: the largest power of two <= min(16, estimated bytes / 4096), at least 1."""
    units = int(table_costs(tables)[np.asarray(indexes, dtype=np.int64)].sum()) // (256 * 8 * 4096)
    lanes = 1
    while lanes < ODC_MAX_LANES and 2 * lanes <= units:
        lanes *= 2
    return lanes


def _odc_symbol_items(tables: CodingTables, value: int, k: int) -> list[tuple[int, int]]:
    """(start, freq) of the items of one symbol: its table bin, then the raw fields after an escape."""
    item, v, m = _table_bin(tables, k, value)
    items = [item]
    if 0 <= v < m:
        return items

    def raw(field: int, bits: int) -> None:
        items.append((field << (16 - bits), 1 << (16 - bits)))

    q = (2 * (v - m) if v >= m else -2 * v - 1) + 1
    nb = q.bit_length()
    raw(nb - 1, 6)
    rest, left = q & ((1 << (nb - 1)) - 1), nb - 1
    while left > 0:
        bits = min(16, left)
        raw(rest & ((1 << bits) - 1), bits)
        rest, left = rest >> bits, left - bits
    return items


def odc_tile(symbol_items: list[list[tuple[int, int]]], width: int) -> bytes:
    """One tile from the (start, freq) items of each symbol: symbol g on state g mod width, all its items on that
    state, items encoded in reverse. Tests craft streams with it (e.g. escapes no encoder writes)."""
    states = [ODC_LOWER] * width
    out = bytearray()
    for g in range(len(symbol_items) - 1, -1, -1):
        x = states[g % width]
        for start, freq in reversed(symbol_items[g]):
            while x >= freq << 15:
                out.append(x & 0xFF)
                x >>= 8
            x = ((x // freq) << 16) + (x % freq) + start
        states[g % width] = x
    head = bytes([width]) + b"".join(x.to_bytes(4 if x >= 1 << 24 else 3, "big") for x in states)  # drained
    return head + bytes(reversed(out))


def _odc_encode_tile(tables: CodingTables, symbols, indexes, lanes: int) -> bytes:
    symbols, indexes = list(map(int, symbols)), list(map(int, indexes))
    items = [_odc_symbol_items(tables, value, k) for value, k in zip(symbols, indexes)]
    return odc_tile(items, lanes or choose_lanes(tables, indexes))


def _segment_bounds(segments, total: int) -> list[tuple[int, int]]:
    segments = [total] if segments is None else [int(n) for n in segments]
    if sum(segments) != total or min(segments, default=0) < 0:
        raise ValueError(f"segments {segments} do not add up to {total} symbols")
    ends = np.cumsum([0] + segments)
    return list(zip(ends[:-1].tolist(), ends[1:].tolist()))


def _tile_part(a: int, b: int, t: int, tiles: int) -> tuple[int, int]:
    """Symbols [a, b) of one segment that tile t codes."""
    return a + t * (b - a) // tiles, a + (t + 1) * (b - a) // tiles


def odc_encode(tables: CodingTables, symbols, indexes, tiles: int = 1, segments=None, lanes: int = 0) -> bytes:
    """`lanes`: states per tile (1, 2, 4, 8, 16), or 0 to choose them per tile (choose_lanes)."""
    symbols, indexes = _flat(symbols, indexes)
    if not 1 <= tiles <= ODC_MAX_TILES:
        raise ValueError(f"tiles must be in [1, {ODC_MAX_TILES}], got {tiles}")
    if lanes not in (0, 1, 2, 4, 8, 16):
        raise ValueError(f"lanes must be 0, 1, 2, 4, 8 or 16, got {lanes}")
    bounds = _segment_bounds(segments, len(symbols))
    bodies = []
    for t in range(tiles):
        parts = [_tile_part(a, b, t, tiles) for a, b in bounds]
        pick = np.concatenate([np.arange(a, b) for a, b in parts]) if parts else np.zeros(0, np.int64)
        bodies.append(_odc_encode_tile(tables, symbols[pick], indexes[pick], lanes))
    if tiles == 1:
        return bodies[0]
    lengths = b"".join(len(body).to_bytes(4, "little") for body in bodies[:-1])
    return bytes([0, tiles]) + lengths + b"".join(bodies)


class _TileDecoder:
    """Decoding state of one tile; symbols continue across segments."""

    def __init__(self, data: bytes):
        if not data:
            raise ValueError("corrupt y stream: empty tile")
        self.width = data[0]
        if self.width not in (1, 2, 4, 8, 16):
            raise ValueError(f"corrupt y stream: a tile with {self.width} states")
        self.data, self.pos, self.g = data, 1, 0
        self.states = [self._renormalise(0) for _ in range(self.width)]  # drained: read as renormalisation from 0

    def _renormalise(self, x: int) -> int:
        while x < ODC_LOWER:
            if self.pos >= len(self.data):
                raise ValueError("corrupt y stream: it ends before the last symbol")
            x = (x << 8) | self.data[self.pos]
            self.pos += 1
        return x

    def item(self, cdf: list[int]) -> int:
        """Decode one item whose bins are `cdf` on the current symbol's state; returns the bin."""
        lane = self.g % self.width
        x = self.states[lane]
        cum = x & 0xFFFF
        v = bisect.bisect_right(cdf, cum) - 1
        self.states[lane] = self._renormalise((cdf[v + 1] - cdf[v]) * (x >> 16) + cum - cdf[v])
        return v

    def raw(self, bits: int) -> int:
        return self.item(list(range(0, (1 << 16) + 1, 1 << (16 - bits))))

    def symbols(self, tables: CodingTables, indexes) -> np.ndarray:
        out = np.zeros(len(indexes), dtype=np.int32)
        for i, k in enumerate(map(int, indexes)):
            _check_index(tables, k)
            length = int(tables.cdf_length[k])
            m = length - 2
            v = self.item(tables.cdf[k][:length].tolist())
            if v == m:
                nb = self.raw(6) + 1
                if nb > 34:
                    raise ValueError("corrupt y stream: escape value longer than 33 bits")
                q, got = 1 << (nb - 1), 0
                while got < nb - 1:
                    bits = min(16, nb - 1 - got)
                    q |= self.raw(bits) << got
                    got += bits
                r = q - 1
                v = -(r + 1) // 2 if r & 1 else m + r // 2
            value = v + int(tables.offset[k])
            if not ODC_INT32_MIN <= value <= ODC_INT32_MAX:
                raise ValueError("corrupt y stream: decoded value outside int32")
            out[i] = value
            self.g += 1
        return out

    def finish(self) -> None:
        if self.states != [ODC_LOWER] * self.width or self.pos != len(self.data):
            raise ValueError("corrupt y stream: it does not end where the last symbol ends")


class OdcDecoder:
    """Decodes an odc stream segment by segment: the indexes of a segment may depend on earlier symbols."""

    def __init__(self, tables: CodingTables, data: bytes):
        data = bytes(data)
        if not data:
            raise ValueError("corrupt y stream: empty")
        tiles, head = 1, 0  # one tile: the stream is the tile, whose first byte (its state count) is never 0
        if data[0] == 0:
            if len(data) < 2 or data[1] < 2:
                raise ValueError("corrupt y stream: a tiled stream has 2 to 255 tiles")
            tiles, head = data[1], 2 + 4 * (data[1] - 1)
        if len(data) < head:
            raise ValueError("corrupt y stream: tile table truncated")
        lengths = [int.from_bytes(data[2 + 4 * t : 6 + 4 * t], "little") for t in range(tiles - 1)]
        if sum(lengths) > len(data) - head:
            raise ValueError("corrupt y stream: tile lengths exceed the stream")
        lengths.append(len(data) - head - sum(lengths))
        ends = np.cumsum([head] + lengths).tolist()
        self.tables = tables
        self.tiles = [_TileDecoder(data[a:b]) for a, b in zip(ends[:-1], ends[1:])]

    def decode(self, indexes) -> np.ndarray:
        indexes = np.asarray(indexes).reshape(-1)
        n = len(indexes)
        parts = [_tile_part(0, n, t, len(self.tiles)) for t in range(len(self.tiles))]
        return np.concatenate([tile.symbols(self.tables, indexes[a:b]) for tile, (a, b) in zip(self.tiles, parts)])

    def finish(self) -> None:
        for tile in self.tiles:
            tile.finish()


def odc_decode(tables: CodingTables, data: bytes, indexes, segments=None) -> np.ndarray:
    indexes = np.asarray(indexes).reshape(-1)
    decoder = OdcDecoder(tables, data)
    out = [decoder.decode(indexes[a:b]) for a, b in _segment_bounds(segments, len(indexes))]
    decoder.finish()
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)
