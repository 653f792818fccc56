"""Fuzz the file readers with atheris: any input must parse or raise BitstreamError, nothing else.

    python benchmarks/fuzz_bitstream.py -runs=100000
    python benchmarks/fuzz_bitstream.py -max_total_time=60 [CORPUS_DIR]

libFuzzer arguments are passed through. Seeds are built in memory and injected by the custom mutator; the
mutator also repairs the CRCs of half of its outputs, since random bytes almost never pass a CRC and the checks
behind it would otherwise stay unexplored. Inputs that parse must be re-written byte for byte (both formats are
canonical) and must be detected as the format they parsed as. libFuzzer prints the number of inputs executed at
the end (`stat::number_of_executed_units`, `Done N runs`).
"""
import random
import sys
import zlib

import atheris
import numpy  # noqa: F401  (imported before instrumentation: instrumenting numpy slows start-up and runs)

with atheris.instrument_imports():
    from onedc_lib import bitstream
    from onedc_lib.bitstream import BitstreamError

MODEL_ID = bytes(range(16))
TABLE_HASH = bytes(range(100, 108))


def _seeds() -> list[bytes]:
    rng = random.Random(0)
    seeds = []
    for height, width, extras in ((64, 64, 0), (120, 180, 1), (1, 700, 2), (513, 65, 0)):
        z = rng.randbytes(bitstream.z_num_bytes(height, width))
        sections = [bitstream.Section("z", z), bitstream.Section("y", rng.randbytes(40), rng.getrandbits(32))]
        sections += [bitstream.Section(f"x{i}", rng.randbytes(i)) for i in range(extras)]
        seeds.append(bitstream.write_container(bitstream.Container(MODEL_ID, TABLE_HASH, height, width,
                                                                   tuple(sections[: 1 + extras]))))
        seeds.append(bitstream.write_release_file(height, width, rng.randbytes(3 * extras), z))
    return seeds


SEEDS = _seeds()


def _fix_crcs(data: bytes) -> bytes:
    """Recompute the payload CRCs and the header CRC of a container-like input (best effort, never raises)."""
    fixed_size = 43  # magic .. section count
    if len(data) < fixed_size or not data.startswith(bitstream.MAGIC):
        return data
    entries, pos = [], fixed_size
    for _ in range(min(data[fixed_size - 1], bitstream.MAX_SECTIONS)):
        if pos + 13 > len(data):
            return data
        entries.append((pos + 9, int.from_bytes(data[pos + 5: pos + 9], "big")))
        pos += 13 + (4 if data[pos + 4] & bitstream.SECTION_HAS_SYMBOLS_CRC else 0)
    if pos + 4 > len(data):
        return data
    out, start = bytearray(data), pos + 4
    for crc_at, length in entries:
        out[crc_at: crc_at + 4] = zlib.crc32(data[start: start + length]).to_bytes(4, "big")
        start += length
    out[pos: pos + 4] = zlib.crc32(out[:pos]).to_bytes(4, "big")
    return bytes(out)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if not data or rng.random() < 0.02:
        data = rng.choice(SEEDS)
    data = atheris.Mutate(data, max_size)
    return _fix_crcs(data) if rng.random() < 0.5 else data


def test_one_input(data: bytes) -> None:
    try:
        container = bitstream.read_container(data)
    except BitstreamError:
        container = None
    else:
        assert bitstream.write_container(container) == data
        try:
            bitstream.read_container(data, MODEL_ID, TABLE_HASH)
        except BitstreamError as e:
            assert "model" in str(e) or "tables" in str(e)
    try:
        release = bitstream.read_release_file(data)
    except BitstreamError:
        release = None
    else:
        assert bitstream.write_release_file(release.height, release.width, release.y_stream,
                                            release.z_bytes) == data
    try:
        fmt = bitstream.detect_format(data)
    except BitstreamError:
        fmt = None
    assert container is None or fmt == "onedc"
    assert release is None or fmt == "release"


def main() -> None:
    argv = sys.argv if any(a.startswith("-print_final_stats") for a in sys.argv) else [*sys.argv,
                                                                                        "-print_final_stats=1"]
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
