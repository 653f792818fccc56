"""OneDC files: our container (magic, version, model id, table hash, CRCs) and the release's headerless format.

The byte layout is specified in cpp_coder/FORMAT.md; keep the two in sync. Readers check every length and
limit before they slice or allocate anything, and report every problem as a BitstreamError whose message tells
the user what is wrong with the file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import struct
import tempfile
import zlib
from dataclasses import dataclass

from onedc_lib.entropy import release_format

MAGIC = b"\x89ODC\r\n\x1a\n"  # PNG-style: a high-bit byte, CR LF, ^Z and LF expose text-mode mangling
VERSION = 3  # 3: the odc y stream of STREAMS.md version 3 (1 to 16 interleaved states per tile)
MODEL_ID_BYTES = 16
TABLE_HASH_BYTES = 8
MAX_SIDE = 1 << 16  # pixels per side
MAX_PIXELS = 1 << 28  # 16384 x 16384
MAX_SECTIONS = 16
MAX_FILE_BYTES = 1 << 30
SECTION_HAS_SYMBOLS_CRC = 0x01  # the only section flag

_FIXED = struct.Struct(">8sBB16s8sIIB")  # magic, version, flags, model id, table hash, height, width, count
_ENTRY = struct.Struct(">4sBII")  # tag, section flags, payload length, payload CRC32
_U32 = struct.Struct(">I")
_NAME = re.compile(r"[A-Za-z0-9_]{1,4}")


class BitstreamError(ValueError):
    """A file that cannot be read: not ours, truncated, corrupt, too large or for another model."""


def check_image_size(height: int, width: int) -> None:
    """Rejects sizes no decoder should try to allocate, before anything is allocated."""
    if height < 1 or width < 1:
        raise BitstreamError(f"image of {width} x {height} pixels (W x H) is empty: both sides must be at least 1")
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        raise BitstreamError(f"image of {width} x {height} pixels (W x H) exceeds the limit of {MAX_SIDE} pixels "
                             f"per side and {MAX_PIXELS} pixels in all")


def z_num_bytes(height: int, width: int) -> int:
    """Bytes of the z stream: 14 bits per 64x64 block of the padded image (the same packing in both formats)."""
    return release_format.z_bytes(release_format.z_count(height, width))


class _Image:
    """Sizes shared by both file types; the model pads right/bottom by replication to a multiple of 64."""

    height: int
    width: int
    num_bytes: int

    @property
    def padded_height(self) -> int:
        return -(-self.height // release_format.BLOCK) * release_format.BLOCK

    @property
    def padded_width(self) -> int:
        return -(-self.width // release_format.BLOCK) * release_format.BLOCK

    @property
    def pad_bottom(self) -> int:
        return self.padded_height - self.height

    @property
    def pad_right(self) -> int:
        return self.padded_width - self.width

    @property
    def num_blocks(self) -> int:
        """Number of 64x64 blocks, i.e. of z indices."""
        return release_format.z_count(self.height, self.width)

    @property
    def bpp(self) -> float:
        """Bits per original pixel of the whole file, headers included (the paper's definition)."""
        return 8 * self.num_bytes / (self.height * self.width)


def _check_z(payload: bytes, height: int, width: int) -> None:
    expected = z_num_bytes(height, width)
    if len(payload) != expected:
        raise BitstreamError(f"z stream of {len(payload)} bytes, but a {height}x{width} image needs {expected}")


@dataclass(frozen=True)
class Section:
    """One named payload. symbols_crc, when set, is the CRC32 of the decoded symbols (see symbols_crc)."""

    name: str
    payload: bytes
    symbols_crc: int | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise BitstreamError(f"bad section name {self.name!r}: 1 to 4 characters from A-Z, a-z, 0-9 and _")
        if isinstance(self.payload, (bytearray, memoryview)):
            object.__setattr__(self, "payload", bytes(self.payload))
        if not isinstance(self.payload, bytes):
            raise TypeError(f"section payload must be bytes, not {type(self.payload).__name__}")
        if len(self.payload) >= 1 << 32:
            raise BitstreamError(f"section {self.name} of {len(self.payload)} bytes does not fit a u32 length")
        if self.symbols_crc is not None and not 0 <= self.symbols_crc < 1 << 32:
            raise BitstreamError(f"symbols CRC {self.symbols_crc} of section {self.name} is not a u32")

    @property
    def crc(self) -> int:
        """CRC32 of the payload, as stored in the section table."""
        return zlib.crc32(self.payload)


@dataclass(frozen=True)
class Container(_Image):
    """A OneDC file in memory: whom it is for (model id, table hash), the original size and its sections."""

    model_id: bytes
    table_hash: bytes
    height: int
    width: int
    sections: tuple[Section, ...]
    version: int = VERSION

    def __post_init__(self):
        object.__setattr__(self, "sections", tuple(self.sections))
        if self.version != VERSION:
            raise BitstreamError(f"unsupported format version {self.version} (this onedc reads version {VERSION})")
        if not isinstance(self.model_id, bytes) or len(self.model_id) != MODEL_ID_BYTES:
            raise BitstreamError(f"model id must be {MODEL_ID_BYTES} bytes, got {self.model_id!r}")
        if not isinstance(self.table_hash, bytes) or len(self.table_hash) != TABLE_HASH_BYTES:
            raise BitstreamError(f"table hash must be {TABLE_HASH_BYTES} bytes, got {self.table_hash!r}")
        check_image_size(self.height, self.width)
        if len(self.sections) > MAX_SECTIONS:
            raise BitstreamError(f"too many sections: {len(self.sections)} (the limit is {MAX_SECTIONS})")
        names = [s.name for s in self.sections]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise BitstreamError(f"duplicate section name(s) {', '.join(duplicates)}")
        if "z" in names:
            _check_z(self.section("z").payload, self.height, self.width)

    @property
    def section_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sections)

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise BitstreamError(f"the file has no section {name!r} (it has: {', '.join(self.section_names) or 'none'})")

    @property
    def header_bytes(self) -> int:
        """Everything before the first payload: fixed part, section table and header CRC."""
        table = sum(_ENTRY.size + (s.symbols_crc is not None) * _U32.size for s in self.sections)
        return _FIXED.size + table + _U32.size

    @property
    def num_bytes(self) -> int:
        return self.header_bytes + sum(len(s.payload) for s in self.sections)


def write_container(c: Container) -> bytes:
    header = bytearray(_FIXED.pack(MAGIC, c.version, 0, c.model_id, c.table_hash, c.height, c.width,
                                   len(c.sections)))
    for s in c.sections:
        flags = 0 if s.symbols_crc is None else SECTION_HAS_SYMBOLS_CRC
        header += _ENTRY.pack(s.name.encode("ascii").ljust(4, b"\0"), flags, len(s.payload), s.crc)
        if s.symbols_crc is not None:
            header += _U32.pack(s.symbols_crc)
    header += _U32.pack(zlib.crc32(header))
    return b"".join([bytes(header), *(s.payload for s in c.sections)])


def _need(data: bytes, end: int) -> None:
    """Header fields are read in order, so a short file is reported at the first field it cuts."""
    if end > len(data):
        raise BitstreamError(f"file truncated: expected at least {end - len(data)} more bytes")


def read_container(data: bytes, expected_model_id: bytes | None = None,
                   expected_table_hash: bytes | None = None) -> Container:
    """Parses and verifies a whole file. Checks run in the order that gives the most useful message: magic and
    version first (a future layout may differ), then the header CRC (so that a corrupt header is not mistaken
    for a wrong model), then model, limits and lengths, then the payload CRCs."""
    data = bytes(data)
    if not data:
        raise BitstreamError("empty file: not a OneDC file")
    if data[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(data):
            _need(data, len(MAGIC) + 1)
        if data[1:4] == MAGIC[1:4]:
            raise BitstreamError("damaged OneDC magic: the file was probably altered by a text-mode transfer "
                                 "(line endings or 8-bit characters)")
        raise BitstreamError("not a OneDC file (bad magic)")
    _need(data, len(MAGIC) + 1)
    if data[len(MAGIC)] != VERSION:
        raise BitstreamError(f"unsupported format version {data[len(MAGIC)]} (this onedc reads version {VERSION})")
    _need(data, _FIXED.size)
    _, _, flags, model_id, table_hash, height, width, count = _FIXED.unpack_from(data)
    if count > MAX_SECTIONS:
        raise BitstreamError(f"too many sections: {count} (the limit is {MAX_SECTIONS})")
    entries, pos = [], _FIXED.size
    for _ in range(count):
        _need(data, pos + _ENTRY.size)
        tag, section_flags, length, crc = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        symbols = None
        if section_flags & SECTION_HAS_SYMBOLS_CRC:
            _need(data, pos + _U32.size)
            (symbols,) = _U32.unpack_from(data, pos)
            pos += _U32.size
        entries.append((tag, section_flags, length, crc, symbols))
    _need(data, pos + _U32.size)
    if _U32.unpack_from(data, pos)[0] != zlib.crc32(data[:pos]):
        raise BitstreamError("header CRC mismatch: the file is corrupt")
    pos += _U32.size

    if flags:
        raise BitstreamError(f"unsupported header flags 0x{flags:02x} (version {VERSION} defines none)")
    if expected_model_id is not None and model_id != expected_model_id:
        raise BitstreamError(f"this file was written by model {model_id.hex()} but you are decoding with model "
                             f"{expected_model_id.hex()}")
    if expected_table_hash is not None and table_hash != expected_table_hash:
        raise BitstreamError(f"this file was coded with entropy tables {table_hash.hex()} but this onedc has "
                             f"tables {expected_table_hash.hex()}")
    check_image_size(height, width)
    end = pos + sum(length for _, _, length, _, _ in entries)
    if end > len(data):
        raise BitstreamError(f"file truncated: expected {end - len(data)} more bytes")
    if end < len(data):
        raise BitstreamError(f"{len(data) - end} unexpected bytes after the last section: the file is corrupt "
                             "or has something appended")

    sections = []
    for tag, section_flags, length, crc, symbols in entries:
        name = tag.rstrip(b"\0").decode("latin-1")
        if section_flags & ~SECTION_HAS_SYMBOLS_CRC:
            raise BitstreamError(f"unsupported flags 0x{section_flags:02x} in section {name!r}")
        payload = data[pos: pos + length]
        pos += length
        section = Section(name, payload, symbols)
        if section.crc != crc:
            raise BitstreamError(f"CRC mismatch in section {name}: the file is corrupt")
        sections.append(section)
    return Container(model_id, table_hash, height, width, tuple(sections))


def symbols_crc(symbols) -> int:
    """CRC32 of symbols (int32 little endian, coding order). Stored by the encoder, it lets the decoder tell a
    decoding that went wrong (other model weights, tables or platform) from an intact file."""
    import numpy as np

    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes())


def check_symbols(section: Section, symbols) -> None:
    """Raises if the decoded symbols differ from what the encoder coded (no-op without a stored CRC)."""
    if section.symbols_crc is not None and symbols_crc(symbols) != section.symbols_crc:
        raise BitstreamError(f"CRC mismatch in the decoded symbols of section {section.name}: this decoder does "
                             "not reproduce the encoder (different model, tables or platform)")


@dataclass(frozen=True)
class ReleaseFile(_Image):
    """A file of the released OneDC: 16-byte header, y stream (flag byte included), z stream; nothing else."""

    height: int
    width: int
    y_stream: bytes
    z_bytes: bytes

    def __post_init__(self):
        check_image_size(self.height, self.width)
        if len(self.y_stream) >= 1 << 32:
            raise BitstreamError(f"y stream of {len(self.y_stream)} bytes does not fit the release header")
        _check_z(self.z_bytes, self.height, self.width)

    @property
    def num_bytes(self) -> int:
        return release_format.HEADER.size + len(self.y_stream) + len(self.z_bytes)


def write_release_file(height: int, width: int, y_stream: bytes, z_bytes: bytes) -> bytes:
    r = ReleaseFile(height, width, bytes(y_stream), bytes(z_bytes))
    return release_format.write_header(r.height, r.width, len(r.y_stream)) + r.y_stream + r.z_bytes


def read_release_file(data: bytes) -> ReleaseFile:
    """The release stores no z length: it follows from the size, so the three parts must fill the file exactly."""
    data = bytes(data)
    size = release_format.HEADER.size
    if len(data) < size:
        raise BitstreamError(f"file truncated: a release-format header has {size} bytes, the file {len(data)}")
    height, width, y_len, caption_len = release_format.read_header(data)
    if caption_len:
        raise BitstreamError(f"release-format header announces a {caption_len}-byte caption; the release always "
                             "writes 0 and this onedc reads none")
    check_image_size(height, width)
    end = size + y_len + z_num_bytes(height, width)
    if end > len(data):
        raise BitstreamError(f"file truncated: expected {end - len(data)} more bytes")
    if end < len(data):
        raise BitstreamError(f"{len(data) - end} unexpected bytes after the z stream: the file is corrupt or has "
                             "something appended")
    return ReleaseFile(height, width, data[size: size + y_len], data[size + y_len:])


def detect_format(data: bytes) -> str:
    """"onedc" or "release". The two cannot be confused: a release header starts with a height <= 2^16, i.e. a
    zero byte, our magic with 0x89. A truncated or mangled magic still counts as ours, so that read_container
    explains what happened to it."""
    data = bytes(data)
    if not data:
        raise BitstreamError("empty file: not a OneDC file")
    if data.startswith(MAGIC) or MAGIC.startswith(data) or data[1:4] == MAGIC[1:4]:
        return "onedc"
    try:
        read_release_file(data)
    except BitstreamError as e:
        if _plausible_release_header(data):  # a damaged release file: say what is wrong with it
            raise BitstreamError(f"release-format file: {e}") from None
        raise BitstreamError("not a OneDC file (bad magic), nor a release-format file") from None
    return "release"


def _plausible_release_header(data: bytes) -> bool:
    if len(data) < release_format.HEADER.size:
        return False
    height, width, _, caption_len = release_format.read_header(data)
    return caption_len == 0 and 1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE


def read_bytes(path: str | os.PathLike) -> bytes:
    """A whole file, refusing before any allocation what is not a regular file (a FIFO or a device could block
    or never end) or is larger than any valid file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if st.st_size > MAX_FILE_BYTES:
            raise BitstreamError(f"file of {st.st_size} bytes exceeds the limit of {MAX_FILE_BYTES} bytes")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise BitstreamError(f"file exceeds the limit of {MAX_FILE_BYTES} bytes")
    return data


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Writes a temporary file in the target's folder and renames it over the target, so that readers never see
    a partial file and a failure leaves nothing behind."""
    path = os.fspath(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                   prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as error:  # e.g. a read-only folder: name the file asked for, not the temporary one
        raise type(error)(error.errno, error.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_file(path: str | os.PathLike, c: Container) -> None:
    atomic_write(path, write_container(c))


def read_file(path: str | os.PathLike, expected_model_id: bytes | None = None,
              expected_table_hash: bytes | None = None) -> Container:
    return read_container(read_bytes(path), expected_model_id, expected_table_hash)
