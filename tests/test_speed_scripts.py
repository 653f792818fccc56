"""Smoke runs of the paper-scale speed scripts (benchmarks/gpu_check.py, benchmarks/paper_scale.py) in their
--small modes on the CPU: they run to the end as separate processes and write the JSON their readers expect."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_paper_scale_small_writes_both_modes(tmp_path):
    out = tmp_path / "paper_scale.json"
    run_script("paper_scale.py", "--small", "--json", str(out))
    report = json.loads(out.read_text())
    case = report["cases"]["64x64"]
    for mode in ("reference", "fast"):
        assert case[mode]["encode_s"] > 0 and case[mode]["decode_s"] > 0 and case[mode]["peak_rss_gb"] > 0
    assert case["ratio_decode"] == case["reference"]["decode_s"] / case["fast"]["decode_s"]
    # bf16 changes the image by rounding, not more (an independent bound: 8-bit PSNR of two decodes)
    assert case["psnr_fast_decode_of_reference_file"] is not None and case["psnr_fast_decode_of_reference_file"] > 25
    assert "bfloat16" in report["modes"]["fast"]["decoding"] and "float32" in report["modes"]["reference"]["decoding"]
