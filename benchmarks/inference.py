"""Inference speed and memory of OneDC (random weights): per component, at several sizes, against multi-step
decoding, and the start-up of a whole `onedc decompress` process.

    python benchmarks/inference.py [--sizes 512x768,1408x2048,2816x4096] [--repeats 3] [--threads 1]
                                   [--device cpu|cuda] [--sd15] [--steps 4,20] [--startup-runs 5]
                                   [--out results/speed] [--no-macs]

For each size (H x W) of the nano model (`build_model("nano_q3")`; with --sd15 also sd15 at the first size, one
run): one warm-up (at the first size, at most 512x768), then the median of --repeats round trips (one at sizes above 2 Mpx) of the
real `OneDC.compress` / `OneDC.decompress` with per-component wall times (onedc_lib.eval.timing: vae_enc, g_a,
h_enc+z, prior_f64 (float64 h_dec + four-step prior), rans+rest; h_sem+g_s, unet, vae_dec) and the peak memory of
each side (CPU: the process's RSS, sampled; CUDA: torch.cuda.max_memory_allocated). Decoding runs as
`model.decode_options` says (channels_last, bf16 autocast on CUDA, tiled VAE above 1024 px); --reference adds a
decode with the plain path (NCHW, float32) at the first size for comparison.

At the first size the generator also runs as a k-step DDIM sampler (--steps) on the same inputs: the decode time
with k UNet passes, and its ratio to the one-step decode. Start-up: `onedc decompress` of a 64x96 file with the
default model as a whole process (median of --startup-runs), with OMP_NUM_THREADS=1 and with the environment as it
is, and the heavy modules the process imports (python -X importtime).

Writes OUT/NAME.json (everything, with the machine, its load (uptime) and the git commit) and OUT/NAME.md (the
tables); NAME defaults to inference_<device type>. Speed does not depend on the weights' values; the y stream's size does,
so bytes are not a trained model's rates.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib.bitstream import atomic_write  # noqa: E402
from onedc_lib.eval.timing import (  # noqa: E402  (the machinery lives in the library)
    DECODE_PARTS,
    ENCODE_PARTS,
    component_gmacs,
    make_image,
    model_sizes,
    multistep_decode,
    startup_time,
    timed_round_trip,
)
from onedc_lib.models.onedc import REFERENCE_DECODING  # noqa: E402
from onedc_lib.weights import build_model  # noqa: E402

LARGE = 2_000_000  # pixels above which one round trip is timed instead of --repeats


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def median_of(runs: list[dict]) -> dict:
    median = {side: {k: statistics.median(r[side][k] for r in runs) for k in runs[0][side]}
              for side in ("encode", "decode")}
    median["peak_mb"] = {side: max(r["memory"][side]["peak_mb"] for r in runs) for side in ("encode", "decode")}
    median["cpu_s"] = {side: statistics.median(r["cpu_s"][side] for r in runs) for side in ("encode", "decode")}
    return median


def bench_sizes(preset: str, sizes: list[tuple[int, int]], repeats: int, device: str, steps: list[int],
                reference: bool, macs: bool, overrides: dict | None = None) -> dict:
    model = build_model(preset, **(overrides or {})).to(device)
    _ = model.model_id
    warmup = (min(sizes[0][0], 512), min(sizes[0][1], 768))
    timed_round_trip(model, make_image(*warmup).to(device))  # warm-up (allocator, oneDNN primitives)
    out = {"preset": preset, "overrides": dict(overrides or {}), "model_id": model.model_id.hex(), "decode_options": repr(model.decode_options),
           "params": model_sizes(model), "sizes": {}}
    for height, width in sizes:
        x = make_image(height, width).to(device)
        n = 1 if height * width > LARGE else repeats
        runs = []
        for i in range(n):
            runs.append(timed_round_trip(model, x))
            r = runs[-1]
            print(f"[{preset} {height}x{width}] run {i + 1}/{n}: encode {r['encode']['total']:.3f} s "
                  f"(peak {r['memory']['encode']['peak_mb']:.0f} MB), decode {r['decode']['total']:.3f} s "
                  f"(peak {r['memory']['decode']['peak_mb']:.0f} MB); {uptime()}", flush=True)
        entry = {"height": height, "width": width, "runs": runs, "median": median_of(runs),
                 "bytes": runs[0]["bytes"], "bpp": runs[0]["bpp"]}
        if macs and not overrides:
            entry["gmacs"] = component_gmacs(preset, height, width)
        if (height, width) == sizes[0]:
            if steps:
                entry["multistep"] = multistep_decode(model, x, steps, one_step=runs[len(runs) // 2])
                print(f"[{preset} {height}x{width}] multi-step: {json.dumps(entry['multistep'])}", flush=True)
            if reference:
                fast_options, model.decode_options = model.decode_options, REFERENCE_DECODING
                try:
                    ref_runs = [timed_round_trip(model, x) for _ in range(n)]
                finally:
                    model.decode_options = fast_options
                entry["reference_decode"] = median_of(ref_runs)["decode"]
                print(f"[{preset} {height}x{width}] reference path decode: "
                      f"{entry['reference_decode']['total']:.3f} s", flush=True)
        out["sizes"][f"{height}x{width}"] = entry
    return out


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [f"# OneDC inference on {machine['device']} ({machine.get('gpu') or machine.get('cpu')}, "
             f"{machine['torch_threads']} torch threads)", "",
             f"Load: `{machine['uptime_at_start']}` at the start, `{report['uptime_at_end']}` at the end "
             "(other processes share the 2 cores: wall times are inflated by the load; the CPU seconds of the "
             "process are not). Random weights. Seconds: median of the runs (wall clock per component).", ""]
    for name, result in report["models"].items():
        if result.get("overrides"):
            lines += [f"{name} with overrides: `{json.dumps(result['overrides'])}`", ""]
        for side, parts in (("encode", ENCODE_PARTS), ("decode", DECODE_PARTS)):
            sizes = list(result["sizes"])
            lines += [f"## {name} {side}", "", "| component | " + " | ".join(sizes) + " |",
                      "|---|" + "---:|" * len(sizes)]
            for part in (*parts, "total"):
                cells = [f"{result['sizes'][s]['median'][side][part]:.3f}" for s in sizes]
                lines.append(f"| {part} | " + " | ".join(cells) + " |")
            cells = [f"{result['sizes'][s]['median']['cpu_s'][side]:.3f}" for s in sizes]
            lines.append("| CPU s of the process (all parts) | " + " | ".join(cells) + " |")
            cells = [f"{result['sizes'][s]['median']['peak_mb'][side]:.0f}" for s in sizes]
            lines += ["| peak memory (RSS or CUDA allocated, MB) | " + " | ".join(cells) + " |", ""]
        first = next(iter(result["sizes"].values()))
        if "multistep" in first:
            lines += [f"## {name}: one step against k-step sampling ({first['height']}x{first['width']})", "",
                      "| generator | UNet s | decode s | decode / one-step decode |", "|---|---:|---:|---:|"]
            for key, m in first["multistep"].items():
                ratio = m.get("decode_ratio_vs_one_step", 1.0)
                lines.append(f"| {key.replace('_', ' ')} | {m['unet_s']:.3f} | {m['decode_s']:.3f} | {ratio:.1f} |")
            lines.append("")
        if "reference_decode" in first:
            lines += [f"Reference decode path (NCHW, float32) at {first['height']}x{first['width']}: "
                      f"{first['reference_decode']['total']:.3f} s (unet {first['reference_decode']['unet']:.3f}, "
                      f"vae_dec {first['reference_decode']['vae_dec']:.3f}).", ""]
    for label, s in report.get("startup", {}).items():
        lines += [f"Start-up, `onedc decompress` of a 64x96 file ({label}): median {s['median_s']:.2f} s of "
                  f"{len(s['runs_s'])} runs; heavy modules imported: {', '.join(s['heavy_modules_imported']) or 'none'}"
                  f"; top-level imports (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s["top_level_import_s"].items()),
                  ""]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            height, width = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not HEIGHTxWIDTH") from None
        sizes.append((height, width))
    return sizes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512x768,1408x2048,2816x4096", help="HxW[,HxW...] for nano")
    parser.add_argument("--presets", default="nano_q3",
                        help="nano presets measured in turn, e.g. nano_q3,nano_sr (the pretrained x4 decoder in the "
                             "VAE slot): the same sizes, the first one's decode time is the others' peer")
    parser.add_argument("--repeats", type=int, default=3, help="round trips per size up to 2 Mpx (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sd15", action="store_true", help="also sd15 at the first size (one run; ~6 GB RAM)")
    parser.add_argument("--steps", default="4,20", help="k of the k-step comparison ('' for none)")
    parser.add_argument("--reference", action="store_true", help="also decode with the plain path at the first size")
    parser.add_argument("--startup-runs", type=int, default=5, help="0: skip the start-up measurement")
    parser.add_argument("--out", type=Path, default=Path("results/speed"))
    parser.add_argument("--name", help="file stem in OUT (default: inference_<device type>)")
    parser.add_argument("--no-macs", action="store_true", help="skip the GMAC count")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="nano config override (dotted key, YAML value), e.g. generator.unet.attention_head_dim=2")
    args = parser.parse_args(argv)
    import yaml

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set: {item!r} is not KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    if args.threads:
        torch.set_num_threads(args.threads)
    from onedc_lib.eval.runner import device_info

    machine = {**device_info(args.device), "platform": platform.platform(), "processor": platform.processor(),
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "uptime_at_start": uptime()}
    print(f"{machine['platform']}, {machine['cpu_count']} cpus, {machine['torch_threads']} threads; "
          f"{machine['uptime_at_start']}", flush=True)
    sizes = parse_sizes(args.sizes)
    steps = [int(k) for k in args.steps.split(",") if k]
    start = time.perf_counter()
    report = {"format": 1, "kind": "inference", "machine": machine, "models": {}}
    presets = [p for p in args.presets.split(",") if p]
    for preset in presets:
        report["models"][preset] = bench_sizes(preset, sizes, args.repeats, args.device, steps, args.reference,
                                               not args.no_macs, overrides)
    peer = report["models"][presets[0]]["sizes"]
    for preset in presets[1:]:
        for size, entry in report["models"][preset]["sizes"].items():
            for side in ("encode", "decode"):
                ratio = entry["median"][side]["total"] / peer[size]["median"][side]["total"]
                print(f"{preset} / {presets[0]} at {size}: {side} time x{ratio:.2f}", flush=True)
    if args.sd15:
        report["models"]["sd15"] = bench_sizes("sd15", sizes[:1], 1, args.device, [], False, not args.no_macs)
    if args.startup_runs:
        report["startup"] = {"OMP_NUM_THREADS=1": startup_time(args.startup_runs, env={"OMP_NUM_THREADS": "1"}),
                             "environment as is": startup_time(args.startup_runs)}
    report["uptime_at_end"] = uptime()
    report["wall_s"] = time.perf_counter() - start
    try:
        from onedc_lib.eval.runner import git_commit
        report["git_commit"] = git_commit()
    except ImportError:
        report["git_commit"] = None
    stem = args.name or f"inference_{torch.device(args.device).type}"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / f"{stem}.json", (json.dumps(report, indent=1) + "\n").encode())
    text = markdown(report)
    atomic_write(args.out / f"{stem}.md", (text + "\n").encode())
    print("\n" + text)
    return report


if __name__ == "__main__":
    main()
