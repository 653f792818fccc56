"""Start-up of `onedc decompress`: the process imports what decoding needs and nothing heavier (issue 8: no
compressai, diffusers pipelines, metric networks, training code or plotting on the compress/decompress path)."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from onedc_lib.eval.timing import HEAVY_MODULES, make_image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a whole process importing torch and diffusers: 10 s on an idle 2-core machine, 100 s on a busy one
def test_decompress_imports_nothing_heavy(tmp_path):
    from onedc_lib.weights import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the default model may be untrained
        data = load_model(None).compress(make_image(16, 16)).to_bytes()
    source = tmp_path / "small.odc"
    source.write_bytes(data)
    check = ("import sys; from onedc_lib.cli import main; code = main(['decompress', sys.argv[1], '-o', sys.argv[2]]); "
             "print(' '.join(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", check, str(source), str(tmp_path / "out.png")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    modules = result.stdout.split()
    assert "torch" in modules and (tmp_path / "out.png").is_file()
    heavy = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)]
    assert heavy == []
