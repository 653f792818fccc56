"""The pure-Python reference coder against the release's golden streams, and its own round trips."""
import numpy as np
import pytest

from onedc_lib.entropy import reference
from onedc_lib.entropy.tables import odc_tables, release_tables

CASES = ["small", "escape", "realistic_4x32x32x32", "from_scales", "skip_index"]


@pytest.mark.parametrize("case", CASES)
def test_release_streams_byte_for_byte(compat_dir, case):
    golden = np.load(compat_dir / f"rans_case_{case}.npz")
    symbols = np.clip(golden["symbols"], -30000, 30000)
    stream = reference.release_encode(release_tables(), symbols, golden["indexes"])
    assert stream == golden["stream"].tobytes()
    decoded = reference.release_decode(release_tables(), stream, golden["indexes"])
    assert np.array_equal(decoded, golden["decoded"].reshape(-1))


@pytest.mark.parametrize("tiles", [1, 2, 7])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 257])
def test_odc_round_trip(n, tiles):
    rng = np.random.default_rng(n + 100 * tiles)
    tables = odc_tables()
    indexes = rng.integers(0, 256, n).astype(np.int32)
    symbols = np.rint(rng.normal(size=n) * tables.scale_table[indexes] * 4).astype(np.int32)
    symbols[::11] = rng.integers(-(2**31), 2**31 - 1, len(symbols[::11]))  # escapes of every length
    stream = reference.odc_encode(tables, symbols, indexes, tiles)
    assert np.array_equal(reference.odc_decode(tables, stream, indexes), symbols)


def test_odc_empty_stream_is_one_drained_state():
    assert reference.odc_encode(odc_tables(), [], []) == b"\x01\x80\0\0"  # one state, 2^23 in 3 bytes
    assert reference.odc_encode(odc_tables(), [], [], lanes=4) == b"\x04" + b"\x80\0\0" * 4


@pytest.mark.parametrize("mode", ["release", "odc"])
def test_corruption_is_a_value_error(mode):
    tables = release_tables() if mode == "release" else odc_tables()
    encode, decode = getattr(reference, f"{mode}_encode"), getattr(reference, f"{mode}_decode")
    rng = np.random.default_rng(1)
    indexes = rng.integers(0, 256, 200).astype(np.int32)
    symbols = np.rint(rng.normal(size=200) * tables.scale_table[indexes]).astype(np.int32)
    stream = encode(tables, symbols, indexes)
    for cut in range(len(stream)):
        with pytest.raises(ValueError):
            decode(tables, stream[:cut], indexes)
    with pytest.raises(ValueError):
        decode(tables, stream + b"\0", indexes)
    with pytest.raises(ValueError):
        decode(tables, stream, np.full(200, 256, np.int32))
    for i in range(len(stream)):
        flipped = bytearray(stream)
        flipped[i] ^= 0x5A
        try:
            out = decode(tables, bytes(flipped), indexes)
        except ValueError:
            continue
        assert out.shape == symbols.shape


@pytest.mark.parametrize("tiles", [1, 3])
def test_odc_segments_decode_one_at_a_time(tiles):
    """The four-step prior needs segment k decoded before the indexes of segment k+1 exist."""
    rng = np.random.default_rng(5)
    tables = odc_tables()
    segments = [40, 0, 17, 40]
    indexes = rng.integers(0, 256, sum(segments)).astype(np.int32)
    symbols = np.rint(rng.normal(size=len(indexes)) * tables.scale_table[indexes]).astype(np.int32)
    stream = reference.odc_encode(tables, symbols, indexes, tiles, segments=segments)
    decoder = reference.OdcDecoder(tables, stream)
    start = 0
    for n in segments:
        assert np.array_equal(decoder.decode(indexes[start : start + n]), symbols[start : start + n])
        start += n
    decoder.finish()
    assert np.array_equal(reference.odc_decode(tables, stream, indexes, segments=segments), symbols)
    if tiles == 1:  # with one tile, segments do not change the bytes
        assert stream == reference.odc_encode(tables, symbols, indexes, 1)
