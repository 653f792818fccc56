"""JPEG images stored inside other files (Enlightenment's .edj themes keep their wallpapers as JPEG streams inside
an Eet archive), found by walking the JPEG marker structure: no decoder for the container format is needed.

A candidate starts at SOI (FF D8 FF); its segments are followed by their lengths, the entropy-coded data after SOS
is skipped up to the next marker that is not a stuffed byte (FF 00) or a restart (FF D0-D7), and it ends at EOI
(FF D9). A start that does not walk to an EOI is not a JPEG stream and is skipped.
"""
from __future__ import annotations

import os
from pathlib import Path

_SOI = b"\xff\xd8\xff"
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length


def _stream_end(data: bytes, start: int) -> int | None:
    """The end (exclusive) of the JPEG stream that starts at `start`, or None if the markers do not hold."""
    n = len(data)
    p = start + 2
    while p + 1 < n:
        if data[p] != 0xFF:
            return None
        marker = data[p + 1]
        if marker == 0xFF:  # fill byte before a marker
            p += 1
            continue
        if marker == 0xD9:
            return p + 2
        if marker in _STANDALONE:
            p += 2
            continue
        if p + 4 > n:
            return None
        length = int.from_bytes(data[p + 2:p + 4], "big")
        if length < 2:
            return None
        p += 2 + length
        if marker == 0xDA:  # scan data runs to the next marker that is not a stuffed FF 00 or a restart
            p = data.find(b"\xff", p)
            while 0 <= p < n - 1 and (data[p + 1] == 0 or 0xD0 <= data[p + 1] <= 0xD7):
                p = data.find(b"\xff", p + 2)
            if p < 0:
                return None
    return None


def embedded_jpegs(data: bytes) -> list[bytes]:
    """Every complete JPEG stream in `data`, in order (a stream found inside another is not listed again)."""
    found = []
    i = data.find(_SOI)
    while i >= 0:
        end = _stream_end(data, i)
        if end is None:
            i = data.find(_SOI, i + 2)
        else:
            found.append(data[i:end])
            i = data.find(_SOI, end)
    return found


def largest_embedded_jpeg(path: str | os.PathLike) -> bytes | None:
    """The largest JPEG stream inside the file (a theme keeps its full-size picture beside small previews), or
    None if it holds none."""
    streams = embedded_jpegs(Path(path).read_bytes())
    return max(streams, key=len) if streams else None
