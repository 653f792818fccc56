"""The paper-scale model encoded and decoded the release's way and in our fast mode, in one process.

    python benchmarks/paper_scale.py --json results/speed/paper_scale_cpu.json --sizes 768x512 --repeats 1
    python benchmarks/paper_scale.py --model RELEASE_FOLDER [--vae SD21_VAE] --json out.json
    python benchmarks/paper_scale.py --small --json /tmp/ps.json        # the suite's smoke run (nano, seconds)
    python benchmarks/paper_scale.py --modes fast --bf16-weights --sizes 2048x1408 --json out.json  # memory

The model is sd15 with seeded random weights (speed does not depend on the values), or --model a release
checkpoint folder (weights.load_release_checkpoint). Each size (W x H) is compressed and decompressed --repeats
times in each mode, the modes alternating so that both see the same load on a shared machine:
- reference: the release's way: eager diffusers modules, float32, NCHW, no compile, no exported graph
  (EncodeOptions(), REFERENCE_DECODING);
- fast: FAST_ENCODING / FAST_DECODING (bf16 autocast of the analysis networks, the generator and the VAE decoder,
  channels_last; the entropy path stays float64).
One warm-up round trip per mode first (at --warmup, default 64x64). Writes {"device", "machine", "load", "cases":
{SIZE: {"reference": {"encode_s", "decode_s", "peak_rss_gb", ...}, "fast": {...}, "psnr_fast_vs_reference",
"psnr_fast_decode_of_reference_file", "same_file", "ratio_*"}}} and prints the ratios reference / fast, of wall
seconds and of the process's CPU seconds (on a shared machine the load inflates wall clock; CPU seconds much less).
Seconds are medians of the repeats; peak_rss_gb is the process's RSS (the model's weights included).
--modes runs one mode alone (no ratios then); --bf16-weights stores the image networks' weights in bf16 before the
fast mode runs (OneDC.cast_weights: half the weights' memory, the generator's LoRA merged), as a fast-only process
would; with both modes (one size) the reference's repeats run first on the float32 weights, then the cast, then
the fast mode's: `--sizes 768x512 --bf16-weights` is the speed table's run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib.bitstream import atomic_write  # noqa: E402
from onedc_lib.eval.modes import image_psnr, options, parse_sizes, round_trip, summary  # noqa: E402
from onedc_lib.eval.runner import device_info  # noqa: E402
from onedc_lib.eval.timing import make_image  # noqa: E402
from onedc_lib.models.onedc import (  # noqa: E402
    FAST_DECODING,
    FAST_ENCODING,
    REFERENCE_DECODING,
    EncodeOptions,
    cpu_has_bf16,
)

MODES = {"reference": (EncodeOptions(), REFERENCE_DECODING), "fast": (FAST_ENCODING, FAST_DECODING)}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def record(runs: list[dict], device: torch.device) -> dict:
    out = summary(runs)
    if device.type == "cpu":
        out["peak_rss_gb"] = out["peak_gb"]
    return out


def measure_size(model, size: tuple[int, int], repeats: int, modes: list[str], cast=None) -> dict:
    """`cast`: called once before the first fast round trip (the float32 weights are gone after it), so the
    reference's repeats run first, then the fast mode's."""
    width, height = size
    x = make_image(height, width)
    runs = {mode: [] for mode in modes}
    order = ([(i, mode) for mode in modes for i in range(repeats)] if cast is not None
             else [(i, mode) for i in range(repeats) for mode in modes])
    for i, mode in order:
        if mode == "fast" and cast is not None:
            cast()
        encoding, decoding = MODES[mode]
        runs[mode].append(round_trip(model, x, encoding, decoding))
        r = runs[mode][-1]
        print(f"{width}x{height} {mode} {i + 1}/{repeats}: encode {r['encode']['s']:.2f} s, decode "
              f"{r['decode']['s']:.2f} s, peak {max(r['encode']['peak_gb'], r['decode']['peak_gb']):.2f} GB; "
              f"{load()}", flush=True)
    device = next(model.parameters()).device
    case = {mode: record(runs[mode], device) for mode in modes}
    if len(modes) == 1:
        return case
    reference, fast = runs["reference"][0], runs["fast"][0]
    case["psnr_fast_vs_reference"] = image_psnr(fast["image"], reference["image"])
    with options(model, *MODES["fast"]):  # the decode alone: the reference's file, decoded fast (same symbols)
        decoded = model.decompress(reference["file"]).float().cpu()
    case["psnr_fast_decode_of_reference_file"] = image_psnr(decoded, reference["image"])
    case["same_file"] = fast["file"] == reference["file"]
    for key in ("encode_s", "decode_s", "encode_cpu_s", "decode_cpu_s"):  # reference / fast
        case[f"ratio_{key.removesuffix('_s')}"] = case["reference"][key] / case["fast"][key]
    return case


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="output file")
    parser.add_argument("--sizes", help="WxH[,WxH...] (default 512x512,768x512,2048x1408; --small 64x64)")
    parser.add_argument("--repeats", type=int, default=1, help="round trips per mode and size (median)")
    parser.add_argument("--model", help="a release checkpoint folder (default: sd15 with random weights)")
    parser.add_argument("--vae", help="with --model: the SD-2.1 VAE (diffusers folder or file)")
    parser.add_argument("--preset", help="with random weights: the preset (default sd15; --small nano_q3)")
    parser.add_argument("--warmup", default="64x64", help="WxH of the warm-up round trip of each mode")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--small", action="store_true", help="nano at 64x64: a smoke run of seconds")
    parser.add_argument("--modes", default="reference,fast", help="reference,fast (default), or one of them")
    parser.add_argument("--bf16-weights", action="store_true",
                        help="with --modes fast: the image networks' weights stored in bf16 (OneDC.cast_weights)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",")]
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        parser.error(f"--modes: one or both of {', '.join(MODES)}, got {args.modes!r}")
    if args.bf16_weights and "fast" not in modes:
        parser.error("--bf16-weights needs the fast mode")
    try:
        sizes = parse_sizes(args.sizes or ("64x64" if args.small else "512x512,768x512,2048x1408"))
        warmup = parse_sizes(args.warmup)[0]
    except ValueError as error:
        parser.error(str(error))
    if args.bf16_weights and len(modes) == 2 and len(sizes) > 1:
        parser.error("--bf16-weights with both modes measures one size (the reference needs float32 weights)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from onedc_lib.weights import build_model, load_release_checkpoint

    started = time.perf_counter()
    if args.model:
        model = load_release_checkpoint(args.model, vae=args.vae)
    else:
        model = build_model(args.preset or ("nano_q3" if args.small else "sd15"))
    model = model.to(device)
    cast = None
    if args.bf16_weights:
        def cast():  # once, when the fast mode first runs (after the reference's runs where both run)
            if model.weights_dtype != torch.bfloat16:
                model.cast_weights(torch.bfloat16)
                round_trip(model, make_image(warmup[1], warmup[0]), *MODES["fast"])  # the new weights' warm-up

        if modes == ["fast"]:
            cast()
    report = {"format": 1, "kind": "paper_scale", "device": str(device),
              "machine": {**device_info(str(device)), "cpu_flags_bf16": cpu_has_bf16()},
              "model": args.model or model.config.name, "model_id": model.model_id.hex(),
              "modes": {mode: {"encoding": repr(MODES[mode][0]), "decoding": repr(MODES[mode][1])} for mode in modes},
              "weights_dtype": str(model.weights_dtype),
              "repeats": args.repeats, "load": {"start": load()}, "cases": {}}
    print(f"{report['model']} on {device}, {torch.get_num_threads()} threads; {report['load']['start']}", flush=True)
    for mode in modes:
        if mode == "reference" or model.weights_dtype == torch.float32 or modes == ["fast"]:
            round_trip(model, make_image(warmup[1], warmup[0]), *MODES[mode])
    for size in sizes:
        case = measure_size(model, size, args.repeats, modes, cast)
        report["cases"][f"{size[0]}x{size[1]}"] = case
        if len(modes) == 1:
            continue
        ref, fast = case["reference"], case["fast"]
        print(f"{size[0]}x{size[1]}: reference / fast: encode {case['ratio_encode']:.2f}x "
              f"({ref['encode_s']:.2f} / {fast['encode_s']:.2f} s; CPU s {case['ratio_encode_cpu']:.2f}x), decode "
              f"{case['ratio_decode']:.2f}x ({ref['decode_s']:.2f} / {fast['decode_s']:.2f} s; CPU s "
              f"{case['ratio_decode_cpu']:.2f}x); peak {ref['peak_gb']:.2f} / {fast['peak_gb']:.2f} GB; PSNR fast vs "
              f"reference {case['psnr_fast_vs_reference']} dB (decode alone "
              f"{case['psnr_fast_decode_of_reference_file']} dB)", flush=True)
    report["load"]["end"] = load()
    report["wall_s"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, (json.dumps(report, indent=1) + "\n").encode())
    print(f"wrote {args.json}", flush=True)
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
