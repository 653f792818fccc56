"""The paper-scale model on a CUDA device, in one run: speed, memory and agreement with the CPU.

    python benchmarks/gpu_check.py                      # cuda, sd15, writes results/speed/gpu_<device>.json
    python benchmarks/gpu_check.py --device cpu --small --json /tmp/gpu_cpu.json   # the suite's smoke run

sd15 with random weights (speed and memory do not depend on the values):
- at each --sizes (W x H; default 768x512 and 2048x1408) encode and decode in float32 and bfloat16 (autocast,
  channels_last; OneDC.encode_options / decode_options), eager and with torch.compile (--compile-backend) of the
  generator and the VAE decoder: median seconds of --repeats after one warm-up (which for compile is the compile
  time, recorded as first_s), peak memory (CUDA: max_memory_allocated, weights included; start_gb is the model);
- a tiled decode of a --large image (default 4096x2816; the VAE decodes tiles of --vae-tile latent pixels) in
  bfloat16 and float32, its peak memory;
- the cross-device check: a file written on the CPU (float32, the exact path) decodes on the device (identical
  symbols: the file's symbols CRC would fail otherwise) to an image within float tolerance of the CPU's decode
  (TF32 off for this check).

--small: the nano model at tiny sizes, the compile backend "eager" (dynamo without code generation), so the whole
script runs in seconds on a CPU. The issue's targets on an H100: 768x512 decode <= 40 ms, 4096x2816 decode in
<= 8 GB; the JSON records them as checks.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib.bitstream import BitstreamError, atomic_write  # noqa: E402
from onedc_lib.eval.modes import image_psnr, max_abs_diff, parse_sizes, round_trip, summary  # noqa: E402
from onedc_lib.eval.runner import device_info  # noqa: E402
from onedc_lib.eval.timing import make_image  # noqa: E402
from onedc_lib.models.onedc import DecodeOptions, EncodeOptions  # noqa: E402
from onedc_lib.weights import build_model  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TARGETS = {"decode_768x512_s": 0.040, "decode_4096x2816_gb": 8.0}  # the issue's, for an H100


def device_name(device: torch.device) -> str:
    """'cpu' or the GPU's name as a file stem (NVIDIA H100 80GB HBM3 -> nvidia_h100_80gb_hbm3)."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def log(message: str) -> None:
    print(message, flush=True)


def speed_cases(model, sizes, repeats: int, compiled: str | None, cases: dict) -> None:
    """Every size in float32 and bf16, into cases[size]["<dtype>_<eager|compiled>"]."""
    for width, height in sizes:
        x = make_image(height, width)
        for name, dtype in DTYPES.items():
            encoding = EncodeOptions(channels_last=True, dtype=dtype)
            decoding = DecodeOptions(channels_last=True, dtype=dtype, compile_backend=compiled, exported=False)
            first = round_trip(model, x, encoding, decoding)  # warm-up: kernels, autotuning, compilation
            runs = [round_trip(model, x, encoding, decoding) for _ in range(repeats)]
            record = {**summary(runs), "first_encode_s": first["encode"]["s"], "first_decode_s": first["decode"]["s"]}
            key = f"{name}_{'compiled' if compiled else 'eager'}"
            cases.setdefault(f"{width}x{height}", {})[key] = record
            log(f"{width}x{height} {key}: encode {record['encode_s']:.4f} s, decode {record['decode_s']:.4f} s "
                f"(first {record['first_decode_s']:.2f} s), peak {record['peak_gb']:.2f} GB")


def large_decode(model, size: tuple[int, int], tile: int | None) -> dict:
    """One file of the large image (written in bf16), decoded tiled in bf16 and in float32: seconds, peak GB."""
    width, height = size
    x = make_image(height, width)
    fast = EncodeOptions(channels_last=True, dtype=torch.bfloat16)
    out = {"size": f"{width}x{height}", "vae_tile": tile if tile is not None else model.vae.decode_tile}
    for name, dtype in DTYPES.items():
        run = round_trip(model, x, fast, DecodeOptions(channels_last=True, dtype=dtype, vae_tile=tile, exported=False))
        out[name] = {"encode_s": run["encode"]["s"], "encode_peak_gb": run["encode"]["peak_gb"],
                     "decode_s": run["decode"]["s"], "decode_peak_gb": run["decode"]["peak_gb"],
                     "start_gb": run["decode"]["start_gb"]}
        log(f"{out['size']} tiled decode {name}: {run['decode']['s']:.3f} s, peak {run['decode']['peak_gb']:.2f} GB")
    return out


def cross_device(model, device: torch.device, size: tuple[int, int]) -> dict:
    """Encode and decode on the CPU (exact float32 path), then decode the same file on `device`. The model is on
    the CPU on entry and on `device` on return."""
    width, height = size
    x = make_image(height, width)
    exact_enc, exact_dec = EncodeOptions(), DecodeOptions(channels_last=False, dtype=torch.float32, exported=False)
    on_cpu = round_trip(model.cpu(), x, exact_enc, exact_dec)
    model.to(device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    result = {"size": f"{width}x{height}", "bytes": len(on_cpu["file"])}
    try:
        model.decode_options = exact_dec
        image = model.decompress(on_cpu["file"]).float().cpu()  # raises if any symbol differs (symbols CRC)
    except BitstreamError as error:  # the finding to record, not a reason to stop the other measurements
        log(f"cross-device {result['size']}: the CPU's file does not decode on {device}: {error}")
        return {**result, "symbols_identical": False, "error": str(error)}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    result.update(symbols_identical=True, max_abs_diff=max_abs_diff(image, on_cpu["image"]),
                  psnr_db=image_psnr(image, on_cpu["image"]))
    log(f"cross-device {result['size']}: CPU file decoded on {device}: max |diff| {result['max_abs_diff']:.2e}, "
        f"PSNR {result['psnr_db']} dB")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="nano at tiny sizes: a smoke run of seconds on a CPU")
    parser.add_argument("--preset", help="model preset (default: sd15; --small: nano_q3)")
    parser.add_argument("--sizes", help="WxH[,WxH...] (default 768x512,2048x1408; --small 64x64)")
    parser.add_argument("--large", help="WxH of the tiled decode (default 4096x2816; --small 512x384)")
    parser.add_argument("--vae-tile", type=int, help="VAE decode tile in latent pixels (default: the model's; "
                                                     "--small 48)")
    parser.add_argument("--cross-size", help="WxH of the cross-device check (default 512x512; --small 64x64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed round trips per case (default 5; --small 1)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor; --small eager)")
    parser.add_argument("--json", type=Path, help="output (default results/speed/gpu_<device>.json)")
    args = parser.parse_args(argv)
    small = args.small
    preset = args.preset or ("nano_q3" if small else "sd15")
    try:
        sizes = parse_sizes(args.sizes or ("64x64" if small else "768x512,2048x1408"))
        large = parse_sizes(args.large or ("512x384" if small else "4096x2816"))[0]
        cross = parse_sizes(args.cross_size or ("64x64" if small else "512x512"))[0]
    except ValueError as error:
        parser.error(str(error))
    repeats = args.repeats if args.repeats is not None else (1 if small else 5)
    backend = args.compile_backend or ("eager" if small else "inductor")
    tile = args.vae_tile if args.vae_tile is not None else (48 if small else None)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: pass --device cpu (with --small for the smoke run)")

    started = time.perf_counter()
    report = {"format": 1, "kind": "gpu_check", "preset": preset, "small": small, "machine": device_info(str(device)),
              "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
              "repeats": repeats, "compile_backend": backend}
    model = build_model(preset)
    report["model_id"] = model.model_id.hex()
    report["cross_device"] = cross_device(model, device, cross)
    report["cases"] = {}
    speed_cases(model, sizes, repeats, None, report["cases"])
    report["large_tiled"] = large_decode(model, large, tile)  # before compiling: that is in place and stays
    speed_cases(model, sizes, repeats, backend, report["cases"])
    first = report["cases"][f"{sizes[0][0]}x{sizes[0][1]}"]
    report["targets"] = {**TARGETS, "applies": (not small and device.type == "cuda"),
                         "decode_s_best": min(c["decode_s"] for c in first.values()),
                         "large_decode_peak_gb_best": min(report["large_tiled"][d]["decode_peak_gb"] for d in DTYPES)}
    report["wall_s"] = time.perf_counter() - started
    out = args.json or Path("results/speed") / f"gpu_{device_name(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, (json.dumps(report, indent=1) + "\n").encode())
    log(f"wrote {out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
