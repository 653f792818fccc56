"""After the README's two commands a user can run what the README shows: it says where `onedc` is (the checkout's
environment, not PATH), that command exists there, and `make demo` / `make notebooks` end by saying what they did."""
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_readme_says_how_to_run_onedc_and_it_is_there():
    readme = (REPO / "README.md").read_text()
    assert ".venv/bin/onedc" in readme and "source .venv/bin/activate" in readme
    assert re.search(r"(?m)^VENV \?= \.venv$", (REPO / "Makefile").read_text())  # where make puts the environment
    onedc = Path(sys.executable).parent / "onedc"  # the environment the tests run in: `make test` uses .venv
    assert onedc.is_file() and os.access(onedc, os.X_OK)


def test_make_demo_and_notebooks_end_with_what_they_did():
    demo = _recipe("demo")
    assert demo[-1].startswith("@echo")
    said = " ".join(line for line in demo if line.startswith("@echo"))
    assert "out/demo" in said and "$(VENV)/bin/onedc" in said
    assert _recipe("notebooks")[-1].startswith("@echo") and "done" in _recipe("notebooks")[-1]
