"""The released OneDC's checkpoint folders wherever a model is named (spec section 1, compat README 1).

A release checkpoint folder holds `model.safetensors` (the generator UNet with LoRA) and `model_1.safetensors`
(the codec); the SD-2.1 VAE is distributed separately (a diffusers folder, or one file). `--model FOLDER` loads
such a folder directly, with the VAE from `--vae` / $ONEDC_RELEASE_VAE and the architecture from
`--release-preset` / $ONEDC_RELEASE_PRESET (default sd15; sd15_zonly for the z-only model, whose files look the
same). `onedc import-release` writes a model folder of ours instead: its config.json references the release's
files by path, size and sha256, so nothing of the 5 GB is copied, and loading it checks that they are unchanged
(sizes, then the model id over every loaded tensor). Imports nothing heavy (the CLI's parser reads its names).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path

RELEASE_FILES = ("model.safetensors", "model_1.safetensors")  # generator, codec
VAE_ENV = "ONEDC_RELEASE_VAE"
PRESET_ENV = "ONEDC_RELEASE_PRESET"
DEFAULT_PRESET = "sd15"


def is_release_folder(path: str | os.PathLike) -> bool:
    """A folder with the release's two files and no config.json of ours."""
    path = Path(path)
    return path.is_dir() and not (path / "config.json").is_file() and all((path / n).is_file() for n in RELEASE_FILES)


def check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as its tensors say: a truncated download is refused before a
    model of a billion parameters is built."""
    from .weights import WeightsError

    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length)) if length < 100_000_000 else None
    except (OSError, struct.error, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file ({error})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a readable safetensors file (bad header)")
    end = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"), default=0)
    size, expected = path.stat().st_size, 8 + length + end
    if size < expected:
        raise WeightsError(f"{path} is truncated: {size} bytes, its header describes {expected} (an interrupted "
                           "download? fetch it again)")


def _vae_path(vae: str | os.PathLike | None) -> Path:
    from .weights import WeightsError

    vae = vae if vae is not None else os.environ.get(VAE_ENV)
    if not vae:
        raise WeightsError(f"a release checkpoint needs the SD-2.1 VAE, which it does not contain: pass --vae DIR "
                           f"(a diffusers AutoencoderKL folder or a weights file) or set ${VAE_ENV}")
    path = Path(vae)
    if not path.exists():
        raise WeightsError(f"no VAE at {path} (--vae / ${VAE_ENV})")
    return path


def load_release_folder(folder: str | os.PathLike, vae: str | os.PathLike | None = None,
                        preset: str | None = None):
    """A release checkpoint folder as a whole model; vae / preset default to their environment variables."""
    from .weights import WeightsError, load_release_checkpoint

    folder = Path(folder)
    if not is_release_folder(folder):
        missing = [n for n in RELEASE_FILES if not (folder / n).is_file()]
        raise WeightsError(f"{folder} is not a release checkpoint folder: " + (
            f"{', '.join(missing)} missing" if missing else "it has a config.json (a model folder of ours)"))
    vae_path = _vae_path(vae)
    for name in RELEASE_FILES:
        check_safetensors(folder / name)
    preset = preset or os.environ.get(PRESET_ENV) or DEFAULT_PRESET
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the VAE is given: no untrained-VAE warning applies
            return load_release_checkpoint(folder, vae_path, preset)
    except (OSError, ValueError, RuntimeError) as error:
        if isinstance(error, WeightsError):
            raise
        raise WeightsError(f"the VAE at {vae_path} does not load as the {preset} model's SD-2.1 VAE "
                           f"({str(error).splitlines()[0]})") from None


def _record(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _vae_files(vae: Path) -> list[Path]:
    return sorted(p for p in vae.rglob("*") if p.is_file()) if vae.is_dir() else [vae]


def import_release(folder: str | os.PathLike, vae: str | os.PathLike | None, out: str | os.PathLike,
                   preset: str | None = None) -> Path:
    """Writes `out`/config.json: the model's config and id and the release files it references (path, size,
    sha256), no tensors. `--model out` then loads the release files."""
    from .bitstream import atomic_write
    from .config import config_to_dict

    model = load_release_folder(folder, vae, preset)
    folder, vae_path = Path(folder).resolve(), _vae_path(vae).resolve()
    preset = preset or os.environ.get(PRESET_ENV) or DEFAULT_PRESET
    if Path(preset).is_file():
        preset = str(Path(preset).resolve())
    files = [folder / n for n in RELEASE_FILES] + _vae_files(vae_path)
    meta = {"config": config_to_dict(model.config), "model_id": model.model_id.hex(),
            "release": {"folder": str(folder), "vae": str(vae_path), "preset": preset,
                        "files": [_record(p) for p in files]},
            "provenance": {"imported_from": str(folder)}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.json", json.dumps(meta, indent=1).encode())
    return out


def load_imported(folder: Path, meta: dict):
    """The model of an import-release folder: its referenced files, checked against the recorded sizes and id."""
    from .weights import WeightsError

    release = meta["release"]
    for entry in release["files"]:
        path = Path(entry["path"])
        if not path.is_file():
            raise WeightsError(f"{folder} references {path}, which is missing (moved or deleted? run "
                               "`onedc import-release` again)")
        if path.stat().st_size != entry["bytes"]:
            raise WeightsError(f"{folder} references {path}, which has changed: {path.stat().st_size} bytes, "
                               f"{entry['bytes']} when imported (sha256 {entry['sha256']})")
    model = load_release_folder(release["folder"], release["vae"], release["preset"])
    if model.model_id.hex() != meta["model_id"]:
        raise WeightsError(f"{folder}: the release files it references now make model {model.model_id.hex()}, "
                           f"not {meta['model_id']} (a file was replaced; sha256s in its config.json)")
    return model
