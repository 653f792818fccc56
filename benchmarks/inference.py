"""CPU wall times of OneDC compress / decompress (random weights), per component, and model sizes.

    python benchmarks/inference.py [--sd15] [--json results/inference.json] [--repeats 5] [--height 512 --width 768]
                                   [--threads N] [--no-macs]

Models: nano (`build_model("nano_q3")`, always) and sd15 (`build_model("sd15")`, full size, ~1.4 B parameters,
~5.6 GB fp32; only with --sd15). Weights are seeded random: speed does not depend on the values, but the y stream's
size does, so the bytes printed are not rates of a trained model.

What is timed: the real `OneDC.compress` (image tensor -> CompressedImage) and `OneDC.decompress` (file bytes ->
image tensor), with timers wrapped around the components they call (instance-level wrappers, nothing else changed):
  encode:  vae_enc       VAE encoder (posterior mean, x 0.18215)
           g_a           codec.analysis (patch embedding, UNet2DModel feature extractor, tail -> y, sem)
           h_enc+z       codec.hyper_analysis + FSQ
           prior_f64     the entropy parameters in float64: h_dec + the four-step prior (codec.hyper_synthesis,
                         codec.encode_steps)
           rans+rest     the rest: scale -> table index, rANS encode, z packing, container, padding
  decode:  prior_f64     float64 h_dec + four-step prior (codec.hyper_synthesis, codec.decode_steps without the
                         symbol decoding inside it)
           rans+rest     the rest: the incremental rANS decode of each step's symbols, container parsing, z unpacking
           h_sem+g_s     codec.semantic + codec.synthesis
           unet          the one-step generator (vae_reduction + UNet at t = 999 + eps -> x0)
           vae_dec       VAE decoder (windowed mid-block attention), crop, clamp
The model id (SHA-256 over every weight, computed once per model and cached) is computed before the timed runs and
reported on its own. nano: one warm-up, then the median of --repeats runs per entry. sd15: one warm-up at 128x192
(first-call allocator / oneDNN set-up), then a single run at the full size (minutes on 2 cores).

GMACs per component (--no-macs to skip) are counted with torch's FlopCounterMode (MACs = FLOPs / 2) on the
meta device, so they cost no memory (the prior's count is that of encode_steps; decode_steps runs the same convs).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib.config import load_config
from onedc_lib.eval.timing import (  # the timing machinery lives in the library
    DECODE_PARTS,
    ENCODE_PARTS,
    MACS_OF_PART,
    component_gmacs,
    make_image,
    model_sizes,
    timed_round_trip,
)
from onedc_lib.models.onedc import OneDC
from onedc_lib.weights import build_model


def bench(preset: str, height: int, width: int, repeats: int, warmup_size: tuple[int, int] | None) -> dict:
    print(f"\n[{preset}] building (random weights) ...", flush=True)
    start = time.perf_counter()
    model = build_model(preset)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    _ = model.model_id  # cached: hashing every weight is a one-time cost per model
    model_id_s = time.perf_counter() - start
    print(f"[{preset}] built in {build_s:.1f} s, model id in {model_id_s:.1f} s", flush=True)
    x = make_image(height, width)
    if warmup_size is not None:
        timed_round_trip(model, make_image(*warmup_size))
    else:
        timed_round_trip(model, x)
    runs = []
    for i in range(repeats):
        runs.append(timed_round_trip(model, x))
        r = runs[-1]
        print(f"[{preset}] run {i + 1}/{repeats}: encode {r['encode']['total']:.3f} s "
              f"(cpu {r['cpu_s']['encode']:.3f}), decode {r['decode']['total']:.3f} s (cpu {r['cpu_s']['decode']:.3f}),"
              f" load {r['loadavg_1min'][0]:.1f}", flush=True)
    median = {side: {k: statistics.median(r[side][k] for r in runs) for k in runs[0][side]}
              for side in ("encode", "decode")}
    result = {"preset": preset, "height": height, "width": width, "repeats": repeats, "build_s": build_s,
              "model_id_s": model_id_s, "median_s": median, "runs": runs, "bytes": runs[0]["bytes"],
              "bpp": runs[0]["bpp"], "params": model_sizes(model)}
    del model
    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------------------- report

def print_sizes(sizes_by_model: dict[str, dict[str, int]]) -> None:
    names = list(sizes_by_model)
    print("\nParameters per module (M)")
    print(f"  {'module':<62}" + "".join(f"{n:>12}" for n in names))
    for key in next(iter(sizes_by_model.values())):
        print(f"  {key:<62}" + "".join(f"{sizes_by_model[n][key] / 1e6:>12.3f}" for n in names))


def print_times(results: dict[str, dict], macs: dict[str, dict[str, float]]) -> None:
    for side, parts in (("encode", ENCODE_PARTS), ("decode", DECODE_PARTS)):
        print(f"\n{side} wall time (s; nano: median of repeats, sd15: one run)")
        header = f"  {'component':<12}"
        for name, r in results.items():
            header += f"{name + ' s':>12}{'share':>7}"
            if name in macs:
                header += f"{'GMACs':>9}"
        print(header)
        for part in parts + ("total",):
            line = f"  {part:<12}"
            for name, r in results.items():
                t = r["median_s"][side][part]
                line += f"{t:>12.3f}{100 * t / r['median_s'][side]['total']:>6.0f}%"
                if name in macs:
                    m = macs[name]
                    keys = MACS_OF_PART.get(part)
                    if part == "total":
                        keys = [k for p in parts for k in MACS_OF_PART[p]]
                    line += f"{sum(m[k] for k in keys):>9.2f}"
            print(line)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd15", action="store_true", help="also the full-size sd15 model (slow, ~6 GB RAM)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--repeats", type=int, default=5, help="nano runs (median); sd15 always runs once")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-macs", action="store_true", help="skip the GMAC count")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "loadavg_at_start": os.getloadavg()}
    print(f"{machine['platform']}, {machine['cpu_count']} cpus, torch {machine['torch']} "
          f"({machine['torch_threads']} threads); image {args.height}x{args.width} (HxW)")

    presets = {"nano": "nano_q3"}
    if args.sd15:
        presets["sd15"] = "sd15"
    macs = {}
    if not args.no_macs:
        for name, preset in presets.items():
            macs[name] = component_gmacs(preset, args.height, args.width)
    results = {}
    for name, preset in presets.items():
        if name == "sd15":
            results[name] = bench(preset, args.height, args.width, 1, warmup_size=(128, 192))
        else:
            results[name] = bench(preset, args.height, args.width, args.repeats, warmup_size=None)

    sizes = {name: r["params"] for name, r in results.items()}
    if "sd15" not in sizes:  # sizes of the full model cost nothing on the meta device
        with torch.device("meta"):
            sizes["sd15"] = model_sizes(OneDC(load_config("sd15")))
    print_sizes(sizes)
    print_times(results, macs)
    for name, r in results.items():
        print(f"\n{name}: {r['bytes']} bytes ({r['bpp']:.4f} bpp, random weights), build {r['build_s']:.1f} s, "
              f"model id {r['model_id_s']:.1f} s")

    out = {"machine": machine, "height": args.height, "width": args.width, "results": results,
           "params": sizes, "gmacs": macs}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()
