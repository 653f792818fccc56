"""Differential fuzzing of the C++ rANS decoders against the pure-Python reference, with atheris.

    python benchmarks/fuzz_entropy_decoder.py -runs=100000
    python benchmarks/fuzz_entropy_decoder.py -max_total_time=60 [CORPUS_DIR]

libFuzzer arguments are passed through; it prints the number of inputs executed at the end
(`stat::number_of_executed_units`, `Done N runs`).

An input is `config | n | index seed (2 bytes) | segment seed | stream`. The config byte picks the mode (release
or odc), the table set (the release's, ours, or a small set of extreme rows: a 2-bin row, a row of 300 bins of
frequency 1 that forces the decoder's fallback search, a uniform row), the thread count, whether an odc
stream is decoded in one call or segment by segment, and whether the C++ decoder may use its vector code. The indexes are drawn from the seed (about 2% invalid:
-1, -2 or T). The reference decoder (instrumented, so coverage guides the search) and the C++ decoder must both
raise ValueError or both return the same array; any other exception is a finding. An odc stream that decodes
and whose drained initial states are canonical (no leading 00 byte; the decoders accept such states, the
encoder never writes them) and whose tiles have the same state count must also re-encode to the same bytes with
that count (rANS is a bijection there).

The custom mutator starts from valid streams (random symbols with escapes, encoded by the C++ coder with the
same header) so that the search explores the decoders' deep paths, not only their first checks.
"""
import random
import sys

import atheris
import numpy as np

with atheris.instrument_imports():
    from onedc_lib.entropy import reference

from onedc_lib import _coder  # noqa: E402  (compiled: nothing to instrument)
from onedc_lib.entropy.tables import CodingTables, odc_tables, release_tables  # noqa: E402

HEADER = 5


def _extreme_tables() -> CodingTables:
    rows = [[0, 1, 65536], [0, 30000, 35000, 65535, 65536], [0, *range(65236, 65536), 65536],
            list(range(0, 65537, 4096))]
    width = max(map(len, rows))
    cdf = np.zeros((len(rows), width), np.int32)
    for k, row in enumerate(rows):
        cdf[k, : len(row)] = row
    lengths = np.array([len(r) for r in rows], np.int32)
    return CodingTables("extreme", cdf, lengths, np.array([0, -1, -150, -8], np.int32),
                        np.array([0.1, 0.5, 2.0, 4.0]), 0.5)


TABLE_SETS = [release_tables(), odc_tables(), _extreme_tables(), _extreme_tables()]
CPP = [_coder.Tables(t.cdf, t.cdf_length, t.offset) for t in TABLE_SETS]
MAX_SYMBOLS = [64, 64, 160, 160]  # the reference is slow on wide rows


def _parse(data: bytes):
    cfg = data[0]
    mode = "odc" if cfg & 1 else "release"
    which = (cfg >> 1) & 3
    threads = 1 + ((cfg >> 3) & 1)
    incremental = bool(cfg & 0x10)
    simd = not cfg & 0x40
    tables = TABLE_SETS[which]
    n = data[1] % (MAX_SYMBOLS[which] + 1)
    rng = random.Random(data[2] | data[3] << 8)
    count = len(tables.cdf_length)
    bad = [-1, -2, count] if cfg & 0x20 else [-1] if mode == "release" else [0]  # -1: a skip in release mode
    indexes = np.array([rng.randrange(count) if rng.random() > 0.03 else rng.choice(bad) for _ in range(n)],
                       dtype=np.int32)
    seg_rng = random.Random(data[4])
    cuts = sorted(seg_rng.randrange(n + 1) for _ in range(seg_rng.randrange(4)))
    segments = np.diff([0, *cuts, n]).astype(np.int64)
    return mode, which, threads, incremental, simd, indexes, segments


def _reference(mode, tables, stream, indexes, segments):
    try:
        if mode == "release":
            return reference.release_decode(tables, stream, indexes)
        return reference.odc_decode(tables, stream, indexes, segments=segments.tolist())
    except ValueError:
        return None


def _cpp(mode, which, stream, indexes, segments, threads, incremental, simd):
    try:
        if mode == "release":
            return _coder.release_decode(CPP[which], stream, indexes)
        if not incremental:
            return _coder.odc_decode(CPP[which], stream, indexes, threads, segments, simd)
        decoder = _coder.OdcDecoder(CPP[which], stream, threads, simd)
        parts, start = [], 0
        for length in segments.tolist():
            parts.append(decoder.decode(indexes[start : start + length]))
            start += length
        decoder.finish()
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)
    except ValueError:
        return None


def _tile_count(stream: bytes) -> int:
    return 1 if stream[0] else stream[1]


def _canonical_lanes(stream: bytes) -> int | None:
    """The tiles' common state count if every tile's drained states have no leading 00 byte (the decoder accepts
    them, the encoder never writes them), i.e. if a decodable stream must re-encode to itself; else None."""
    tiles = _tile_count(stream)
    pos, lengths = (0, []) if tiles == 1 else (2 + 4 * (tiles - 1), [])
    for t in range(tiles - 1):
        lengths.append(int.from_bytes(stream[2 + 4 * t : 6 + 4 * t], "little"))
    lengths.append(len(stream) - pos - sum(lengths))
    widths = set()
    for length in lengths:
        widths.add(stream[pos])
        at = pos + 1
        for _ in range(stream[pos]):
            if stream[at] == 0:
                return None
            at += 3 if stream[at] >= 0x80 else 4
        pos += length
    return widths.pop() if len(widths) == 1 else None


def test_one_input(data: bytes) -> None:
    if len(data) < HEADER:
        return
    mode, which, threads, incremental, simd, indexes, segments = _parse(data)
    stream = data[HEADER:]
    expected = _reference(mode, TABLE_SETS[which], stream, indexes, segments)
    got = _cpp(mode, which, stream, indexes, segments, threads, incremental, simd)
    if expected is None or got is None:
        assert expected is None and got is None, f"reference {expected}, C++ {got}"
        return
    assert got.dtype == np.int32 and np.array_equal(got, expected), f"reference {expected}, C++ {got}"
    lanes = _canonical_lanes(stream) if mode == "odc" else None
    if lanes is not None:
        again = _coder.odc_encode(CPP[which], got, indexes, _tile_count(stream), threads, segments, lanes)
        assert again == stream, "a decodable odc stream did not re-encode to itself"


def _valid_input(rng: random.Random) -> bytes:
    """A header and a stream that the C++ encoder wrote for random symbols and the header's own indexes."""
    head = bytes([rng.randrange(256) & ~0x20, *(rng.randrange(256) for _ in range(HEADER - 1))])
    mode, which, threads, _, _, indexes, segments = _parse(head)
    tables = TABLE_SETS[which]
    scales = tables.scale_table[np.maximum(indexes, 0)] * rng.choice([1, 3])
    np_rng = np.random.default_rng(rng.randrange(1 << 30))
    symbols = np.rint(np_rng.normal(size=len(indexes)) * scales)
    wild = np_rng.random(len(indexes)) < rng.choice([0.0, 0.05, 0.3])
    symbols[wild] = np_rng.integers(-40000, 40000, len(indexes))[wild] >> np_rng.integers(0, 16, len(indexes))[wild]
    symbols = symbols.astype(np.int32)
    if mode == "release":
        stream = _coder.release_encode(CPP[which], symbols, indexes)
    else:
        stream = _coder.odc_encode(CPP[which], symbols, indexes, rng.choice([1, 1, 2, 5]), threads, segments,
                                   rng.choice([0, 1, 2, 16, 16]))
    return head + stream


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if len(data) < HEADER or rng.random() < 0.05:
        return _valid_input(rng)
    if rng.random() < 0.2:  # a small, targeted corruption of a valid-looking input
        out = bytearray(data)
        for _ in range(rng.randrange(1, 3)):
            op = rng.randrange(3)
            if op == 0 and len(out) > HEADER:
                out[rng.randrange(HEADER, len(out))] ^= 1 << rng.randrange(8)
            elif op == 1 and len(out) > HEADER:
                del out[rng.randrange(HEADER, len(out)):]
            else:
                out += bytes([rng.randrange(256)])
        return bytes(out[:max_size])
    return atheris.Mutate(data, max_size)


def main() -> None:
    argv = sys.argv if any(a.startswith("-print_final_stats") for a in sys.argv) else [*sys.argv,
                                                                                        "-print_final_stats=1"]
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
