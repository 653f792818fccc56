import json
import os
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
COMPAT_DIR = REPO.parent / "shared" / "compat"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs torch on one thread: small tensors gain nothing from more, and on a busy machine OpenMP's
    barriers make two threads many times slower than one. Tests that need other counts set them themselves."""
    import torch

    original = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(original)


@pytest.fixture(scope="session", autouse=True)
def no_bundled_models(tmp_path_factory):
    """Tests see no bundled models ($ONEDC_BUNDLED_DIR = an empty folder, inherited by the processes they start):
    preset names then mean seeded random weights whatever is committed in onedc_lib/weights/. Tests of the
    bundled models themselves read onedc_lib.weights.BUNDLED_DIR or undo this with monkeypatch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONEDC_BUNDLED_DIR", str(tmp_path_factory.mktemp("no_bundled_models")))
        yield


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    """The compatibility data beside the checkout (../shared/compat); tests that need it skip without it, or fail
    when ONEDC_REQUIRE_COMPAT is set (.ci/run sets it: CI must not pass with its oracles skipped)."""
    if not (COMPAT_DIR / "index.json").is_file():
        reason = f"compatibility data not found at {COMPAT_DIR}"
        if os.environ.get("ONEDC_REQUIRE_COMPAT"):
            pytest.fail(f"ONEDC_REQUIRE_COMPAT is set but {reason}", pytrace=False)
        pytest.skip(reason)
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


@pytest.fixture
def run_fuzz_harness(tmp_path):
    """run_fuzz_harness(name, runs) -> number of inputs executed by benchmarks/<name>.py (asserts exit 0). A count of
    runs, not a time: the same work however loaded the machine is.

    atheris.Fuzz() exits its process, hence the subprocess, run in tmp_path so that crash artifacts never land in
    the checkout. A forked child inherits the peak RSS of this (torch-loaded) pytest process, which libFuzzer's
    default 2 GB limit would count as its own, so the limit is raised above that baseline.
    """
    import importlib.util
    import re
    import subprocess
    import sys

    if importlib.util.find_spec("atheris") is None:  # a test dependency: missing fails, never skips
        pytest.fail("atheris is not installed (pip install -e '.[test]')", pytrace=False)
    repo = Path(__file__).resolve().parents[1]

    def run(name: str, runs: int) -> int:
        result = subprocess.run(
            [sys.executable, str(repo / "benchmarks" / f"{name}.py"), f"-runs={runs}", "-rss_limit_mb=8192"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return int(re.search(r"stat::number_of_executed_units: (\d+)", result.stderr).group(1))

    return run


@pytest.fixture
def provisioned_decoders():
    """check(meta) -> the user cache's decoders folder, after skipping (with the reason) unless it holds every
    pretrained VAE-slot decoder that a bundled model's config.json refers to ("provisioned")."""
    from onedc_lib.models import sr_decoder

    def check(meta: dict) -> Path:
        folder = sr_decoder.cache_dir()
        for entry in meta.get("provisioned", []):
            if not (folder / sr_decoder.PRETRAINED[entry["vae"]].file).is_file():
                pytest.skip(f"the bundled model's decoder {entry['vae']} is not provisioned in {folder} "
                            "(python -m onedc_lib.models.sr_decoder; make setup does it)")
        return folder

    return check
