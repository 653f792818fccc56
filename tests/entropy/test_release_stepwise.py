"""The step-wise release y decoder (cpp_coder/release.h): one decode per prior step, then finish(), which insists
on the coder's final state. Checked against the release's own streams (compat README 2.2)."""
import numpy as np
import pytest

from onedc_lib.entropy.coder import GaussianCoder
from onedc_lib.entropy.tables import release_tables


@pytest.fixture(scope="module")
def realistic(compat_dir):
    return np.load(compat_dir / "rans_case_realistic_4x32x32x32.npz")


def coder():
    return GaussianCoder(release_tables())


def test_four_steps_decode_the_release_stream(realistic):
    stream, indexes = bytes(realistic["stream"]), realistic["indexes"]
    decoder = coder().release_stream_decoder(stream)
    steps = [decoder.decode(part) for part in np.split(indexes, 4)]
    decoder.finish()
    assert np.array_equal(np.concatenate(steps), realistic["decoded"])
    assert np.array_equal(np.concatenate(steps), coder().decode_release(stream, indexes))


@pytest.mark.parametrize("case", ["small", "escape", "skip_index"])
def test_uneven_steps_of_the_other_cases(compat_dir, case):
    golden = np.load(compat_dir / f"rans_case_{case}.npz")
    indexes = golden["indexes"]
    decoder = coder().release_stream_decoder(bytes(golden["stream"]))
    cut = [0, 1, len(indexes) // 3, len(indexes)]
    steps = [decoder.decode(indexes[a:b]) for a, b in zip(cut, cut[1:])]
    decoder.finish()
    assert np.array_equal(np.concatenate(steps), golden["decoded"])


def test_a_stream_that_does_not_end_in_the_final_state_is_an_error(realistic):
    stream, indexes = bytes(realistic["stream"]), realistic["indexes"]
    decoder = coder().release_stream_decoder(stream)
    decoder.decode(indexes[: len(indexes) // 2])  # the first two steps only
    with pytest.raises(ValueError, match="final state"):
        decoder.finish()
    with pytest.raises(ValueError, match="failed earlier"):  # and it stays failed
        decoder.decode(indexes[:4])
    other = np.where(indexes > 100, indexes - 1, indexes)  # the decoder computed other table indexes
    decoder = coder().release_stream_decoder(stream)
    with pytest.raises(ValueError, match="final state|past the end|escape|trailing"):
        for part in np.split(other, 4):
            decoder.decode(part)
        decoder.finish()


def test_damaged_streams(realistic):
    stream, indexes = bytes(realistic["stream"]), realistic["indexes"]
    for data, message in ((b"", "empty"), (b"\x02" + stream[1:], "flag byte"), (stream[:3], "truncated state")):
        with pytest.raises(ValueError, match=message):
            coder().release_stream_decoder(data)
    decoder = coder().release_stream_decoder(stream[:-100])
    with pytest.raises(ValueError, match="past the end"):
        decoder.decode(indexes)
    decoder = coder().release_stream_decoder(stream + b"\x00")
    decoder.decode(indexes)
    with pytest.raises(ValueError, match="1 unread trailing"):
        decoder.finish()
