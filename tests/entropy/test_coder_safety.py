"""Safety of the C++ coder: corrupt, truncated and padded streams, bad indexes, bad tables and bad arguments
raise ValueError (never crash, never read or write out of bounds); tiny and improbable streams work; the
atheris differential fuzz harness runs clean."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onedc_lib import _coder
from onedc_lib.entropy import reference
from onedc_lib.entropy.coder import GaussianCoder
from onedc_lib.entropy.tables import odc_tables, release_tables

REPO = Path(__file__).resolve().parents[2]
MODES = ["release", "odc"]


def _coder_for(mode):
    return GaussianCoder(release_tables() if mode == "release" else odc_tables())


def _encode(coder, mode, symbols, indexes, tiles=1):
    if mode == "release":
        return coder.encode_release(symbols, indexes)
    return coder.encode(symbols, indexes, tiles=tiles)


def _decode(coder, mode, data, indexes):
    return coder.decode_release(data, indexes) if mode == "release" else coder.decode(data, indexes, threads=2)


def _ref_decode(coder, mode, data, indexes):
    fn = reference.release_decode if mode == "release" else reference.odc_decode
    return fn(coder.tables, data, indexes)


def _sample(mode, n=120, seed=0):
    coder = _coder_for(mode)
    rng = np.random.default_rng(seed)
    indexes = rng.integers(0, 256, n).astype(np.int32)
    symbols = np.rint(rng.normal(size=n) * coder.tables.scale_table[indexes] * 2).astype(np.int32)
    symbols[::17] = rng.integers(-30000, 30000, len(symbols[::17]))  # escapes
    return coder, symbols, indexes


@pytest.mark.parametrize("tiles", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_truncated_and_padded_streams(mode, tiles):
    if mode == "release" and tiles > 1:
        pytest.skip("one stream only")
    coder, symbols, indexes = _sample(mode)
    stream = _encode(coder, mode, symbols, indexes, tiles)
    for cut in range(len(stream)):
        with pytest.raises(ValueError):
            _decode(coder, mode, stream[:cut], indexes)
    for extra in (b"\0", b"\0\0", b"\xff" * 7):
        with pytest.raises(ValueError):
            _decode(coder, mode, stream + extra, indexes)


@pytest.mark.parametrize("tiles", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_flipped_bytes_match_the_reference(mode, tiles):
    """Every single-byte corruption either raises ValueError or (when undetectable) decodes to an array of the
    right length; the C++ decoder and the reference agree on which, and on the values."""
    if mode == "release" and tiles > 1:
        pytest.skip("one stream only")
    coder, symbols, indexes = _sample(mode, n=60, seed=tiles)
    stream = _encode(coder, mode, symbols, indexes, tiles)
    rng = np.random.default_rng(7)
    for i in range(len(stream)):
        bad = bytearray(stream)
        bad[i] ^= int(rng.integers(1, 256))
        try:
            expected = _ref_decode(coder, mode, bytes(bad), indexes)
        except ValueError:
            with pytest.raises(ValueError):
                _decode(coder, mode, bytes(bad), indexes)
            continue
        got = _decode(coder, mode, bytes(bad), indexes)
        assert got.shape == symbols.shape and np.array_equal(got, expected)


@pytest.mark.parametrize("tiles", [1, 2])
def test_low_entropy_tail(tiles):
    """Thousands of nearly free symbols after the last byte of a tile are decoded from the tile's last bytes
    (the decoder's padded copy): round trip, and the reference agrees on cut, padded and flipped endings."""
    coder = GaussianCoder()
    n = 4000
    indexes = np.zeros(n, np.int32)  # the smallest scale: a 0 costs ~1e-4 bits
    symbols = np.zeros(n, np.int32)
    symbols[[5, 1000, n // 2 + 3]] = [1, -1, 2]
    symbols[n - 600] = 40000  # an escape among the free symbols
    stream = coder.encode(symbols, indexes, tiles=tiles)
    assert np.array_equal(coder.decode(stream, indexes), symbols)
    assert np.array_equal(coder.stream_decoder(stream).decode(indexes), symbols)
    for cut in range(max(0, len(stream) - 12), len(stream)):
        with pytest.raises(ValueError):
            coder.decode(stream[:cut], indexes)
    for extra in (b"\0", b"\x80\0"):
        with pytest.raises(ValueError):
            coder.decode(stream + extra, indexes)
    rng = np.random.default_rng(tiles)
    for i in range(len(stream)):
        bad = bytearray(stream)
        bad[i] ^= int(rng.integers(1, 256))
        try:
            expected = reference.odc_decode(coder.tables, bytes(bad), indexes)
        except ValueError:
            with pytest.raises(ValueError):
                coder.decode(bytes(bad), indexes)
            continue
        assert np.array_equal(coder.decode(bytes(bad), indexes), expected)


@pytest.mark.parametrize("mode", MODES)
def test_wrong_indexes_for_a_stream(mode):
    """Decoding with other (valid) indexes or another symbol count is caught or gives the right length."""
    coder, symbols, indexes = _sample(mode, n=80)
    stream = _encode(coder, mode, symbols, indexes)
    for other in (indexes[::-1].copy(), indexes[:40], np.concatenate([indexes, indexes]), indexes[:0]):
        try:
            out = _decode(coder, mode, stream, other)
        except ValueError:
            continue
        assert out.shape == (len(other),)


@pytest.mark.parametrize("mode", MODES)
def test_bad_indexes(mode):
    coder, symbols, indexes = _sample(mode, n=10)
    stream = _encode(coder, mode, symbols, indexes)
    bad_values = [256, 1000, -2, -(2**31), 2**31 - 1] + ([] if mode == "release" else [-1])
    for bad in bad_values:
        broken = indexes.copy()
        broken[3] = bad
        with pytest.raises(ValueError, match="index"):
            _encode(coder, mode, symbols, broken)
        with pytest.raises(ValueError, match="index"):
            _decode(coder, mode, stream, broken)
    with pytest.raises(ValueError, match="differ in length|symbols but"):
        _encode(coder, mode, symbols, indexes[:-1])


def test_release_skip_index_and_flag_byte():
    coder = GaussianCoder(release_tables())
    stream = coder.encode_release([5, 7, -3], [-1, 100, -1])
    assert np.array_equal(coder.decode_release(stream, [-1, 100, -1]), [0, 7, 0])
    for flag in (0x00, 0x02, 0x81, 0xFF):
        with pytest.raises(ValueError, match="flag"):
            coder.decode_release(bytes([flag]) + stream[1:], [-1, 100, -1])
    with pytest.raises(ValueError):
        coder.decode_release(b"", [])


def test_odc_header_corruption():
    """Tiled streams: 00, the tile count (2..255), the lengths of all tiles but the last."""
    coder = GaussianCoder()
    stream = coder.encode(np.arange(40), np.full(40, 200), tiles=3)
    indexes = np.full(40, 200)
    assert stream[:2] == b"\0\x03"
    for tiles in (0, 1):
        with pytest.raises(ValueError, match="2 to 255 tiles"):
            coder.decode(stream[:1] + bytes([tiles]) + stream[2:], indexes)
    with pytest.raises(ValueError, match="truncated tile table"):
        coder.decode(b"\0", indexes)
    for tiles in (2, 4, 255):  # a different tile count misreads the table
        with pytest.raises(ValueError):
            coder.decode(stream[:1] + bytes([tiles]) + stream[2:], indexes)
    for length in (0, 2, 2**32 - 1):  # tile 0 length: too short for its states, past the end
        bad = stream[:2] + length.to_bytes(4, "little") + stream[6:]
        with pytest.raises(ValueError, match="initial states|past the end"):
            coder.decode(bad, indexes)
    first = int.from_bytes(stream[2:6], "little")
    for length in (first - 1, first + 1):  # a tile boundary one byte off misplaces the tiles
        bad = stream[:2] + length.to_bytes(4, "little") + stream[6:]
        with pytest.raises(ValueError):
            coder.decode(bad, indexes)


def test_odc_initial_states_are_drained():
    """A tile starts with its state count W (1, 2, 4, 8 or 16), then its states, read as the decoder renormalises
    (x = x << 8 | byte from 0 while x < 2^23), so they always start in [2^23, 2^31): 3 bytes below 2^24, else 4.
    Both decoders read them alike. Tile lengths need not be even."""
    coder = GaussianCoder()
    decoders = (coder.decode, lambda data, idx: reference.odc_decode(coder.tables, data, idx))
    indexes = np.full(40, 200)
    stream = coder.encode(np.arange(40) - 20, indexes)
    for decode in decoders:
        for cut in range(5):  # inside the count or the states
            with pytest.raises(ValueError):
                decode(stream[:cut], indexes)
        assert decode(b"\x01\x80\0\0", []).size == 0  # one state, 2^23: the empty stream
        assert decode(b"\x02" + b"\x80\0\0" * 2, []).size == 0
        for states in (b"\x01\x80\0\x01", b"\x01\x7f\xff\xff\xff", b"\x02\x80\0\0\x80\0\x01"):
            with pytest.raises(ValueError):  # states that are not 2^23 at the end
                decode(states, [])
        for width in (3, 5, 17, 32, 128, 255):
            with pytest.raises(ValueError, match="states"):
                decode(bytes([width]) + b"\x80\0\0" * width, [])
    odd = [len(coder.encode([s], [100])) for s in range(-8, 9)]
    assert any(n % 2 for n in odd)
    for s in range(-8, 9):
        assert coder.decode(coder.encode([s], [100]), [100]).tolist() == [s]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_tiny_and_improbable_streams(mode, n):
    """The official coder writes out of its buffer on tiny or improbable streams: ours sizes its buffer from a
    proven bound. Here: 0-3 symbols, each the least likely (a frequency-1 bin or a maximal escape)."""
    coder = _coder_for(mode)
    tables = coder.tables
    for index in (0, 255):
        row = tables.cdf[index, : tables.cdf_length[index]]
        rare = int(np.argmin(np.diff(row)[:-1])) + int(tables.offset[index])  # least likely in-range bin
        limit = 30000 if mode == "release" else 2**31 - 1
        for value in (rare, limit, -limit - (mode == "odc")):
            symbols = np.full(n, value, dtype=np.int32)
            indexes = np.full(n, index, dtype=np.int32)
            stream = _encode(coder, mode, symbols, indexes)
            assert np.array_equal(_decode(coder, mode, stream, indexes), symbols)


def test_crafted_out_of_int32_escape_is_rejected():
    """Escape codes are self-delimiting up to 2^64; values outside int32 must be rejected, not wrapped."""
    tables = odc_tables()
    cdf, m = tables.cdf[0], int(tables.cdf_length[0]) - 2
    esc = (int(cdf[m]), int(cdf[m + 1] - cdf[m]))

    def raw(value, bits):
        return value << (16 - bits), 1 << (16 - bits)

    for nb_minus_1, fields in ((31, [raw(0xFFFF, 16), raw(0x7FFF, 15)]),  # r = 2^32 - 2: 2^31 + c, too large
                               (32, [raw(0, 16), raw(0, 16)]),             # r = 2^32 - 1: -2^31 - c, too small
                               (40, [raw(0, 16), raw(0, 16), raw(0, 8)]),  # 41-bit q: far outside
                               (63, [raw(0, 16)] * 3 + [raw(0, 15)])):    # longest the 6-bit field allows
        tile = reference.odc_tile([[esc, raw(nb_minus_1, 6), *fields]], 1)
        with pytest.raises(ValueError):
            reference.odc_decode(tables, tile, [0])
        with pytest.raises(ValueError, match="int32|truncated|corrupt"):
            GaussianCoder(tables).decode(tile, [0])


def _tables(cdf, lengths=None, offset=None):
    cdf = np.asarray(cdf, dtype=np.int32)
    if cdf.ndim == 1:
        cdf = cdf[None]
    lengths = np.full(len(cdf), cdf.shape[1], np.int32) if lengths is None else np.asarray(lengths, np.int32)
    offset = np.zeros(len(cdf), np.int32) if offset is None else np.asarray(offset, np.int32)
    return _coder.Tables(cdf, lengths, offset)


def test_bad_tables():
    good = [0, 100, 65000, 65536]
    assert _tables(good).num_tables == 1
    for cdf, lengths, offset, match in (
        ([1, 100, 65000, 65536], None, None, "start at 0"),
        ([0, 100, 65000, 65535], None, None, "end at 65536"),
        ([0, 100, 100, 65536], None, None, "strictly increasing"),
        ([0, 70000, 60000, 65536], None, None, "strictly increasing"),
        ([0, 65536, 0, 0], [2], None, "cdf_length"),
        (good, [5], None, "cdf_length"),
        (good, [-1], None, "cdf_length"),
        (good, None, [2**31 - 1], "offset"),
    ):
        with pytest.raises(ValueError, match=match):
            _tables(cdf, lengths, offset)
    with pytest.raises(ValueError):
        _coder.Tables(np.zeros((0, 4), np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    with pytest.raises(ValueError):
        _coder.Tables(np.array([good, good], np.int32), np.array([4], np.int32), np.zeros(2, np.int32))
    with pytest.raises(ValueError):
        _coder.Tables(np.array(good, np.int32), np.array([4], np.int32), np.zeros(1, np.int32))
    with pytest.raises(TypeError):
        _coder.Tables(np.array([good], np.float64), np.array([4], np.int32), np.zeros(1, np.int32))


def test_extreme_tables_round_trip():
    """Two-bin rows (the only ones where a bin has 65535 counts), freq-1 bins everywhere, 65536 bins."""
    tables = _tables([[0, 1, 65536] + [0] * 65534, [0, 65535, 65536] + [0] * 65534, list(range(65537))],
                     lengths=[3, 3, 65537], offset=[-7, 2**31 - 2, -(2**31)])
    rng = np.random.default_rng(0)
    indexes = rng.integers(0, 3, 3000).astype(np.int32)
    symbols = np.where(indexes == 2, rng.integers(-(2**31), -(2**31) + 65535, 3000),
                       rng.integers(-10, 10, 3000)).astype(np.int32)
    symbols[indexes == 1] = 2**31 - 2
    for tiles in (1, 4):
        stream = _coder.odc_encode(tables, symbols, indexes, tiles)
        assert np.array_equal(_coder.odc_decode(tables, stream, indexes, 2), symbols)
    stream = _coder.release_encode(tables, symbols, indexes)
    assert np.array_equal(_coder.release_decode(tables, stream, indexes), symbols)


def test_bad_arguments():
    t = _coder.Tables(np.array([[0, 100, 65000, 65536]], np.int32), np.array([4], np.int32),
                      np.zeros(1, np.int32))
    one = np.zeros(4, np.int32)
    for tiles in (0, 256, -1):
        with pytest.raises(ValueError, match="tiles"):
            _coder.odc_encode(t, one, one, tiles)
    with pytest.raises(ValueError, match="threads"):
        _coder.odc_encode(t, one, one, 1, -1)
    with pytest.raises(ValueError, match="threads"):
        _coder.odc_decode(t, b"\x01" + bytes(8), one, -3)
    with pytest.raises(ValueError, match="segments"):
        _coder.odc_encode(t, one, one, 1, 1, np.array([1, 2]))
    with pytest.raises(ValueError, match="segment"):
        _coder.odc_encode(t, one, one, 1, 1, np.array([5, -1]))
    with pytest.raises(ValueError, match="1-D"):
        _coder.odc_encode(t, one.reshape(2, 2), one.reshape(2, 2))
    with pytest.raises(ValueError, match="length"):
        _coder.release_encode(t, one, one[:3])
    with pytest.raises(TypeError):
        _coder.odc_encode(t, one.astype(np.float64), one)
    with pytest.raises(TypeError):
        GaussianCoder().encode([0.5], [0])
    with pytest.raises(ValueError, match="int32"):
        GaussianCoder().encode(np.array([2**40]), [0])


def test_stream_decoder_fails_for_good():
    coder = GaussianCoder()
    indexes = np.full(50, 30, np.int32)
    stream = coder.encode(np.arange(50), indexes, tiles=2, segments=[25, 25])
    decoder = coder.stream_decoder(stream[:-2])
    decoder.decode(indexes[:25])
    with pytest.raises(ValueError):
        decoder.decode(indexes[25:])
    with pytest.raises(ValueError, match="failed"):
        decoder.decode(indexes[25:])
    with pytest.raises(ValueError, match="failed"):
        decoder.finish()
    decoder = coder.stream_decoder(stream)
    decoder.decode(indexes[:25])
    with pytest.raises(ValueError, match="final states|unread"):
        decoder.finish()  # half the symbols are still in the stream
    with pytest.raises(ValueError):
        coder.stream_decoder(b"")


def test_fuzz_harness_runs_clean(run_fuzz_harness):
    assert run_fuzz_harness("fuzz_entropy_decoder", 600) == 600


_HUGE_SEGMENTS = """
import numpy as np
from onedc_lib.entropy.coder import GaussianCoder

coder = GaussianCoder()
huge = [2**48] * 65536  # each length allowed; their sum wraps a 64-bit size to 0
empty = np.zeros(0, np.int32)
stream = coder.encode(np.zeros(64, np.int32), np.full(64, 10, np.int32))
for call in (lambda: coder.encode(empty, empty, segments=huge),
             lambda: coder.decode(stream, empty, segments=huge),
             lambda: coder.encode(empty, empty, segments=[2**48, 2**48, -(2**49)]),
             lambda: coder.decode(stream, np.full(64, 10, np.int32), segments=[65, -1])):
    try:
        call()
    except ValueError as e:
        assert "segment" in str(e), e
    else:
        raise AssertionError("accepted segments that do not add up to the symbols")
print("ok")
"""


def test_segments_that_overflow_are_rejected():
    """Segment lengths whose sum wraps around 2^64 (65536 x 2^48 == 0) once passed the check and sent encode and
    decode far past empty arrays (a segmentation fault). Run in a child process: a crash fails this test."""
    result = subprocess.run([sys.executable, "-c", _HUGE_SEGMENTS], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-2000:])
