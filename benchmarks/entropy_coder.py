"""Speed and size of our rANS coder against compressai's and constriction's, on the same symbols and scales.

    python benchmarks/entropy_coder.py [--json results/entropy_coder.json] [--repeats 5] [--quick]

Cases (symbols are integers drawn with a per-symbol scale s):
  gaussian_2p20    2^20 symbols, s log-uniform on [0.11, 64], symbols rint(N(0, s))
  laplace_2p20     the same scales, Laplace residuals with the same std (heavier tails than the model)
  onedc_768x768_y  128 x 48 x 48 symbols in channel-major order, scales like a real latent: per channel a
                   log-uniform centre, a channel-specific log-spread and a smooth spatial field; a third of
                   the channels nearly dead (s ~ 0.11-0.3)

Coders, all single-threaded, each timed on a full encode and a full decode call (inputs prepared outside the
timer), the coders interleaved within each repeat (the machine may be shared); enc_msym_s / dec_msym_s are the
median of --repeats, *_best the fastest repeat. The single-threaded calls are timed in the calling thread's CPU
time (time.thread_time: all three coders run in it), so time the thread spends descheduled on a loaded machine
does not count; only the all-cores variant of ours is timed on the wall clock:
  onedc         GaussianCoder (odc mode, our tables odc_tables(), 1 tile, 1 thread, states per tile chosen by
                the coder from the stream's size: 16 for these cases); decoded with the AVX-512 decoder where the
                CPU has one (machine.vector_decoder in the JSON); indexes from odc_tables().scale_to_index(s)
                (nearest of the 256 table scales in log space)
  compressai    compressai.ans.RansEncoder.encode_with_indexes / RansDecoder.decode_with_indexes, given OUR odc
                tables (cdf, cdf_length, offset as lists) and the same indexes: the same model, so the comparison
                is of coders (its API takes Python lists; their conversion happens inside its calls)
  constriction  constriction.stream.stack.AnsCoder with QuantizedGaussian(-R, R) and the exact per-symbol
                scales (mean 0), R = max |symbol| of the case: an exact continuous model, no tables

ideal_bits is the exact cross-entropy -sum log2 P(symbol | N(0, s)) with P the N(0, s) mass of
[symbol - 1/2, symbol + 1/2] at the symbol's own scale (float64, log-space tails). Size overhead is
bytes / (ideal_bits / 8) - 1. Fixed costs: the bytes of 0-, 1-, 2- and 3-symbol streams (symbols 0 at s = 1), each
coded in a subprocess because compressai's coder writes out of its buffer on tiny streams (here it crashed on 0
and 1 symbols). Also reported for ours (under "onedc"."extra"): the scalar decoder (simd=False, the same bytes),
4 tiles on one thread and on all cores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import log_ndtr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib import _coder  # noqa: E402
from onedc_lib.entropy.coder import GaussianCoder  # noqa: E402
from onedc_lib.entropy.tables import odc_tables  # noqa: E402

SCALE_MIN, SCALE_MAX = 0.11, 64.0


# ---------------------------------------------------------------------------------------------------------- data

def _log_uniform(rng, n):
    return np.exp(rng.uniform(math.log(SCALE_MIN), math.log(SCALE_MAX), n))


def case_gaussian(rng, n=1 << 20):
    scales = _log_uniform(rng, n)
    return np.rint(rng.normal(size=n) * scales).astype(np.int32), scales


def case_laplace(rng, n=1 << 20):
    scales = _log_uniform(rng, n)
    return np.rint(rng.laplace(size=n) * scales / math.sqrt(2.0)).astype(np.int32), scales


def case_onedc(rng, channels=128, height=48, width=48):
    """A real latent's scales: per-channel level and spread, smooth in space, a third of the channels dead."""
    lo, hi = math.log(SCALE_MIN), math.log(SCALE_MAX)
    centre = rng.uniform(lo, math.log(24.0), channels)
    dead = rng.random(channels) < 1 / 3
    centre[dead] = rng.uniform(lo, math.log(0.3), dead.sum())
    spread = np.where(dead, 0.15, rng.uniform(0.3, 1.2, channels))
    field = rng.normal(size=(channels, height + 4, width + 4))
    kernel = np.ones(5) / 5.0  # separable box blur: a smooth spatial pattern per channel
    field = np.apply_along_axis(np.convolve, 2, field, kernel, "valid")
    field = np.apply_along_axis(np.convolve, 1, field, kernel, "valid")
    field /= field.std(axis=(1, 2), keepdims=True)
    log_scale = centre[:, None, None] + spread[:, None, None] * field
    scales = np.exp(np.clip(log_scale, lo, hi)).reshape(-1)
    return np.rint(rng.normal(size=scales.size) * scales).astype(np.int32), scales


CASES = {"gaussian_2p20": case_gaussian, "laplace_2p20": case_laplace, "onedc_768x768_y": case_onedc}


def ideal_bits(symbols: np.ndarray, scales: np.ndarray) -> float:
    """-sum log2 P(x) with P(x) = P(|x| - 1/2 < |X| < |x| + 1/2), X ~ N(0, s), by symmetry; stable far out."""
    a = (np.abs(symbols.astype(np.float64)) - 0.5) / scales
    b = (np.abs(symbols.astype(np.float64)) + 0.5) / scales
    log_upper_a, log_upper_b = log_ndtr(-a), log_ndtr(-b)  # log P(X/s > a), log P(X/s > b)
    log_p = log_upper_a + np.log1p(-np.exp(log_upper_b - log_upper_a))
    return float(-log_p.sum() / math.log(2.0))


# -------------------------------------------------------------------------------------------------------- coders

# Each coder: setup(symbols, scales) -> (encode() -> data, decode(data) -> symbols, size(data) -> bytes).

def onedc_setup(symbols, scales, tiles=1, threads=1, simd=True):
    tables = odc_tables()
    coder = GaussianCoder(tables)
    indexes = tables.scale_to_index(scales)
    return (lambda: coder.encode(symbols, indexes, tiles=tiles, threads=threads),
            lambda data: coder.decode(data, indexes, threads=threads, simd=simd), len)


def compressai_setup(symbols, scales):
    from compressai.ans import RansDecoder, RansEncoder

    tables = odc_tables()
    cdfs = [row[:length].tolist() for row, length in zip(tables.cdf, tables.cdf_length)]
    lengths, offsets = tables.cdf_length.tolist(), tables.offset.tolist()
    sym_list, idx_list = symbols.tolist(), tables.scale_to_index(scales).tolist()
    encoder, decoder = RansEncoder(), RansDecoder()
    return (lambda: encoder.encode_with_indexes(sym_list, idx_list, cdfs, lengths, offsets),
            lambda data: decoder.decode_with_indexes(data, idx_list, cdfs, lengths, offsets), len)


def constriction_setup(symbols, scales):
    import constriction

    bound = int(max(1, np.abs(symbols).max(initial=0)))
    family = constriction.stream.model.QuantizedGaussian(-bound, bound)
    means, stds = np.zeros(len(symbols)), np.asarray(scales, dtype=np.float64)

    def encode():
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols, family, means, stds)
        return coder.get_compressed()

    return encode, lambda words: constriction.stream.stack.AnsCoder(words).decode(family, means, stds), \
        lambda words: 4 * len(words)


CODERS = {"onedc": onedc_setup, "compressai": compressai_setup, "constriction": constriction_setup}


def time_coders(setups: dict, symbols: np.ndarray, repeats: int, wall: tuple = ()) -> dict:
    """Median encode and decode times of every coder, the coders interleaved in each repeat so that a change of
    machine load hits them alike; one warm-up call each first (page faults, caches). Thread CPU time, except for
    the coders named in `wall` (multi-threaded: wall clock). -> {name: (enc, dec, best enc, best dec, bytes)}"""
    data = {}
    for name, (encode, decode, size) in setups.items():
        data[name] = encode()
        assert np.array_equal(np.asarray(decode(data[name])), symbols), f"{name} round trip failed"
    times = {name: ([], []) for name in setups}
    for _ in range(repeats):
        for name, (encode, decode, _) in setups.items():
            clock = time.perf_counter if name in wall else time.thread_time
            start = clock()
            encode()
            middle = clock()
            decode(data[name])
            times[name][0].append(middle - start)
            times[name][1].append(clock() - middle)
    return {name: (statistics.median(times[name][0]), statistics.median(times[name][1]), min(times[name][0]),
                   min(times[name][1]), setups[name][2](data[name])) for name in setups}


def stream_bytes(name: str, n: int) -> int:
    encode, _, size = CODERS[name](np.zeros(n, np.int32), np.ones(n))
    return size(encode())


def _stream_bytes(name: str, n: int):
    """Bytes of an n-symbol stream (symbols 0 at s = 1) from coder `name`, in a subprocess: compressai's coder
    writes out of its buffer on tiny streams (it crashed on an empty one here). None if it crashed."""
    import subprocess

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import entropy_coder as ec; "
            "print(ec.stream_bytes(sys.argv[2], int(sys.argv[3])))")
    result = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), name, str(n)],
                            capture_output=True, text=True)
    return int(result.stdout.split()[-1]) if result.returncode == 0 else None


def fixed_costs() -> dict:
    """Bytes of 0-, 1-, 2- and 3-symbol streams (symbols 0 at s = 1) for each coder; None: the coder crashed."""
    return {name: {str(n): _stream_bytes(name, n) for n in (0, 1, 2, 3)} for name in CODERS}


# ---------------------------------------------------------------------------------------------------------- main

def run(repeats: int, quick: bool) -> dict:
    load_before = os.getloadavg()[0]  # the machine may be shared: its 1-minute load before and after
    rng = np.random.default_rng(2024)
    cases = {}
    for case, make in CASES.items():
        symbols, scales = make(rng) if not quick else make(rng, **({"n": 1 << 16} if "2p20" in case else
                                                                    {"channels": 16}))
        ideal = ideal_bits(symbols, scales)
        setups = {name: setup(symbols, scales) for name, setup in CODERS.items()}
        setups["onedc_scalar_decoder"] = onedc_setup(symbols, scales, simd=False)
        setups["onedc_tiles4_threads1"] = onedc_setup(symbols, scales, 4, 1)
        setups["onedc_tiles4_all_cores"] = onedc_setup(symbols, scales, 4, 0)
        timed = time_coders(setups, symbols, repeats, wall=("onedc_tiles4_all_cores",))
        results, extra = {}, {}
        for name, (t_enc, t_dec, best_enc, best_dec, size) in timed.items():
            n = len(symbols)
            entry = {"enc_msym_s": n / t_enc / 1e6, "dec_msym_s": n / t_dec / 1e6, "bytes": int(size),
                     "enc_msym_s_best": n / best_enc / 1e6, "dec_msym_s_best": n / best_dec / 1e6}
            if name in CODERS:
                results[name] = {**entry, "ideal_bits": ideal, "n_symbols": int(len(symbols))}
            else:
                extra[name[len("onedc_"):]] = entry
        results["onedc"]["extra"] = extra
        results["onedc"]["states_per_tile"] = setups["onedc"][0]()[0]  # the tile's first byte (one tile)
        cases[case] = results
        print_case(case, results)
    costs = fixed_costs()
    print("\nfixed cost (bytes of a 0- / 1- / 2- / 3-symbol stream; None: the coder crashed): " +
          ", ".join(f"{name} " + " / ".join(str(v) for v in c.values()) for name, c in costs.items()))
    return {"cases": cases, "fixed_cost_bytes": costs,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "vector_decoder": _coder.simd_available(),
                        "repeats": repeats, "load_average_1min": [load_before, os.getloadavg()[0]]}}


def print_case(case: str, results: dict) -> None:
    ours = results["onedc"]
    print(f"\n{case}: {ours['n_symbols']} symbols, ideal {ours['ideal_bits'] / 8:.0f} bytes "
          f"({ours['ideal_bits'] / ours['n_symbols']:.3f} bits/symbol); speeds: median (best) of the repeats")
    print(f"  {'coder':<13} {'enc Msym/s':>16} {'dec Msym/s':>16} {'bytes':>9} {'overhead':>9} "
          f"{'ours/peer enc':>16} {'ours/peer dec':>16}")
    for name, r in results.items():
        overhead = r["bytes"] / (r["ideal_bits"] / 8) - 1
        enc, dec = f"{r['enc_msym_s']:.1f} ({r['enc_msym_s_best']:.1f})", f"{r['dec_msym_s']:.1f} ({r['dec_msym_s_best']:.1f})"
        ratio_enc = f"{ours['enc_msym_s'] / r['enc_msym_s']:.1f}x ({ours['enc_msym_s_best'] / r['enc_msym_s_best']:.1f}x)"
        ratio_dec = f"{ours['dec_msym_s'] / r['dec_msym_s']:.1f}x ({ours['dec_msym_s_best'] / r['dec_msym_s_best']:.1f}x)"
        print(f"  {name:<13} {enc:>16} {dec:>16} {r['bytes']:>9} {100 * overhead:>8.3f}% {ratio_enc:>16} {ratio_dec:>16}")
    print(f"  onedc: {ours['states_per_tile']} interleaved states (chosen by size)")
    for label, r in ours["extra"].items():
        print(f"  onedc {label}: enc {r['enc_msym_s']:.1f} ({r['enc_msym_s_best']:.1f}), "
              f"dec {r['dec_msym_s']:.1f} ({r['dec_msym_s_best']:.1f}) Msym/s, {r['bytes']} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small cases (a smoke test)")
    args = parser.parse_args()
    results = run(args.repeats, args.quick)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
