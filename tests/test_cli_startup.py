"""Start-up of `onedc decompress`: with the model's exported graph at hand (models/export.py), the process imports
torch and what decoding needs, and none of HEAVY_MODULES (issue 8: diffusers, peft, transformers, scipy,
compressai, torch._dynamo, metric networks, training code, plotting); `--reference` decodes the same image with the
diffusers modules."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from onedc_lib.cli import main
from onedc_lib.eval.timing import HEAVY_MODULES, make_image
from onedc_lib.weights import build_model, load_model, save_model

REPO = Path(__file__).resolve().parents[1]


def test_decompress_imports_nothing_heavy(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDC_CACHE", str(tmp_path / "cache"))
    folder = save_model(build_model("nano_q3", seed=1), tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_model(str(folder), decode_only=True)  # exports the graph into the cache
    source = tmp_path / "small.odc"
    source.write_bytes(load_model(str(folder)).compress(make_image(16, 24)).to_bytes())
    # the `onedc` command itself (cli.run exits without the interpreter's teardown: output flushed, exit codes kept);
    # -X importtime lists on stderr every module the process imports
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-X", "importtime", "-m", "onedc_lib.cli", "decompress", str(source), "-o",
               str(tmp_path / "fast.png"), "--model", str(folder)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("fast.png: 24 x 16 (W x H)"), result.stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "torch" in modules and "onedc_lib.models.export" in modules
    heavy = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)]
    assert heavy == []

    (tmp_path / "bad.odc").write_bytes(source.read_bytes()[:-3])
    command[6:9] = [str(tmp_path / "bad.odc"), "-o", str(tmp_path / "bad.png")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "bad.odc" in result.stderr and not (tmp_path / "bad.png").exists()

    assert main(["decompress", str(source), "-o", str(tmp_path / "reference.png"), "--model", str(folder),
                 "--reference"]) == 0
    fast, reference = (np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("fast", "reference"))
    assert fast.shape == (16, 24, 3) and np.array_equal(fast, reference)
