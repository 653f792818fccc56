import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
COMPAT_DIR = REPO.parent / "shared" / "compat"


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    """The compatibility data beside the checkout (../shared/compat); tests that need it skip without it."""
    if not (COMPAT_DIR / "index.json").is_file():
        pytest.skip(f"compatibility data not found at {COMPAT_DIR}")
    return COMPAT_DIR


class Golden:
    """A block golden: `param.*` as a state_dict, `input.*`, `output.*` and the `info` metadata."""

    def __init__(self, path: Path):
        tensors = load_file(path)
        self.params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
        self.inputs = {k[len("input."):]: v for k, v in tensors.items() if k.startswith("input.")}
        self.outputs = {k[len("output."):]: v for k, v in tensors.items() if k.startswith("output.")}
        with safe_open(path, "pt") as f:
            self.info = json.loads((f.metadata() or {}).get("info", "{}"))


@pytest.fixture(scope="session")
def golden(compat_dir):
    """golden(name) -> Golden for compat_dir / f"{name}.safetensors"."""
    return lambda name: Golden(compat_dir / f"{name}.safetensors")


@pytest.fixture(scope="session")
def manifest(compat_dir):
    """manifest(name, prefix) -> [(key without prefix, shape)] in the release's state_dict order."""
    def entries(name: str, prefix: str) -> list[tuple[str, list[int]]]:
        data = json.loads((compat_dir / f"manifest_{name}.json").read_text())
        return [(key[len(prefix):], shape) for key, shape, _ in data["keys_in_state_dict_order"]
                if key.startswith(prefix)]
    return entries
