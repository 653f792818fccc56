"""nano at 512x768 in CPU seconds (time.process_time, so that other processes' load does not count), per
component, for the variants of the decode path: the previous nano VAE (block_out_channels [16, 32, 32, 32]) on the
plain path (NCHW float32), today's VAE on the plain path, today's decode path (OneDC.decode_options), and the
generator with 2 attention heads of 32 channels instead of the preset's 32 heads of 2 (diffusers reads
`attention_head_dim` as the number of heads).

    python benchmarks/decode_variants.py [--repeats 3] [--out results/speed/nano_decode_variants_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib.bitstream import atomic_write  # noqa: E402
from onedc_lib.eval.timing import make_image, timed_round_trip  # noqa: E402
from onedc_lib.models.onedc import REFERENCE_DECODING, DecodeOptions  # noqa: E402
from onedc_lib.weights import build_model  # noqa: E402

VARIANTS = {
    "previous VAE [16,32,32,32], plain path": ({"vae.autoencoder.block_out_channels": [16, 32, 32, 32]},
                                               REFERENCE_DECODING),
    "VAE [8,16,32,32], plain path": ({}, REFERENCE_DECODING),
    "VAE [8,16,32,32], decode_options (channels_last)": ({}, DecodeOptions()),
    "... and generator attention_head_dim 2 (2 heads of 32)": ({"generator.unet.attention_head_dim": 2},
                                                                DecodeOptions()),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/speed/nano_decode_variants_cpu.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x = make_image(512, 768)
    report = {"height": 512, "width": 768, "threads": 1, "clock": "time.process_time (CPU seconds)",
              "repeats": args.repeats, "variants": {}}
    for label, (overrides, options) in VARIANTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model("nano_q3", **overrides)
        model.decode_options = options
        timed_round_trip(model, x, time.process_time)  # warm-up
        runs = [timed_round_trip(model, x, time.process_time) for _ in range(args.repeats)]
        report["variants"][label] = {
            side: {k: statistics.median(r[side][k] for r in runs) for k in runs[0][side]} for side in ("encode", "decode")}
        d = report["variants"][label]["decode"]
        print(f"{label}: encode {report['variants'][label]['encode']['total']:.3f} s, decode {d['total']:.3f} s "
              f"(unet {d['unet']:.3f}, vae_dec {d['vae_dec']:.3f})", flush=True)
    atomic_write(args.out, (json.dumps(report, indent=1) + "\n").encode())
    return report


if __name__ == "__main__":
    main()
