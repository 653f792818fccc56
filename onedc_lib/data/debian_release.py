"""Fetches a package of another Debian release without touching the system's APT state: a private configuration
(its own sources list, state and cache folders) names the mirror that the system already uses, with the other
release's suite; `apt-get update` and `apt-get download` run under it. The mirror is read from the system's own
APT sources at run time (no host is written into the project), and the .deb is checked against a pinned sha256.
"""
from __future__ import annotations

import getpass
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..archives import sha256_file

APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")


class FetchError(RuntimeError):
    """The package cannot be had: no Debian mirror configured, apt-get failed, or the .deb is not the pinned one."""


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None


def _one_line_sources(text: str) -> list[AptSource]:
    """`deb [options] uri suite component...` lines of a sources.list."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not match:
            continue
        options = dict(o.split("=", 1) for o in (match.group(1) or "").split() if "=" in o)
        found.append(AptSource(match.group(2), (match.group(3),), tuple(match.group(4).split()),
                               options.get("signed-by")))
    return found


def _deb822_sources(text: str) -> list[AptSource]:
    """The `Types: deb` stanzas of a .sources file (continuation lines and comments skipped)."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#") or line[0] in " \t":
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            found.append(AptSource(uri, tuple(fields.get("suites", "").split()),
                                   tuple(fields.get("components", "").split()), fields.get("signed-by")))
    return found


def system_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """The binary package sources the system uses (sources.list, sources.list.d/*.list and *.sources)."""
    found = []
    main_list = apt_dir / "sources.list"
    if main_list.is_file():
        found += _one_line_sources(main_list.read_text(encoding="utf-8", errors="replace"))
    parts = apt_dir / "sources.list.d"
    for path in sorted(parts.glob("*.list")) if parts.is_dir() else []:
        found += _one_line_sources(path.read_text(encoding="utf-8", errors="replace"))
    for path in sorted(parts.glob("*.sources")) if parts.is_dir() else []:
        found += _deb822_sources(path.read_text(encoding="utf-8", errors="replace"))
    return found


def system_codename(os_release: Path = OS_RELEASE) -> str:
    values = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line) \
        if os_release.is_file() else {}
    codename = values.get("VERSION_CODENAME", "").strip().strip('"')
    if not codename:
        raise FetchError(f"no VERSION_CODENAME in {os_release}: cannot tell which APT source is the Debian mirror")
    return codename


def system_mirror(apt_dir: Path = APT_DIR, os_release: Path = OS_RELEASE) -> AptSource:
    """The source that serves the system's own release (its suite named exactly, component main): the Debian
    mirror this machine already uses. Security and update suites and third-party repositories do not qualify."""
    codename = system_codename(os_release)
    for source in system_sources(apt_dir):
        if codename in source.suites and "main" in source.components:
            return source
    raise FetchError(f"no APT source in {apt_dir} serves suite {codename!r} with component main")


def private_apt_options(root: Path, suite: str, mirror: AptSource) -> list[str]:
    """apt-get options for a configuration under `root` that knows only `suite` main of `mirror` (written there)."""
    root = root.resolve()  # apt reads relative Dir:: settings against its own folders
    for sub in ("parts", "state/lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    signed = f"[signed-by={mirror.signed_by}] " if mirror.signed_by else ""
    (root / "sources.list").write_text(f"deb {signed}{mirror.uri} {suite} main\n", encoding="utf-8")
    settings = {
        "Dir::Etc::SourceList": root / "sources.list", "Dir::Etc::SourceParts": root / "parts",
        "Dir::Etc::Preferences": root / "preferences", "Dir::Etc::PreferencesParts": root / "parts",
        "Dir::State": root / "state", "Dir::Cache": root / "cache",
        "APT::Sandbox::User": getpass.getuser(),  # the private folders belong to this user, not to _apt
    }
    return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]


def fetch_from_release(name: str, version: str, suite: str, sha256: str, debs: Path, apt_root: Path,
                       run: Callable[[list[str], Path | None], str], apt_dir: Path = APT_DIR,
                       os_release: Path = OS_RELEASE) -> Path:
    """The .deb of `name` `version` (Debian suite `suite`) in `debs`, checked against `sha256`: taken from `debs`
    when a file there has that hash, else downloaded under a private APT configuration in `apt_root`.
    run(cmd, cwd) runs a command and returns its output (raising on failure)."""
    debs.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob(f"{name}_*.deb")):
        if sha256_file(deb) == sha256:
            return deb
    options = private_apt_options(apt_root / suite, suite, system_mirror(apt_dir, os_release))
    run(["apt-get", *options, "update"], None)
    incoming = debs / ".incoming"  # a fresh folder: what apt-get leaves there is this download, nothing older
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir()
    try:
        run(["apt-get", *options, "download", f"{name}={version}"], incoming)
        downloaded = sorted(incoming.glob(f"{name}_*.deb"))
        if not downloaded:
            raise FetchError(f"apt-get download {name}={version} ({suite}) left no .deb")
        digest = sha256_file(downloaded[0])
        if digest != sha256:
            raise FetchError(f"{downloaded[0].name} from suite {suite} has sha256 {digest}, not the pinned {sha256}")
        target = debs / downloaded[0].name
        downloaded[0].replace(target)
        return target
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
