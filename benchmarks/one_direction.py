"""Peak memory of a process that only compresses or only decompresses, in the fast mode with bf16 weights.

    python benchmarks/one_direction.py compress --size 4096x2816 --save out.odc --json enc.json --threads 2
    python benchmarks/one_direction.py decompress --file out.odc --json dec.json --threads 2

The model (sd15 with seeded random weights, or --preset) keeps only what the direction runs (OneDC.keep_only) and
stores its image networks' weights in bf16 (OneDC.cast_weights); then one warm-up at 64x64 (compress only: a
decompress-only model cannot write its own small file) and one timed run (eval.modes.timed: wall and CPU seconds,
the process's peak RSS, weights included, and the RSS before it). A decompress run reads a file written earlier by a
compress run (at 4096 x 2816 the encode takes half an hour on this machine).
After each piece of work (onedc_lib.progress) it prints the RSS and its peak so far: what a run cut short showed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onedc_lib import progress  # noqa: E402
from onedc_lib.bitstream import atomic_write, read_bytes  # noqa: E402
from onedc_lib.eval.modes import parse_sizes, timed  # noqa: E402
from onedc_lib.eval.runner import device_info  # noqa: E402
from onedc_lib.eval.timing import PeakMemory, make_image  # noqa: E402
from onedc_lib.models.onedc import FAST_DECODING, FAST_ENCODING  # noqa: E402
from paper_scale import load  # noqa: E402  (the machine's load, as paper_scale records it)


class PieceLog:
    """A progress listener (onedc_lib.progress) that prints, after each piece of work, the seconds so far, the
    RSS and the peak RSS since `reset_peak` (Linux's VmHWM, reset through /proc/self/clear_refs): what a run cut
    short has shown (the generator, the first VAE tiles)."""

    def __init__(self):
        self.total, self.n, self.start = 0, 0, time.perf_counter()

    @staticmethod
    def reset_peak() -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    @staticmethod
    def status_gb(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
        return float("nan")

    def refresh(self) -> None:
        pass

    def update(self, n: int) -> None:
        self.n += n
        print(f"  piece {self.n}/{self.total}: {time.perf_counter() - self.start:.0f} s, RSS "
              f"{self.status_gb('VmRSS'):.2f} GiB, peak {self.status_gb('VmHWM'):.2f} GiB; {load()}", flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=("compress", "decompress"))
    parser.add_argument("--size", help="compress: WxH of the synthetic image (eval.timing.make_image)")
    parser.add_argument("--file", type=Path, help="decompress: the .odc file")
    parser.add_argument("--save", type=Path, help="compress: write the file here")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--preset", default="sd15")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if (args.direction == "compress") != (args.size is not None) or (args.direction == "decompress") != (
            args.file is not None):
        parser.error("compress takes --size, decompress --file")
    if args.threads:
        torch.set_num_threads(args.threads)
    from onedc_lib.weights import build_model

    started = time.perf_counter()
    model = build_model(args.preset).keep_only(args.direction).cast_weights(torch.bfloat16)
    model.encode_options, model.decode_options = FAST_ENCODING, FAST_DECODING
    loaded_gb = PeakMemory.rss() / 2**30
    report = {"format": 1, "kind": "one_direction", "direction": args.direction, "model": args.preset,
              "machine": device_info("cpu"), "weights_dtype": str(model.weights_dtype),
              "encoding": repr(FAST_ENCODING), "decoding": repr(FAST_DECODING), "loaded_gb": loaded_gb,
              "load": {"start": load()}}
    print(f"{args.preset} keeping {args.direction}, {torch.get_num_threads()} threads, {loaded_gb:.2f} GiB loaded; "
          f"{report['load']['start']}", flush=True)
    pieces = PieceLog()
    if args.direction == "compress":
        width, height = parse_sizes(args.size)[0]
        model.compress(make_image(64, 64))
        x = make_image(height, width)
        pieces.reset_peak()
        with progress.listening(pieces):
            compressed, measured = timed(lambda: model.compress(x), torch.device("cpu"))
        data = compressed.to_bytes()
        if args.save:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.save, data)
        report.update(size=f"{width}x{height}", bytes=len(data))
    else:
        data = read_bytes(args.file)
        pieces.reset_peak()
        with progress.listening(pieces):
            image, measured = timed(lambda: model.decompress(data), torch.device("cpu"))
        report.update(size=f"{image.shape[-1]}x{image.shape[-2]}", bytes=len(data))
    report.update({f"{args.direction}_{key}": value for key, value in measured.items()})
    report["load"]["end"] = load()
    report["wall_s"] = time.perf_counter() - started
    print(json.dumps({k: v for k, v in report.items() if k not in ("machine",)}), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, (json.dumps(report, indent=1) + "\n").encode())
    return report


if __name__ == "__main__":
    main()
