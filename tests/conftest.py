from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPAT_DIR = REPO.parent / "shared" / "compat"


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    """The compatibility data beside the checkout (../shared/compat); tests that need it skip without it."""
    if not (COMPAT_DIR / "index.json").is_file():
        pytest.skip(f"compatibility data not found at {COMPAT_DIR}")
    return COMPAT_DIR
