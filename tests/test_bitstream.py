"""The container format (cpp_coder/FORMAT.md), the release's format against its golden files, and the fuzz harness."""
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onedc_lib import bitstream
from onedc_lib.bitstream import BitstreamError, Container, Section
from onedc_lib.entropy import release_format

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
TABLE_HASH = bytes.fromhex("0123456789abcdef")


def sample(height=120, width=180, sections=None) -> Container:
    if sections is None:
        sections = (Section("z", bytes(range(bitstream.z_num_bytes(height, width)))),
                    Section("y", b"\x01y-stream", symbols_crc=0xDEADBEEF), Section("meta", b"extra"))
    return Container(MODEL_ID, TABLE_HASH, height, width, tuple(sections))


def patched(data: bytes, offset: int, new: bytes, header_end: int) -> bytes:
    """data with bytes replaced inside the header and the header CRC (at header_end) recomputed: the corruption
    then reaches the checks behind the CRC."""
    out = bytearray(data)
    out[offset: offset + len(new)] = new
    out[header_end: header_end + 4] = zlib.crc32(out[:header_end]).to_bytes(4, "big")
    return bytes(out)


def error(data: bytes, **kwargs) -> str:
    with pytest.raises(BitstreamError) as e:
        bitstream.read_container(data, **kwargs)
    return str(e.value)


# -- our container -----------------------------------------------------------------------------------------------

def test_layout_and_sizes():
    c = sample()
    data = bitstream.write_container(c)
    assert data.startswith(b"\x89ODC\r\n\x1a\n\x03\x00" + MODEL_ID + TABLE_HASH)
    assert data[34:43] == (120).to_bytes(4, "big") + (180).to_bytes(4, "big") + b"\x03"
    assert data[43:47] == b"z\0\0\0"
    assert c.header_bytes == 47 + 13 + 17 + 13
    assert len(data) == c.num_bytes == c.header_bytes + 11 + 9 + 5
    assert c.bpp == 8 * len(data) / (120 * 180)
    assert (c.padded_height, c.padded_width, c.pad_bottom, c.pad_right) == (128, 192, 8, 12)
    assert c.num_blocks == release_format.z_count(120, 180) == 6
    assert c.section_names == ("z", "y", "meta")
    assert c.section("y").symbols_crc == 0xDEADBEEF
    with pytest.raises(BitstreamError, match="no section 'q'"):
        c.section("q")


def test_z_only_file_is_header_plus_z():
    c = sample(768, 768, [Section("z", bytes(252))])
    assert c.num_bytes == len(bitstream.write_container(c)) == 60 + 252
    assert c.num_blocks == 144


names = st.from_regex(r"[A-Za-y0-9_][A-Za-z0-9_]{0,3}", fullmatch=True)  # never "z": generated separately


@st.composite
def containers(draw) -> Container:
    height, width = draw(st.integers(1, 3000)), draw(st.integers(1, 3000))
    extras = draw(st.lists(st.tuples(names, st.binary(max_size=40), st.none() | st.integers(0, 2**32 - 1)),
                           max_size=bitstream.MAX_SECTIONS - 1, unique_by=lambda t: t[0]))
    sections = [Section(*t) for t in extras]
    if draw(st.booleans()):
        z = draw(st.randoms(use_true_random=False)).randbytes(bitstream.z_num_bytes(height, width))
        sections.insert(draw(st.integers(0, len(sections))), Section("z", z, draw(st.none() | st.just(7))))
    return Container(draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=8, max_size=8)),
                     height, width, tuple(sections))


@settings(max_examples=150, deadline=None)
@given(containers())
def test_round_trip(c):
    data = bitstream.write_container(c)
    assert len(data) == c.num_bytes
    assert bitstream.read_container(data, c.model_id, c.table_hash) == c
    assert bitstream.detect_format(data) == "onedc"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_files_only_raise_bitstream_error(data):
    original = bitstream.write_container(sample())
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(blob) - 1))
        if kind == "set":
            blob[pos] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            blob.insert(pos, data.draw(st.integers(0, 255)))
        elif len(blob) > 1:
            del blob[pos]
    try:
        assert bitstream.read_container(bytes(blob)) == sample()
    except BitstreamError:
        pass
    try:
        bitstream.detect_format(bytes(blob))
    except BitstreamError:
        pass


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_bitstream_error(blob):
    for read in (bitstream.read_container, bitstream.read_release_file, bitstream.detect_format):
        try:
            read(blob)
        except BitstreamError:
            pass


def test_bad_magic():
    data = bitstream.write_container(sample())
    assert error(b"PK\x03\x04" + data[4:]) == "not a OneDC file (bad magic)"
    assert error(b"GIF89a" + data[6:]) == "not a OneDC file (bad magic)"
    assert "text-mode transfer" in error(data.replace(b"\r\n", b"\n", 1))
    assert "text-mode transfer" in error(bytes([data[0] & 0x7F]) + data[1:])


def test_wrong_version():
    data = bitstream.write_container(sample())
    for version in (1, 2, 4):  # 1, 2: earlier odc y streams (two states)
        assert error(data[:8] + bytes([version]) + data[9:]) == \
            f"unsupported format version {version} (this onedc reads version 3)"
    with pytest.raises(BitstreamError, match="version 4"):
        Container(MODEL_ID, TABLE_HASH, 1, 1, (), version=4)


def test_wrong_model_or_tables():
    data = bitstream.write_container(sample())
    other = bytes(16)
    assert error(data, expected_model_id=other) == (
        f"this file was written by model {MODEL_ID.hex()} but you are decoding with model {other.hex()}")
    assert "entropy tables 0123456789abcdef" in error(data, expected_table_hash=bytes(8))
    assert bitstream.read_container(data, expected_model_id=MODEL_ID, expected_table_hash=TABLE_HASH) == sample()


def test_header_crc():
    data = bytearray(bitstream.write_container(sample()))
    for offset in (9, 10, 30, 36, 42, 50, sample().header_bytes - 1):
        corrupt = data.copy()
        corrupt[offset] ^= 0x10
        assert error(bytes(corrupt)) in ("header CRC mismatch: the file is corrupt",
                                         "too many sections: 19 (the limit is 16)")


def test_payload_crc():
    c = sample()
    data = bytearray(bitstream.write_container(c))
    for name, offset in (("z", c.header_bytes), ("y", c.header_bytes + 11 + 3), ("meta", len(data) - 1)):
        corrupt = data.copy()
        corrupt[offset] ^= 1
        assert error(bytes(corrupt)) == f"CRC mismatch in section {name}: the file is corrupt"


def test_truncation_at_every_position():
    data = bitstream.write_container(sample())
    assert error(b"") == "empty file: not a OneDC file"
    for n in range(1, len(data)):
        message = error(data[:n])
        assert re.fullmatch(r"file truncated: expected (at least )?\d+ more bytes", message), (n, message)
    assert error(data[:-7]) == "file truncated: expected 7 more bytes"


def test_trailing_bytes():
    data = bitstream.write_container(sample())
    assert error(data + b"\0\0") == ("2 unexpected bytes after the last section: the file is corrupt or has "
                                     "something appended")
    assert "unexpected bytes" in error(data + data)


@pytest.mark.parametrize("height, width, message", [
    (200000, 200000, "image of 200000 x 200000 pixels (W x H) exceeds the limit of 65536 pixels per side"),
    (65536, 65536, "exceeds the limit"),  # each side allowed, 2^32 pixels not
    (0, 180, "image of 180 x 0 pixels (W x H) is empty"),
    (120, 0, "is empty"),
])
def test_absurd_dimensions(height, width, message):
    c = sample()
    data = patched(bitstream.write_container(c), 34, height.to_bytes(4, "big") + width.to_bytes(4, "big"),
                   c.header_bytes - 4)
    assert message in error(data)
    with pytest.raises(BitstreamError, match=re.escape(message)):
        Container(MODEL_ID, TABLE_HASH, height, width, ())


def test_limits_are_inclusive():
    side = sample(bitstream.MAX_SIDE, 1, ())
    assert bitstream.read_container(bitstream.write_container(side)) == side
    assert Container(MODEL_ID, TABLE_HASH, 16384, 16384, ()).height == 16384  # exactly MAX_PIXELS


def test_too_many_sections():
    c = sample()
    assert error(patched(bitstream.write_container(c), 42, b"\x11", c.header_bytes - 4)) == (
        "too many sections: 17 (the limit is 16)")
    with pytest.raises(BitstreamError, match="too many sections: 17"):
        Container(MODEL_ID, TABLE_HASH, 1, 1, tuple(Section(f"s{i}", b"") for i in range(17)))
    full = Container(MODEL_ID, TABLE_HASH, 1, 1, tuple(Section(f"s{i}", b"") for i in range(16)))
    assert bitstream.read_container(bitstream.write_container(full)) == full


def test_duplicate_section_names():
    c = sample()
    data = patched(bitstream.write_container(c), 43 + 13, b"z\0\0\0", c.header_bytes - 4)  # rename y to z
    assert error(data) == "duplicate section name(s) z"
    with pytest.raises(BitstreamError, match="duplicate"):
        Container(MODEL_ID, TABLE_HASH, 1, 1, (Section("a", b""), Section("a", b"x")))


@pytest.mark.parametrize("tag", [b"\0\0\0\0", b"z\0y\0", b"z   ", b"\xff\0\0\0", b"a-b\0"])
def test_bad_section_names(tag):
    c = sample()
    assert error(patched(bitstream.write_container(c), 43, tag, c.header_bytes - 4)).startswith("bad section name")


def test_unknown_flags():
    c = sample()
    data = bitstream.write_container(c)
    assert error(patched(data, 9, b"\x01", c.header_bytes - 4)) == (
        "unsupported header flags 0x01 (version 3 defines none)")
    assert error(patched(data, 43 + 4, b"\x02", c.header_bytes - 4)) == "unsupported flags 0x02 in section 'z'"


def test_z_length_follows_the_image_size():
    c = sample()
    data = patched(bitstream.write_container(c), 34, (200).to_bytes(4, "big"), c.header_bytes - 4)
    assert error(data) == "z stream of 11 bytes, but a 200x180 image needs 21"
    with pytest.raises(BitstreamError, match="z stream of 10 bytes"):
        sample(sections=[Section("z", bytes(10))])


def test_invalid_containers_are_refused():
    with pytest.raises(BitstreamError, match="model id must be 16 bytes"):
        Container(b"short", TABLE_HASH, 1, 1, ())
    with pytest.raises(BitstreamError, match="table hash must be 8 bytes"):
        Container(MODEL_ID, b"", 1, 1, ())
    with pytest.raises(BitstreamError, match="bad section name"):
        Section("toolong", b"")
    with pytest.raises(BitstreamError, match="not a u32"):
        Section("y", b"", symbols_crc=-1)
    with pytest.raises(TypeError):
        Section("y", "text")
    assert Section("y", bytearray(b"ab")).payload == b"ab"


def test_symbols_crc():
    symbols = np.array([[0, -1], [3, 30000]], dtype=np.int64)
    crc = bitstream.symbols_crc(symbols)
    assert crc == zlib.crc32(np.array([0, -1, 3, 30000], dtype="<i4").tobytes())
    bitstream.check_symbols(Section("y", b"", crc), symbols)
    bitstream.check_symbols(Section("y", b""), symbols + 1)  # no stored CRC: nothing to check
    with pytest.raises(BitstreamError, match="decoded symbols of section y"):
        bitstream.check_symbols(Section("y", b"", crc), symbols + 1)


# -- files ---------------------------------------------------------------------------------------------------------

def test_files_round_trip_and_replace(tmp_path):
    path = tmp_path / "a.odc"
    path.write_bytes(b"old content")
    bitstream.write_file(path, sample())
    assert bitstream.read_file(path, MODEL_ID, TABLE_HASH) == sample()
    assert os.listdir(tmp_path) == ["a.odc"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "a.odc"
    path.write_bytes(b"old content")

    def failing_replace(src, dst):
        raise OSError("disk on fire")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        bitstream.write_file(path, sample())
    assert os.listdir(tmp_path) == ["a.odc"] and path.read_bytes() == b"old content"
    with pytest.raises(FileNotFoundError):
        bitstream.write_file(tmp_path / "missing" / "a.odc", sample())


def test_read_bytes_refuses_what_is_not_a_small_regular_file(tmp_path, monkeypatch):
    with pytest.raises(IsADirectoryError):
        bitstream.read_bytes(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):  # and no hang waiting for a writer
        bitstream.read_bytes(fifo)
    with pytest.raises(FileNotFoundError):
        bitstream.read_file(tmp_path / "missing.odc")
    big = tmp_path / "big"
    big.write_bytes(bytes(101))
    monkeypatch.setattr(bitstream, "MAX_FILE_BYTES", 100)
    with pytest.raises(BitstreamError, match="file of 101 bytes exceeds the limit of 100 bytes"):
        bitstream.read_bytes(big)


# -- the release's format ------------------------------------------------------------------------------------------

def test_release_header_cases(compat_dir):
    cases = np.load(compat_dir / "header_cases.npz")
    names = sorted(k.split("__")[0] for k in cases.files if k.endswith("__header"))
    assert len(names) == 5
    for name in names:
        height, width, y_len = (int(v) for v in cases[f"{name}__HW_ylen"])
        header = cases[f"{name}__header"].tobytes()
        z = bytes(bitstream.z_num_bytes(height, width))
        data = bitstream.write_release_file(height, width, bytes(y_len), z)
        assert data[:16] == header
        r = bitstream.read_release_file(data)
        assert (r.height, r.width, len(r.y_stream), r.z_bytes, r.num_bytes) == (height, width, y_len, z, len(data))
        assert bitstream.detect_format(data) == "release"


def test_release_assembled_512(compat_dir):
    data = (compat_dir / "assembled_512x512.bin").read_bytes()
    r = bitstream.read_release_file(data)
    assert (r.height, r.width, len(r.y_stream), len(r.z_bytes)) == (512, 512, 59195, 112)
    assert r.y_stream == np.load(compat_dir / "rans_case_realistic_4x32x32x32.npz")["stream"].tobytes()
    assert r.z_bytes == np.load(compat_dir / "zstream_cases.npz")["1x8x8__z_bytes"].tobytes()
    assert bitstream.write_release_file(r.height, r.width, r.y_stream, r.z_bytes) == data
    assert bitstream.detect_format(data) == "release"
    assert r.bpp == 8 * len(data) / (512 * 512)


def test_release_codec_small_e2e(compat_dir):
    from safetensors.numpy import load_file

    data = (compat_dir / "codec_small_e2e.bin").read_bytes()
    r = bitstream.read_release_file(data)
    assert (r.height, r.width, len(r.y_stream), len(r.z_bytes)) == (120, 180, 2004, 11)
    assert (r.padded_height, r.padded_width, r.num_blocks) == (128, 192, 6)
    indices = load_file(compat_dir / "codec_small_e2e_tensors.safetensors")["output.z_indices"]
    assert (release_format.unpack_z(r.z_bytes, r.num_blocks) == indices.reshape(-1)).all()
    assert bitstream.write_release_file(120, 180, r.y_stream, r.z_bytes) == data
    for n in range(len(data)):
        with pytest.raises(BitstreamError, match="truncated"):
            bitstream.read_release_file(data[:n])
        with pytest.raises(BitstreamError):
            bitstream.detect_format(data[:n])


def test_release_errors(compat_dir):
    data = (compat_dir / "codec_small_e2e.bin").read_bytes()
    with pytest.raises(BitstreamError, match="1 unexpected bytes after the z stream"):
        bitstream.read_release_file(data + b"\0")
    with pytest.raises(BitstreamError, match="release-format file: 1 unexpected bytes"):
        bitstream.detect_format(data + b"\0")
    with pytest.raises(BitstreamError, match="5-byte caption"):
        bitstream.read_release_file(data[:12] + (5).to_bytes(4, "big") + data[16:])
    with pytest.raises(BitstreamError, match="is empty"):
        bitstream.read_release_file(bytes(4) + data[4:])
    with pytest.raises(BitstreamError, match="exceeds the limit"):
        bitstream.read_release_file((1 << 20).to_bytes(4, "big") + data[4:])
    with pytest.raises(BitstreamError, match="z stream of 10 bytes"):
        bitstream.write_release_file(120, 180, b"\x01", bytes(10))
    with pytest.raises(BitstreamError, match=r"^not a OneDC file \(bad magic\), nor a release-format file$"):
        bitstream.detect_format(b"hello world, this is not an image file")


def test_detect_format():
    data = bitstream.write_container(sample())
    assert bitstream.detect_format(data) == "onedc"
    assert bitstream.detect_format(data[:5]) == "onedc"  # truncated: read_container says so
    assert bitstream.detect_format(data.replace(b"\r\n", b"\n", 1)) == "onedc"  # mangled: read_container says so
    with pytest.raises(BitstreamError, match="empty file"):
        bitstream.detect_format(b"")


# -- fuzzing -------------------------------------------------------------------------------------------------------

def test_fuzz_harness_runs_clean(run_fuzz_harness):
    assert run_fuzz_harness("fuzz_bitstream", 3000) == 3000
