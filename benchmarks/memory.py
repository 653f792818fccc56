"""Peak memory (RSS) and time of `onedc compress` and `onedc decompress` on large photographs, one process each.

    python benchmarks/memory.py                          # 2000x1500 and 4000x3000, the default model
    python benchmarks/memory.py --sizes 2048x1536 --model nano --ops compress --cap-gb 6 --json out/memory.json

Each run is a fresh process running the `onedc` command line (cli.main) with `--model`; it reports its own peak
RSS (getrusage) and the peak after loading the model, so the image's own cost is their difference. The test image
is the `astronaut` sample photograph resized to the size (a photograph, not noise: the rate is realistic). A run
whose RSS passes --cap-gb is killed and reported as above the cap (so that a machine shared with others survives
a measurement of code that needs too much).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
import onedc_lib.cli as cli

loaded = {}
load = cli._load_model

def timed_load(*args, **kwargs):
    model = load(*args, **kwargs)
    loaded["rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded["t"] = time.perf_counter()
    return model

cli._load_model = timed_load  # to tell the model's memory from the image's
code = cli.main(sys.argv[1:])
end = time.perf_counter()
print(json.dumps({"code": code, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "after_load_kb": loaded.get("rss_kb"), "work_s": end - loaded.get("t", end)}))
"""


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(argv: list[str], cap_gb: float, threads: int) -> dict:
    """One `onedc` run in a fresh process; killed when its RSS passes cap_gb."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", CHILD, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    highest = 0
    while process.poll() is None:
        highest = max(highest, _rss_kb(process.pid))
        if highest > cap_gb * 2**20:
            process.kill()
            process.wait()
            return {"killed_above_gb": cap_gb, "seconds": time.perf_counter() - started}
        time.sleep(0.05)
    out, err = process.communicate()
    if process.returncode != 0 or not out.strip():
        return {"error": (err.strip().splitlines() or ["?"])[-1], "seconds": time.perf_counter() - started}
    facts = json.loads(out.strip().splitlines()[-1])
    return {"exit": facts["code"], "peak_gb": facts["peak_kb"] / 2**20,
            "after_load_gb": (facts["after_load_kb"] or 0) / 2**20, "work_s": facts["work_s"],
            "seconds": time.perf_counter() - started, "stderr_tail": err.strip().splitlines()[-1:] if facts["code"]
            else []}


def test_image(path: Path, width: int, height: int) -> Path:
    import numpy as np
    import torch
    from PIL import Image

    from onedc_lib.data.samples import sample_image

    x = torch.nn.functional.interpolate(sample_image("astronaut")[None], size=(height, width), mode="bicubic",
                                        align_corners=False)[0].clamp(0, 1)
    Image.fromarray((x * 255).round().byte().permute(1, 2, 0).numpy().astype(np.uint8)).save(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["2000x1500", "4000x3000"], metavar="WxH")
    parser.add_argument("--ops", nargs="+", choices=("compress", "decompress"), default=["compress", "decompress"])
    parser.add_argument("--model", default=None, help="model name or folder (default: the default model)")
    parser.add_argument("--cap-gb", type=float, default=8.0, help="kill a run above this RSS (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    model = ["--model", args.model] if args.model else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.lower().split("x"))
            image = test_image(Path(tmp) / f"{size}.png", width, height)
            odc, png = Path(tmp) / f"{size}.odc", Path(tmp) / f"{size}.out.png"
            for op, argv_ in (("compress", ["compress", str(image), "-o", str(odc), "-f", *model]),
                              ("decompress", ["decompress", str(odc), "-o", str(png), "-f", *model])):
                if op not in args.ops:
                    continue
                if op == "decompress" and not odc.is_file():
                    rows.append({"size": size, "op": op, "skipped": "no file from compress"})
                    continue
                row = {"size": size, "op": op, **run_child(argv_, args.cap_gb, args.threads)}
                rows.append(row)
                shown = (f"peak {row['peak_gb']:.2f} GB (model loaded: {row['after_load_gb']:.2f} GB), "
                         f"{row['work_s']:.1f} s after loading, {row['seconds']:.1f} s in all"
                         if "peak_gb" in row else
                         f"killed above {row['killed_above_gb']} GB after {row['seconds']:.0f} s"
                         if "killed_above_gb" in row else f"failed: {row['error']}")
                print(f"{size:>10} {op:10} {shown}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"threads": args.threads, "model": args.model or "default",
                                               "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
