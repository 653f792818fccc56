"""Wall time of OneDC compress / decompress per component, model sizes and GMACs, with device information
(notebooks/21_eval_speed.ipynb; benchmarks/inference.py is the command-line front end).

    report = speed_report(["nano_q3"], height=512, width=768, repeats=5, device="cpu")
    speed_table(report); speed_figure(report)

What is timed: the real `OneDC.compress` (image tensor -> CompressedImage) and `OneDC.decompress` (file bytes ->
image tensor), with timers wrapped around the components they call (instance-level wrappers, nothing else changed):
  encode:  vae_enc       VAE encoder (posterior mean, x scaling factor)
           g_a           codec.analysis
           h_enc+z       codec.hyper_analysis + FSQ
           prior_f64     the entropy parameters in float64: h_dec + the four-step prior
           rans+rest     the rest: scale -> table index, rANS encode, z packing, container, padding
  decode:  prior_f64     float64 h_dec + four-step prior (without the symbol decoding inside it)
           rans+rest     the rest: the incremental rANS decode of each step's symbols, container parsing, z unpacking
           h_sem+g_s     codec.semantic + codec.synthesis
           unet          the one-step generator (vae_reduction + UNet at t = 999 + eps -> x0)
           vae_dec       VAE decoder, crop, clamp
Groups (`GROUPS`): VAE (vae_enc, vae_dec), codec networks (g_a, h_enc+z, h_sem+g_s), generator (unet), entropy
model (prior_f64) and entropy coding (rans+rest). On CUDA every timer synchronises the device before reading the
clock. One warm-up round trip, then the median of `repeats` runs per entry.

GMACs per component are counted with torch's FlopCounterMode (MACs = FLOPs / 2) on the meta device, so they cost
no memory (the prior's count is that of encode_steps; decode_steps runs the same convs).
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["DECODE_PARTS", "ENCODE_PARTS", "GROUPS", "PeakMemory", "Timers", "component_gmacs", "instrumented",
           "make_image", "model_sizes", "multistep_decode", "run_speed", "speed_figure", "speed_report", "speed_table",
           "startup_time", "timed_round_trip"]

ENCODE_PARTS = ("vae_enc", "g_a", "h_enc+z", "prior_f64", "rans+rest")
DECODE_PARTS = ("prior_f64", "rans+rest", "h_sem+g_s", "unet", "vae_dec")
MACS_OF_PART = {"vae_enc": ["vae_enc"], "g_a": ["g_a"], "h_enc+z": ["h_enc+z"], "prior_f64": ["h_dec", "prior"],
                "rans+rest": [], "h_sem+g_s": ["h_sem", "g_s"], "unet": ["unet"], "vae_dec": ["vae_dec"]}
GROUPS = {"VAE": ("vae_enc", "vae_dec"), "codec networks": ("g_a", "h_enc+z", "h_sem+g_s"),
          "generator (UNet)": ("unet",), "entropy model (float64)": ("prior_f64",),
          "entropy coding (rANS + container)": ("rans+rest",)}


# ---------------------------------------------------------------------------------------------------------- sizes

def _count(module: torch.nn.Module, lora: bool | None = None) -> int:
    return sum(p.numel() for name, p in module.named_parameters()
               if lora is None or ("lora_" in name) == lora)


def model_sizes(model) -> dict[str, int]:
    """Parameters per module, in the spec's breakdown (section 2)."""
    codec, unet, vae = model.codec, model.generator.unet, model.vae
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
        "vae.encoder (+quant_conv)": _count(vae.encoder_part),
        "vae.decoder (+post_quant_conv)": _count(vae.decoder_part),
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

    from ..config import load_config
    from ..models.onedc import OneDC, pad_to_multiple

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


def part_gmacs(macs: dict[str, float], part: str) -> float:
    return sum(macs[k] for k in MACS_OF_PART[part])


# ---------------------------------------------------------------------------------------------------------- timing

def _synchronizer(device) -> callable:
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class Timers:
    """Wall-clock accumulators for the components of one compress / decompress call."""

    def __init__(self, sync=None, clock=time.perf_counter):
        self.times: dict[str, float] = {}
        self.sync = sync or (lambda: None)
        self.clock = clock  # time.process_time: CPU seconds of the process, blind to other processes' load

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds

    def now(self) -> float:
        self.sync()
        return self.clock()

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, self.now() - start)
        return timed


class PeakMemory:
    """Peak memory of one call: on CUDA torch's max_memory_allocated (tensors only), elsewhere the process's
    resident set size sampled every `interval` seconds by a thread (RSS: the whole process, weights included).
    Use as `with PeakMemory(device) as peak: ...` and read peak.bytes; peak.base is the value at the start."""

    def __init__(self, device, interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.base = self.bytes = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.bytes = max(self.bytes, self.rss())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = self.bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.bytes = self.rss()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes, self.rss())
        return False

    def as_dict(self) -> dict:
        kind = "cuda_max_memory_allocated" if self.device.type == "cuda" else "rss"
        return {"kind": kind, "peak_mb": self.bytes / 2**20, "start_mb": self.base / 2**20,
                "added_mb": (self.bytes - self.base) / 2**20}


@contextmanager
def instrumented(model, timers: Timers):
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
            start = timers.now()
            try:
                return decode_fn(step, scales)
            finally:
                timers.add("prior_f64", -(timers.now() - start))
        return moved

    object.__setattr__(model, "_symbol_source", timed_symbol_source)
    patches.append((model, "_symbol_source", None))
    starts = []
    pre = model.generator.register_forward_pre_hook(lambda *_: starts.append(timers.now()))
    post = model.generator.register_forward_hook(lambda *_: timers.add("unet", timers.now() - starts.pop()))
    try:
        yield
    finally:
        pre.remove()
        post.remove()
        for obj, attr, _ in patches:
            del obj.__dict__[attr]


def timed_round_trip(model, x: torch.Tensor, clock=time.perf_counter) -> dict:
    """One compress + one decompress; per-component seconds of `clock`, 'rans+rest' = total minus the timed
    components, and the peak memory of each side (PeakMemory)."""
    device = next(model.parameters()).device
    sync = _synchronizer(device)
    enc, dec = Timers(sync, clock), Timers(sync, clock)
    load_before = os.getloadavg()[0]
    with instrumented(model, enc), PeakMemory(device) as encode_memory:
        start, cpu = enc.now(), time.process_time()
        compressed = model.compress(x)
        encode_total, encode_cpu = enc.now() - start, time.process_time() - cpu
    data = compressed.to_bytes()
    with instrumented(model, dec), PeakMemory(device) as decode_memory:
        start, cpu = dec.now(), time.process_time()
        x_hat = model.decompress(data)
        decode_total, decode_cpu = dec.now() - start, time.process_time() - cpu
    if x_hat.shape != x.shape or not torch.isfinite(x_hat).all():
        raise RuntimeError(f"decompress returned {tuple(x_hat.shape)} (finite: {bool(torch.isfinite(x_hat).all())}) "
                           f"for an input of {tuple(x.shape)}")
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
        "memory": {"encode": encode_memory.as_dict(), "decode": decode_memory.as_dict()},
        "loadavg_1min": [load_before, os.getloadavg()[0]],
    }


def multistep_decode(model, x: torch.Tensor, steps=(4, 20), one_step: dict | None = None) -> dict:
    """Decode time if the same generator ran as a k-step sampler (OneStepGenerator.sample): the measured
    one-step decode with its generator time replaced by k steps' (measured on the same ctrl and tokens).
    `one_step`: a timed_round_trip result for x (else one is run)."""
    one_step = one_step or timed_round_trip(model, x)
    inputs = []
    hook = model.generator.register_forward_pre_hook(lambda module, args: inputs.append(args))
    try:
        model.decompress(model.compress(x).to_bytes())
    finally:
        hook.remove()
    ctrl, tokens = inputs[-1]
    sync = _synchronizer(ctrl.device)
    decode = one_step["decode"]
    result = {"one_step": {"unet_s": decode["unet"], "decode_s": decode["total"]}}
    dtype = model.decode_options.autocast_dtype(ctrl.device)  # as the one-step decode ran
    for k in steps:
        with torch.no_grad(), torch.autocast(ctrl.device.type, dtype=dtype, enabled=dtype != torch.float32):
            sync()
            start = time.perf_counter()
            model.generator.sample(ctrl, tokens, k)
            sync()
        unet = time.perf_counter() - start
        total = decode["total"] - decode["unet"] + unet
        result[f"{k}_steps"] = {"unet_s": unet, "decode_s": total, "decode_ratio_vs_one_step": total / decode["total"]}
    return result


# Never imported by `onedc decompress` with a model whose exported graph exists (bundled or cached): diffusers alone
# takes 4-5 s to import (with torch._dynamo, peft and transformers), scipy 0.5 s.
HEAVY_MODULES = ("compressai", "lpips", "pyiqa", "torchmetrics", "DISTS_pytorch", "diffusers", "peft", "transformers",
                 "scipy", "torch._dynamo", "onedc_lib.eval.metrics", "onedc_lib.training", "matplotlib", "pandas")


def startup_time(runs: int = 5, model: str | None = None, env: dict | None = None) -> dict:
    """Whole-process time of `python -m onedc_lib.cli decompress` of a small file (64x96) with `model` (default:
    the default model): median of `runs`, and which of HEAVY_MODULES the process imported (python -X importtime).
    The process decodes with the model's exported graph (models/export.py), which is made ready first (bundled, or
    exported into the user cache as a model's first decode does), so every run is a steady-state start."""
    from ..weights import load_model

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_model(model, decode_only=True)
        source = Path(tmp) / "small.odc"
        compressed = load_model(model).compress(make_image(64, 96))
        source.write_bytes(compressed.to_bytes())
        command = [sys.executable, "-m", "onedc_lib.cli", "decompress", str(source), "-o", str(Path(tmp) / "d.png"),
                   "-f"]  # every run replaces the last one's image
        if model:
            command += ["--model", model]
        environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **(env or {})}
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=environment)
            times.append(time.perf_counter() - start)
        trace = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], check=True, capture_output=True,
                               env=environment, text=True).stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in trace.splitlines() if line.startswith("import time:")}
    cumulative = {}
    for line in trace.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            if not name.startswith("  "):  # top-level imports of the CLI process
                cumulative[name.strip()] = int(parts[1]) / 1e6
    return {"median_s": statistics.median(times), "runs_s": times, "env": dict(env or {}),
            "heavy_modules_imported": sorted(m for m in imported if m.split(".")[0] in HEAVY_MODULES
                                             or any(m.startswith(h) for h in HEAVY_MODULES)),
            "top_level_import_s": dict(sorted(cumulative.items(), key=lambda kv: -kv[1])[:12])}


def make_image(height: int, width: int) -> torch.Tensor:
    """A deterministic smooth image with some texture (random weights make its content irrelevant to speed)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, max(1, height // 8), max(1, width // 8), generator=gen)
    texture = torch.nn.functional.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
    base = torch.stack([xx, yy, 0.5 + 0.5 * torch.sin(6.28 * (xx + yy))])[None]
    return (0.7 * base + 0.3 * texture).clamp(0, 1)


def bench_model(name: str, height: int, width: int, repeats: int, device="cpu", warmup_size=None,
                log=None, overrides: dict | None = None) -> dict:
    """Load (bundled / folder) or build (preset, random weights; with dotted `overrides`) one model, warm up,
    time `repeats` round trips."""
    from ..weights import build_model, load_model

    log = log or (lambda message: None)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = (build_model(name, **overrides) if overrides else load_model(name)).to(device)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    _ = model.model_id  # cached: hashing every weight is a one-time cost per model
    model_id_s = time.perf_counter() - start
    log(f"[{name}] built in {build_s:.1f} s, model id in {model_id_s:.1f} s")
    x = make_image(height, width).to(device)
    timed_round_trip(model, make_image(*warmup_size).to(device) if warmup_size else x)
    runs = []
    for i in range(repeats):
        runs.append(timed_round_trip(model, x))
        r = runs[-1]
        log(f"[{name}] run {i + 1}/{repeats}: encode {r['encode']['total']:.3f} s, decode {r['decode']['total']:.3f} s")
    median = {side: {k: statistics.median(r[side][k] for r in runs) for k in runs[0][side]}
              for side in ("encode", "decode")}
    result = {"model": name, "config": model.config.name, "model_id": model.model_id.hex(),
              "untrained_parts": list(getattr(model, "untrained_parts", ())), "warnings": [str(w.message) for w in caught],
              "height": height, "width": width, "repeats": repeats, "build_s": build_s, "model_id_s": model_id_s,
              "median_s": median, "runs": runs, "bytes": runs[0]["bytes"], "bpp": runs[0]["bpp"],
              "params": model_sizes(model)}
    del model
    return result


# ---------------------------------------------------------------------------------------------------------- report

def speed_report(models=("nano_q3",), height: int = 512, width: int = 768, repeats: int = 3, device: str = "cpu",
                 macs: bool = True, out_dir=None, smoke: bool = False, log=print, overrides: dict | None = None
                 ) -> dict:
    """Times each model (bundled name, model folder or preset) at height x width on `device`; with out_dir,
    writes speed_<device type>.json (everything, with device information) and .csv (median seconds per
    component). smoke: 64 x 64, one repeat, no GMACs."""
    from .runner import device_info

    if smoke:
        height, width, repeats, macs = 64, 64, 1, False
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    results = {}
    for name in models:
        results[name] = bench_model(name, height, width, repeats, device, log=log, overrides=overrides)
        if macs and not overrides:
            results[name]["gmacs"] = component_gmacs(results[name]["config"], height, width)
    report = {"format": 1, "kind": "speed", "height": height, "width": width, "repeats": repeats,
              "device": device_info(device), "loadavg_at_end": list(os.getloadavg()), "results": results,
              "method": "median over repeats of one compress + one decompress, after one warm-up; components "
                        "timed by wrappers around OneDC's methods (onedc_lib.eval.timing)",
              "groups": {k: list(v) for k, v in GROUPS.items()}, "overrides": dict(overrides or {}), "smoke": smoke}
    try:
        from .runner import git_commit
        report["git_commit"] = git_commit()
    except ImportError:
        report["git_commit"] = None
    if out_dir is not None:
        write_speed_report(report, out_dir)
    return report


def speed_rows(report: dict) -> list[dict]:
    """One row per (model, side, component): median seconds, share of the side's total, GMACs, group."""
    rows = []
    for name, r in report["results"].items():
        for side, parts in (("encode", ENCODE_PARTS), ("decode", DECODE_PARTS)):
            total = r["median_s"][side]["total"]
            for part in (*parts, "total"):
                group = next((g for g, members in GROUPS.items() if part in members), "")
                row = {"model": name, "side": side, "component": part, "group": group,
                       "median_s": r["median_s"][side][part], "share": r["median_s"][side][part] / total}
                if "gmacs" in r:
                    row["gmacs"] = (sum(part_gmacs(r["gmacs"], p) for p in parts) if part == "total"
                                    else part_gmacs(r["gmacs"], part))
                rows.append(row)
    return rows


def write_speed_report(report: dict, out_dir) -> list[Path]:
    """speed_<device type>.json and .csv in out_dir (a CPU and a GPU report sit side by side)."""
    from ..bitstream import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"speed_{torch.device(report['device']['device']).type}"
    report["files"] = [f"{stem}.json", f"{stem}.csv"]
    atomic_write(out / f"{stem}.json", (json.dumps(report, indent=1) + "\n").encode())
    rows = speed_rows(report)
    buffer = io.StringIO()
    columns = ["model", "side", "component", "group", "median_s", "share", "gmacs"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / f"{stem}.csv", buffer.getvalue().encode())
    return [out / f"{stem}.json", out / f"{stem}.csv"]


def run_speed(preset: str = "nano_q3", models=(), overrides: dict | None = None, height: int = 512,
              width: int = 768, repeats: int = 3, device: str = "cpu", macs: bool = True, results_dir="results/speed",
              out_dir="out/eval_speed", smoke: bool = False) -> dict:
    """The notebook's entry point: `preset` and `models` timed, the report written to results_dir (smoke:
    out_dir/results/speed, never the committed results)."""
    from ..paths import output_dir

    names = list(dict.fromkeys([preset, *models]))
    target = output_dir(results_dir, Path(out_dir) / "results" / "speed", smoke)
    report = speed_report(names, height, width, repeats, device, macs, None, smoke, overrides=overrides)
    write_speed_report(report, target)
    report["written_to"] = str(target)
    return report


def speed_table(report: dict, by: str = "component"):
    """DataFrame: median seconds (and share, GMACs) per component, or per group (by="group")."""
    import pandas as pd

    frame = pd.DataFrame(speed_rows(report))
    if by == "group":
        parts = frame[frame.component != "total"]
        return parts.groupby(["model", "side", "group"], sort=False)[["median_s", "share"]].sum().reset_index()
    return frame


def speed_figure(report: dict):
    """Stacked bars: encode and decode wall time per model, split by component group."""
    import numpy as np
    from matplotlib.figure import Figure

    names = list(report["results"])
    fig = Figure(figsize=(4 + 2.2 * len(names), 3.6), layout="constrained")
    ax = fig.subplots()
    labels, bottoms = [], []
    for name in names:
        for side in ("encode", "decode"):
            labels.append(f"{name}\n{side}")
    x = np.arange(len(labels))
    bottoms = np.zeros(len(labels))
    for group, members in GROUPS.items():
        values = np.array([sum(report["results"][n]["median_s"][side].get(p, 0.0) for p in members)
                           for n in names for side in ("encode", "decode")])
        ax.bar(x, values, bottom=bottoms, label=group)
        bottoms += values
    ax.set_xticks(x, labels, fontsize="small")
    ax.set_ylabel("seconds (median)")
    d = report["device"]
    where = d.get("gpu") or d.get("cpu") or d["device"]
    ax.set_title(f"{report['height']}x{report['width']} px on {d['device']} ({where}, {d['torch_threads']} threads)",
                 fontsize="small")
    ax.legend(fontsize="x-small")
    if any(report["results"][n]["untrained_parts"] for n in names):
        fig.suptitle("random weights: times are real, sizes of the y stream are not a trained model's",
                     fontsize="x-small")
    return fig
