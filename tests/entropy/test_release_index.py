"""The release's scale -> table index arithmetic (compat README 9.2) against its goldens: the 255 float32 CPU
thresholds, the CUDA emulation, every bfloat16 scale (the release's default GPU numerics), and the indexes of
the block, prior and end-to-end goldens."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from onedc_lib.entropy.release_format import index_thresholds, release_index

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def golden(compat_dir):
    return np.load(compat_dir / "scale_to_index_release.npz")


@pytest.mark.parametrize("arithmetic, key", [("cpu", "threshold_f32"), ("cuda", "threshold_f32_cuda_emulated")])
def test_thresholds_are_the_release_thresholds(golden, arithmetic, key):
    assert np.array_equal(index_thresholds(arithmetic)[1:], golden[key][1:])
    assert index_thresholds(arithmetic)[0] == 0


@pytest.mark.parametrize("arithmetic, suffix", [("cpu", ""), ("cuda", "_cuda_emulated")])
@pytest.mark.parametrize("case", ["sweep", "boundary", "bf16"])
def test_indexes_of_the_golden_sets(golden, arithmetic, suffix, case):
    assert np.array_equal(release_index(golden[f"{case}_scales"], arithmetic), golden[f"{case}_index{suffix}"])


def test_bf16_scales_map_alike_under_every_arithmetic(golden):
    """Under the default GPU numerics the index depends on the bf16 scale only: CPU, CUDA and exact agree."""
    scales = golden["bf16_scales"]
    assert np.array_equal(release_index(scales, "cpu"), golden["bf16_index_float64"])
    assert np.array_equal(release_index(scales, "cuda"), golden["bf16_index_float64"])
    assert np.array_equal(golden["bf16_scales"].view(np.uint32) >> 16, golden["bf16_bits"])


def test_table_scales_and_edges(golden, compat_dir):
    assert np.array_equal(release_index(golden["table_scales"]), golden["table_index"])
    assert int(np.sum(release_index(golden["table_scales"]) != np.arange(256))) == 36  # README 7.3
    block = load_file(str(compat_dir / "block_scale_to_index.safetensors"))
    for name in ("edge", "sweep", "scale_table", "scale_table_x1p1e-6", "scale_table_x1m1e-6"):
        scales = block[f"input.scales_{name}"].numpy()
        assert np.array_equal(release_index(scales), block[f"output.index_{name}"].numpy()), name
    assert release_index(np.array([np.nan, -1.0, 0.0, np.inf], dtype=np.float32)).tolist() == [0, 0, 0, 255]


@pytest.mark.parametrize("name, steps", [("prior_fourpart_N32", "write_step{}"), ("codec_small_e2e_tensors",
                                                                                    "output.write_step{}")])
def test_write_step_indexes_of_the_model_goldens(compat_dir, name, steps):
    tensors = load_file(str(compat_dir / f"{name}.safetensors"))
    prefix = "" if name.startswith("codec") else "output."
    for step in range(4):
        key = prefix + steps.format(step)
        assert np.array_equal(release_index(tensors[f"{key}_scales"].numpy()), tensors[f"{key}_indexes"].numpy())


def test_shipped_cpu_thresholds_are_computed_with_the_release_log(tmp_path):
    """The shipped file is what the binary search gives under MKL's vendor-neutral log (the release's), computed
    afresh in a process started with MKL_CBWR=COMPATIBLE; without that setting the writer refuses."""
    script = ("import numpy as np, sys; from onedc_lib.entropy.release_format import search_thresholds; "
              "np.save(sys.argv[1], search_thresholds('cpu'))")
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.npy")], env=env, check=True, timeout=300)
    assert np.array_equal(np.load(tmp_path / "t.npy"), index_thresholds("cpu"))
    env.pop("MKL_CBWR")
    refused = subprocess.run([sys.executable, "-m", "onedc_lib.entropy.release_thresholds"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "MKL_CBWR=COMPATIBLE" in refused.stderr
