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
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib.config import load_config
from onedc_lib.models.onedc import OneDC, pad_to_multiple
from onedc_lib.weights import build_model

ENCODE_PARTS = ("vae_enc", "g_a", "h_enc+z", "prior_f64", "rans+rest")
DECODE_PARTS = ("prior_f64", "rans+rest", "h_sem+g_s", "unet", "vae_dec")
MACS_OF_PART = {"vae_enc": ["vae_enc"], "g_a": ["g_a"], "h_enc+z": ["h_enc+z"], "prior_f64": ["h_dec", "prior"],
                "rans+rest": [], "h_sem+g_s": ["h_sem", "g_s"], "unet": ["unet"], "vae_dec": ["vae_dec"]}


# ---------------------------------------------------------------------------------------------------------- sizes

def _count(module: torch.nn.Module, lora: bool | None = None) -> int:
    return sum(p.numel() for name, p in module.named_parameters()
               if lora is None or ("lora_" in name) == lora)


def model_sizes(model: OneDC) -> dict[str, int]:
    """Parameters per module, in the spec's breakdown (section 2)."""
    codec, unet, ae = model.codec, model.generator.unet, model.vae.autoencoder
    prior = sum(_count(getattr(codec, name)) for name in codec._prior_names)
    sizes = {
        "codec.g_a (enc)": _count(codec.enc),
        "codec.h_enc": _count(codec.hyper_enc),
        "codec.h_dec": _count(codec.hyper_dec),
        "codec.prior (4 steps)": prior,
        "codec.h_sem": _count(codec.semantic_adaptor),
        "codec.g_s (dec)": _count(codec.dec),
        "codec total": _count(codec),
        "generator.unet base": _count(unet, lora=False) - _count(unet.conv_in) - _count(unet.vae_reduction),
        "generator.lora": _count(unet, lora=True),
        "generator.conv_in": _count(unet.conv_in),
        "generator.vae_reduction": _count(unet.vae_reduction),
        "generator total": _count(unet),
        "vae.encoder (+quant_conv)": _count(ae.encoder) + _count(ae.quant_conv),
        "vae.decoder (+post_quant_conv)": _count(ae.decoder) + _count(ae.post_quant_conv),
        "total": _count(model),
    }
    sizes["encoder side (vae_enc, g_a, h_enc, h_dec, prior)"] = (
        sizes["vae.encoder (+quant_conv)"] + sizes["codec.g_a (enc)"] + sizes["codec.h_enc"] + sizes["codec.h_dec"]
        + prior)
    sizes["decoder side (h_dec, prior, h_sem, g_s, generator, vae_dec)"] = (
        sizes["codec.h_dec"] + prior + sizes["codec.h_sem"] + sizes["codec.g_s (dec)"] + sizes["generator total"]
        + sizes["vae.decoder (+post_quant_conv)"])
    return sizes


# ---------------------------------------------------------------------------------------------------------- MACs

def component_gmacs(preset: str, height: int, width: int) -> dict[str, float]:
    """GMACs of the neural components at height x width, counted on the meta device (no memory, no time)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = OneDC(load_config(preset)).eval()
        x = pad_to_multiple(torch.rand(1, 3, height, width))
    result = {}

    def measure(name, fn, *args):
        with FlopCounterMode(display=False) as counter:
            out = fn(*args)
        result[name] = counter.get_total_flops() / 2e9
        return out

    with torch.no_grad():
        cond = measure("vae_enc", model.encode_latents, x)
        y, sem = measure("g_a", model.codec.analysis, x * 2 - 1, cond)
        measure("h_enc+z", model.codec.hyper_analysis, y, sem)  # FSQ: no MACs (and autocast refuses meta)
        hp, wp = x.shape[-2:]
        params, z_semantic = measure("h_dec", model.codec.hyper_synthesis,
                                     torch.zeros(1, len(model.config.codec.fsq_levels), hp // 64, wp // 64,
                                                 device="meta"))
        measure("prior", model.codec.encode_steps, y, params)
        c_map, tokens = measure("h_sem", model.codec.semantic, z_semantic)
        ctrl = measure("g_s", model.codec.synthesis, y, c_map)
        x0 = measure("unet", lambda: model.generator(ctrl, tokens).x0)
        measure("vae_dec", model.vae.decode, x0)
    return result


# ---------------------------------------------------------------------------------------------------------- timing

class Timers:
    """Wall-clock accumulators for the components of one compress / decompress call."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)
        return timed


@contextmanager
def instrumented(model: OneDC, timers: Timers):
    """Instance attributes shadow the methods for the duration; the generator is a module, timed by hooks."""
    codec = model.codec
    patches = [
        (model, "encode_latents", "vae_enc"),
        (codec, "analysis", "g_a"),
        (codec, "hyper_analysis", "h_enc+z"),
        (codec, "quantize_z", "h_enc+z"),
        (codec, "hyper_synthesis", "prior_f64"),
        (codec, "encode_steps", "prior_f64"),
        (codec, "decode_steps", "prior_f64"),
        (codec, "semantic", "h_sem+g_s"),
        (codec, "synthesis", "h_sem+g_s"),
        (model.vae, "decode", "vae_dec"),
    ]
    for obj, attr, name in patches:
        object.__setattr__(obj, attr, timers.wrap(name, getattr(obj, attr)))
    # the rANS decode runs inside decode_steps (one call per step): timed on its own and moved out of prior_f64
    symbol_source = model._symbol_source

    def timed_symbol_source(container):
        decode_fn = timers.wrap("rans_dec", symbol_source(container))

        def moved(step, scales):
            start = time.perf_counter()
            try:
                return decode_fn(step, scales)
            finally:
                timers.add("prior_f64", -(time.perf_counter() - start))
        return moved

    object.__setattr__(model, "_symbol_source", timed_symbol_source)
    patches.append((model, "_symbol_source", None))
    starts = []
    pre = model.generator.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    post = model.generator.register_forward_hook(lambda *_: timers.add("unet", time.perf_counter() - starts.pop()))
    try:
        yield
    finally:
        pre.remove()
        post.remove()
        for obj, attr, _ in patches:
            del obj.__dict__[attr]


def timed_round_trip(model: OneDC, x: torch.Tensor) -> dict:
    """One compress + one decompress; per-component seconds, 'rans+rest' = total minus the timed components."""
    enc, dec = Timers(), Timers()
    load_before = os.getloadavg()[0]
    with instrumented(model, enc):
        start, cpu = time.perf_counter(), time.process_time()
        compressed = model.compress(x)
        encode_total, encode_cpu = time.perf_counter() - start, time.process_time() - cpu
    data = compressed.to_bytes()
    with instrumented(model, dec):
        start, cpu = time.perf_counter(), time.process_time()
        x_hat = model.decompress(data)
        decode_total, decode_cpu = time.perf_counter() - start, time.process_time() - cpu
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
    enc.times["rans+rest"] = encode_total - sum(enc.times.values())
    rans_dec = dec.times.pop("rans_dec", 0.0)
    dec.times["rans+rest"] = decode_total - sum(dec.times.values())
    return {
        "encode": {**{k: enc.times.get(k, 0.0) for k in ENCODE_PARTS}, "total": encode_total},
        "decode": {**{k: dec.times.get(k, 0.0) for k in DECODE_PARTS}, "total": decode_total,
                   "rans_only": rans_dec},
        "bytes": len(data),
        "bpp": compressed.bpp,
        # CPU seconds of this process (all threads) and the 1-minute load average: other processes on the
        # machine show up as wall >> cpu / threads, or as a load above this process's thread count
        "cpu_s": {"encode": encode_cpu, "decode": decode_cpu},
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }


def make_image(height: int, width: int) -> torch.Tensor:
    """A deterministic smooth image with some texture (random weights make its content irrelevant to speed)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, height // 8, width // 8, generator=gen)
    texture = torch.nn.functional.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
    base = torch.stack([xx, yy, 0.5 + 0.5 * torch.sin(6.28 * (xx + yy))])[None]
    return (0.7 * base + 0.3 * texture).clamp(0, 1)


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
