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
    return symbols, indexes, tiles, segments, threads


@SETTINGS
@given(odc_cases())
def test_odc_matches_reference(case):
    symbols, indexes, tiles, segments, threads = case
    tables = odc_tables()
    coder = GaussianCoder(tables)
    stream = coder.encode(symbols, indexes, tiles=tiles, threads=threads, segments=segments)
    assert stream == reference.odc_encode(tables, symbols, indexes, tiles, segments=segments)
    assert np.array_equal(coder.decode(stream, indexes, threads=threads, segments=segments), symbols)
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
    """One tile is the stream itself: the two drained states (3 bytes each at 2^23, 4 from 2^24) and the bytes,
    so 0-3 likely symbols take at most 8 bytes; a tiled stream adds 00, the count and a length per tile but the
    last."""
    coder = GaussianCoder()
    assert coder.encode([], []) == b"\x80\x00\x00" * 2
    assert len(coder.encode([], [], tiles=3)) == 2 + 2 * 4 + 3 * 6
    assert GaussianCoder(release_tables()).encode_release([], []) == b"\x01" + (1 << 23).to_bytes(4, "little")
    index = coder.tables.scale_to_index(np.ones(1))[0]  # the benchmark's fixed cost: zeros at s = 1
    sizes = [len(coder.encode(np.zeros(n, np.int32), np.full(n, index, np.int32))) for n in range(4)]
    assert sizes == [6, 7, 8, 8]


def test_wrapper_conversions():
    coder = GaussianCoder()
    symbols = np.arange(-5, 5, dtype=np.int64).reshape(2, 5)
    indexes = np.full((2, 5), 100, dtype=np.uint8)
    stream = coder.encode(symbols, indexes)
    assert stream == coder.encode(symbols.astype(np.int32).ravel(), indexes.astype(np.int32).ravel())
    assert coder.decode(bytearray(stream), indexes).dtype == np.int32
    assert cpp_tables(odc_tables()) is cpp_tables(odc_tables())  # built once per table set
    assert cpp_tables(odc_tables()).num_tables == 256
