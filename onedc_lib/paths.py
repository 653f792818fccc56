"""Where model files live: the bundled-models folder and the user cache. A module of its own, below both
weights.py (which loads models) and models/export.py (which finds decoder graphs), so neither imports the other."""
from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "weights"
BUNDLED_DIR_ENV = "ONEDC_BUNDLED_DIR"  # another folder of bundled models (tests, a private model zoo)


def bundled_dir() -> Path:
    """Where bundled models live: $ONEDC_BUNDLED_DIR when set, else onedc_lib/weights/ inside the package."""
    return Path(os.environ.get(BUNDLED_DIR_ENV) or BUNDLED_DIR)


def cache_root() -> Path:
    """The user cache (metric weights, exported decoder graphs): $ONEDC_CACHE, default ~/.cache/onedc."""
    return Path(os.environ.get("ONEDC_CACHE") or Path.home() / ".cache" / "onedc")
