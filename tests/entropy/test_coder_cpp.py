"""The C++ rANS coder (onedc_lib._coder via GaussianCoder): release goldens byte for byte, and equality with the
pure-Python reference coder on random inputs in both modes (escapes, extreme values, tiny streams, tiles,
segments, threads)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onedc_lib import _coder
from onedc_lib.entropy import reference
from onedc_lib.entropy.coder import GaussianCoder, cpp_tables
from onedc_lib.entropy.tables import odc_tables, release_tables

CASES = ["small", "escape", "realistic_4x32x32x32", "from_scales", "skip_index"]
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def golden_tables(compat_dir):
    """The release's tables exactly as stored in the golden file (independent of tables.py)."""
    g = np.load(compat_dir / "gaussian_cdf_tables.npz")
    return _coder.Tables(g["quantized_cdf"], g["cdf_length"], g["offset"])


@pytest.mark.parametrize("case", CASES)
def test_release_streams_byte_for_byte(compat_dir, golden_tables, case):
    golden = np.load(compat_dir / f"rans_case_{case}.npz")
    symbols = np.clip(golden["symbols"].reshape(-1), -30000, 30000).astype(np.int32)
    indexes = golden["indexes"].reshape(-1).astype(np.int32)
    stream = golden["stream"].tobytes()
    assert _coder.release_encode(golden_tables, symbols, indexes) == stream
    assert np.array_equal(_coder.release_decode(golden_tables, stream, indexes), golden["decoded"].reshape(-1))
    coder = GaussianCoder(release_tables())
    assert coder.encode_release(symbols, indexes) == stream
    assert np.array_equal(coder.decode_release(stream, indexes), golden["decoded"].reshape(-1))


def _symbols(draw, tables, n, indexes):
    """Gaussian-ish symbols at 1x/8x the table's scale, with escapes of every length up to the int32 limits."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([1.0, 8.0]))
    symbols = np.rint(rng.normal(size=n) * tables.scale_table[indexes] * spread)
    wild = rng.random(n) < draw(st.sampled_from([0.0, 0.1, 0.5]))
    bits = rng.integers(0, 32, n)
    symbols[wild] = (rng.integers(-(2**31), 2**31, n, dtype=np.int64) >> bits)[wild]
    symbols[rng.random(n) < 0.05] = INT32_MIN
    symbols[rng.random(n) < 0.05] = INT32_MAX
    return np.clip(symbols, INT32_MIN, INT32_MAX).astype(np.int32)


@st.composite
def odc_cases(draw):
    tables = odc_tables()
    n = draw(st.one_of(st.integers(0, 3), st.integers(0, 300)))
    indexes = np.asarray(draw(st.lists(st.integers(0, 255), min_size=n, max_size=n)), dtype=np.int32)
    symbols = _symbols(draw, tables, n, indexes)
    tiles = draw(st.sampled_from([1, 2, 3, 8, 255]))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    segments = np.diff([0, *cuts, n]).tolist()
    threads = draw(st.sampled_from([1, 2, 0]))
    lanes = draw(st.sampled_from([0, 1, 2, 4, 16]))
    return symbols, indexes, tiles, segments, threads, lanes


@SETTINGS
@given(odc_cases())
def test_odc_matches_reference(case):
    symbols, indexes, tiles, segments, threads, lanes = case
    tables = odc_tables()
    coder = GaussianCoder(tables)
    stream = coder.encode(symbols, indexes, tiles=tiles, threads=threads, segments=segments, lanes=lanes)
    assert stream == reference.odc_encode(tables, symbols, indexes, tiles, segments=segments, lanes=lanes)
    for simd in (True, False):
        assert np.array_equal(coder.decode(stream, indexes, threads=threads, segments=segments, simd=simd), symbols)
    assert np.array_equal(reference.odc_decode(tables, stream, indexes, segments=segments), symbols)
    decoder = coder.stream_decoder(stream, threads=threads)
    assert decoder.tiles == tiles
    start = 0
    for n in segments:  # one segment at a time, as the four-step prior decodes
        assert np.array_equal(decoder.decode(indexes[start : start + n]), symbols[start : start + n])
        start += n
    decoder.finish()


@st.composite
def release_cases(draw):
    tables = release_tables()
    n = draw(st.one_of(st.integers(0, 3), st.integers(0, 300)))
    indexes = np.asarray(draw(st.lists(st.integers(-1, 255), min_size=n, max_size=n)), dtype=np.int32)
    symbols = _symbols(draw, tables, n, np.maximum(indexes, 0))
    return np.clip(symbols, -30000, 30000).astype(np.int32), indexes


@SETTINGS
@given(release_cases())
def test_release_matches_reference(case):
    symbols, indexes = case
    tables = release_tables()
    coder = GaussianCoder(tables)
    stream = coder.encode_release(symbols, indexes)
    assert stream == reference.release_encode(tables, symbols, indexes)
    decoded = coder.decode_release(stream, indexes)
    assert np.array_equal(decoded, np.where(indexes == -1, 0, symbols))
    assert np.array_equal(decoded, reference.release_decode(tables, stream, indexes))


def test_release_mode_takes_any_int32_symbol():
    """Without the wrapper's clamp every int32 fits the release's 16 chunks: the C++ coder codes them all."""
    tables = odc_tables()
    symbols = np.array([INT32_MIN, INT32_MAX, 0, -1, 2**30, -(2**30)], dtype=np.int32)
    indexes = np.array([0, 0, 255, 128, 7, 255], dtype=np.int32)
    coder = GaussianCoder(tables)
    stream = coder.encode_release(symbols, indexes)
    assert stream == reference.release_encode(tables, symbols, indexes)
    assert np.array_equal(coder.decode_release(stream, indexes), symbols)


@pytest.mark.parametrize("tiles", [1, 2, 5, 64])
@pytest.mark.parametrize("threads", [1, 2, 0])
def test_large_round_trip_threads_and_tiles(tiles, threads):
    """Big enough for the fast loops' blocks and for buffer growth under heavy escapes; the bytes never depend
    on the thread count."""
    tables = odc_tables()
    rng = np.random.default_rng(tiles)
    n = 40_000
    scales = np.exp(rng.uniform(np.log(0.11), np.log(64), n))
    indexes = tables.scale_to_index(scales)
    symbols = np.rint(rng.laplace(size=n) * scales).astype(np.int32)
    symbols[: n // 3] = rng.integers(INT32_MIN, INT32_MAX, n // 3, dtype=np.int64)  # escapes: buffer growth
    coder = GaussianCoder(tables)
    stream = coder.encode(symbols, indexes, tiles=tiles, threads=threads)
    assert stream == coder.encode(symbols, indexes, tiles=tiles, threads=1)
    assert np.array_equal(coder.decode(stream, indexes, threads=threads), symbols)
    segments = [n // 4, n // 4, 0, n - n // 2]
    stream = coder.encode(symbols, indexes, tiles=tiles, threads=threads, segments=segments)
    decoder = coder.stream_decoder(stream, threads=threads)
    got = [decoder.decode(part) for part in np.split(indexes, np.cumsum(segments)[:-1])]
    decoder.finish()
    assert np.array_equal(np.concatenate(got), symbols)


def test_one_tile_segments_do_not_change_the_bytes():
    tables = odc_tables()
    rng = np.random.default_rng(3)
    indexes = rng.integers(0, 256, 1000).astype(np.int32)
    symbols = np.rint(rng.normal(size=1000) * tables.scale_table[indexes]).astype(np.int32)
    coder = GaussianCoder(tables)
    assert coder.encode(symbols, indexes, segments=[10, 0, 990]) == coder.encode(symbols, indexes)


def test_sizes_and_fixed_cost():
    """One tile is the stream itself: its state count, the drained states (3 bytes each at 2^23, 4 from 2^24) and
    the bytes, so 0-3 likely symbols take at most 8 bytes (a small stream keeps one state); a tiled stream adds 00,
    the count and a length per tile but the last."""
    coder = GaussianCoder()
    assert coder.encode([], []) == b"\x01\x80\x00\x00"
    assert coder.encode([], [], lanes=16) == b"\x10" + b"\x80\x00\x00" * 16
    assert len(coder.encode([], [], tiles=3)) == 2 + 2 * 4 + 3 * 4
    assert GaussianCoder(release_tables()).encode_release([], []) == b"\x01" + (1 << 23).to_bytes(4, "little")
    index = coder.tables.scale_to_index(np.ones(1))[0]  # the benchmark's fixed cost: zeros at s = 1
    sizes = [len(coder.encode(np.zeros(n, np.int32), np.full(n, index, np.int32))) for n in range(4)]
    assert sizes == [4, 5, 5, 5]


def test_lanes_grow_with_the_estimated_size():
    """The coder picks the states per tile from the integer size estimate, exactly as the reference does, and a
    wide tile costs about 0.1% at most (here a 16-state tile against a 1-state one)."""
    tables = odc_tables()
    coder = GaussianCoder(tables)
    rng = np.random.default_rng(5)
    for n, scale in [(2_000, 4.0), (12_000, 16.0), (40_000, 64.0), (80_000, 64.0)]:
        indexes = tables.scale_to_index(np.full(n, scale))
        symbols = np.rint(rng.normal(size=n) * scale).astype(np.int32)
        stream = coder.encode(symbols, indexes)
        assert stream[0] == reference.choose_lanes(tables, indexes)
        if n == 12_000:
            assert stream == reference.odc_encode(tables, symbols, indexes)
    assert stream[0] == 16
    one = coder.encode(symbols, indexes, lanes=1)
    assert len(one) < len(stream) < len(one) * 1.001
    with pytest.raises(ValueError, match="lanes"):
        coder.encode(symbols, indexes, lanes=3)


@pytest.mark.skipif(not _coder.simd_available(), reason="this CPU lacks the vector decoder's AVX-512 F, BW, VL, "
                    "DQ, VBMI and VPOPCNTDQ: simd=True would run the scalar decoder, compared with itself")
@pytest.mark.parametrize("spread", [1.0, 3.0])
def test_vector_decoder_equals_scalar_decoder(spread):
    """The AVX-512 decoder against the scalar one on 16-state streams: mixed tables (lanes
    that need the fallback search), escapes in a step, segments that start inside a step, tiles, and every
    truncation of a stream's tail fails the same way in both."""
    tables = odc_tables()
    coder = GaussianCoder(tables)
    rng = np.random.default_rng(int(spread))
    n = 30_000
    scales = np.exp(rng.uniform(np.log(0.11), np.log(64), n))
    indexes = tables.scale_to_index(scales)
    symbols = np.rint(rng.laplace(size=n) * scales * spread).astype(np.int32)
    symbols[rng.random(n) < 0.002] = INT32_MAX
    segments = [7, 4_000, 3, 0, n - 4_010]
    for tiles in (1, 3):
        stream = coder.encode(symbols, indexes, tiles=tiles, segments=segments, lanes=16)
        for simd in (True, False):
            decoder = coder.stream_decoder(stream, simd=simd)
            got = [decoder.decode(part) for part in np.split(indexes, np.cumsum(segments)[:-1])]
            decoder.finish()
            assert np.array_equal(np.concatenate(got), symbols)
    stream = coder.encode(symbols, indexes, lanes=16)
    for cut in (1, 2, 17, 64, 300):
        errors = []
        for simd in (True, False):
            with pytest.raises(ValueError) as info:
                coder.decode(stream[:-cut], indexes, simd=simd)
            errors.append(str(info.value))
        assert errors[0] == errors[1]


def test_wrapper_conversions():
    coder = GaussianCoder()
    symbols = np.arange(-5, 5, dtype=np.int64).reshape(2, 5)
    indexes = np.full((2, 5), 100, dtype=np.uint8)
    stream = coder.encode(symbols, indexes)
    assert stream == coder.encode(symbols.astype(np.int32).ravel(), indexes.astype(np.int32).ravel())
    assert coder.decode(bytearray(stream), indexes).dtype == np.int32
    assert cpp_tables(odc_tables()) is cpp_tables(odc_tables())  # built once per table set
    assert cpp_tables(odc_tables()).num_tables == 256
