"""Where files live: the bundled-models folder, the user cache, and a run's output folder. A module of its own, below
weights.py (which loads models), models/export.py (which finds decoder graphs) and everything that writes results,
so none of them imports another for a path."""
from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "weights"
BUNDLED_DIR_ENV = "ONEDC_BUNDLED_DIR"  # another folder of bundled models (tests, a private model zoo)
# A release checkpoint folder named as a model (weights.load_release_folder): where its SD-2.1 VAE is, and its
# architecture (the z-only model's files look like the others'). Here, below the CLI's parser, which imports no torch.
RELEASE_VAE_ENV = "ONEDC_RELEASE_VAE"
RELEASE_PRESET_ENV = "ONEDC_RELEASE_PRESET"
RELEASE_DEFAULT_PRESET = "sd15"


def bundled_dir() -> Path:
    """Where bundled models live: $ONEDC_BUNDLED_DIR when set, else onedc_lib/weights/ inside the package."""
    return Path(os.environ.get(BUNDLED_DIR_ENV) or BUNDLED_DIR)


def cache_root() -> Path:
    """The user cache (metric weights, exported decoder graphs): $ONEDC_CACHE, default ~/.cache/onedc."""
    return Path(os.environ.get("ONEDC_CACHE") or Path.home() / ".cache" / "onedc")


def output_dir(target: str | os.PathLike, out_dir: str | os.PathLike, smoke: bool) -> Path:
    """Where a notebook writes what would be committed: `target` normally; in a smoke run, `out_dir` (so that CI
    never overwrites results/ or figures/). An empty target also means `out_dir`."""
    path = Path(out_dir) if smoke or not str(target) else Path(target)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_models_dir() -> Path:
    """Model folders imported or cached by the user (e.g. converted checkpoints): cache_root()/models/<name>/."""
    return cache_root() / "models"


def find_model(model_id: str) -> str | None:
    """What `load_model` takes for the model whose config.json names `model_id` (hex): a bundled model's name, or a
    model folder under cached_models_dir(); None when no such model is here. JSON only (no torch), so that
    `onedc info` can name a file's model."""
    import json

    for root in (bundled_dir(), cached_models_dir()):
        for config in sorted(root.glob("*/config.json")):
            if config.parent.name[:1] in "._":
                continue
            try:
                found = json.loads(config.read_text()).get("model_id") == model_id
            except (OSError, ValueError, AttributeError):
                continue
            if found:
                return config.parent.name if root == bundled_dir() else str(config.parent)
    return None
