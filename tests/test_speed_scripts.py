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


def test_gpu_check_small_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    run_script("gpu_check.py", "--device", "cpu", "--small", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and report["small"] is True
    # the same file decoded twice on the same device by the same float32 path: identical images
    cross = report["cross_device"]
    assert cross["symbols_identical"] and cross["max_abs_diff"] == 0 and cross["psnr_db"] is None
    assert set(report["cases"]) == {"64x64"}
    for size in report["cases"].values():
        assert set(size) == {"float32_eager", "bfloat16_eager", "float32_compiled", "bfloat16_compiled"}
        for case in size.values():
            assert case["encode_s"] > 0 and case["decode_s"] > 0 and case["peak_gb"] > 0 and case["bytes"] > 0
    # the small --large image is 512x384: a 64x48 latent, decoded in 48-pixel tiles
    large = report["large_tiled"]
    assert large["size"] == "512x384" and large["vae_tile"] == 48
    assert large["float32"]["decode_peak_gb"] > 0 and large["bfloat16"]["decode_s"] > 0
    assert report["targets"]["applies"] is False


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


def test_paper_scale_runs_the_fast_mode_alone_with_bf16_weights(tmp_path):
    out = tmp_path / "paper_scale.json"
    run_script("paper_scale.py", "--small", "--modes", "fast", "--bf16-weights", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["weights_dtype"] == "torch.bfloat16" and set(report["modes"]) == {"fast"}
    case = report["cases"]["64x64"]
    assert set(case) == {"fast"} and case["fast"]["peak_rss_gb"] > 0 and case["fast"]["bytes"] > 0


def test_one_direction_compresses_then_decompresses_in_processes_of_their_own(tmp_path):
    odc, enc, dec = tmp_path / "x.odc", tmp_path / "enc.json", tmp_path / "dec.json"
    run_script("one_direction.py", "compress", "--preset", "nano_q3", "--size", "96x64", "--save", str(odc),
               "--json", str(enc))
    run_script("one_direction.py", "decompress", "--preset", "nano_q3", "--file", str(odc), "--json", str(dec))
    compress, decompress = json.loads(enc.read_text()), json.loads(dec.read_text())
    assert compress["bytes"] == decompress["bytes"] == len(odc.read_bytes())
    assert compress["size"] == decompress["size"] == "96x64"
    for report, side in ((compress, "compress"), (decompress, "decompress")):
        assert report["weights_dtype"] == "torch.bfloat16"
        assert report[f"{side}_peak_gb"] >= report[f"{side}_start_gb"] > 0 and report["loaded_gb"] > 0
