"""`onedc import-release`: a model folder of ours for a release checkpoint folder, without copying it.

Its config.json holds the model's config and id and references the release's files (the generator's
model.safetensors, the codec's model_1.safetensors, the SD-2.1 VAE's files) by path, size and sha256, so nothing
of the 5 GB is copied; weights.load_model_folder loads it through weights.load_imported, which refuses files that
have changed (sizes, then the model id over every loaded tensor). Loading a release folder directly is
weights.load_release_folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .bitstream import atomic_write
from .config import config_to_dict
from .paths import RELEASE_PRESET_ENV, RELEASE_VAE_ENV  # noqa: F401 (the names the CLI sets)
from .weights import (  # noqa: F401 (what loads a release folder, beside what imports one)
    RELEASE_FILES, is_release_folder, load_release_folder, release_preset, release_vae_path,
)


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
    model = load_release_folder(folder, vae, preset)
    folder, vae_path = Path(folder).resolve(), release_vae_path(vae).resolve()
    preset = release_preset(preset)
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
