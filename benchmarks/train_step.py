"""Training step time and peak memory of the nano stages on CPU (or GPU where there is one), and of the sd15
stages I and II (random weights, the preset's batch 8 x 512 crops, bf16, checkpointing) where there is a GPU.

Each configuration runs in its own process (so that its peak memory is its own): the task is built from the
preset, trained for --steps steps through the one training loop (log every step, one checkpoint at the end), and
the per-step times the loop logs are summarised (the first --warmup steps left out). Memory: the process's peak
resident set (ru_maxrss) after building and after training; on CUDA also torch.cuda.max_memory_allocated.
Without a GPU the sd15 configurations are reported as skipped ("no GPU").

    python benchmarks/train_step.py [--threads 1] [--steps 12] [--json results/bench_train_step.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (name, stage, preset, preset overrides, needs a GPU)
CONFIGS = [
    ("stage1 nano 4x128", "stage1", "nano", {"train.batch_size": 4, "train.crop": 128}, False),
    ("stage1 nano 4x128 +LPIPS", "stage1", "nano", {"train.batch_size": 4, "train.crop": 128, "_lpips": "random"},
     False),
    ("stage1 nano 2x64", "stage1", "nano", {"train.batch_size": 2, "train.crop": 64}, False),
    ("stage2 nano 4x128", "stage2", "nano", {"train.batch_size": 4, "train.crop": 128, "train.generator_every": 2},
     False),
    ("stage1 sd15 8x512", "stage1", "sd15", {}, True),
    ("stage2 sd15 8x512", "stage2", "sd15", {}, True),
    ("stage2 sd15 8x512 frozen bf16", "stage2", "sd15", {"train.frozen_dtype": "bfloat16"}, True),
]


def _git_commit() -> str | None:
    result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    return result.stdout.strip() or None


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(stage: str, preset: str, overrides: dict, steps: int, warmup: int) -> dict:
    """In this process: build, train `steps` steps, summarise the logged step times."""
    import csv
    import warnings

    import torch

    from onedc_lib.config import load_config
    from onedc_lib.training import loop

    warnings.simplefilter("ignore")
    lpips = overrides.pop("_lpips", "off")
    config = load_config(preset, {**overrides, "train.log_every": 1, "train.sample_every": 0,
                                  "train.ckpt_every": 10**9})
    accelerator = loop.make_accelerator(config.train)
    loop.seed_everything(0)
    if stage == "stage1":
        from onedc_lib.training.stage1 import Stage1Task

        task = Stage1Task(config, lpips=lpips)
    else:
        from onedc_lib.training.stage2 import Stage2Task

        task = Stage2Task(config, lpips=lpips)
    rss_built = _peak_rss_mib()
    dataset, _ = loop.dataset_from_args(None)
    batches = loop.Batches(dataset, config.train.batch_size, config.train.crop, seed=0)
    with tempfile.TemporaryDirectory() as out:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        loop.train(accelerator, task, batches, out, steps)
        with open(Path(out) / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    times = [float(r["s_per_step"]) for r in rows][warmup:]
    result = {"median_s_per_step": statistics.median(times), "min_s_per_step": min(times),
              "mean_s_per_step": statistics.fmean(times), "steps_timed": len(times),
              "peak_rss_after_build_mib": round(rss_built, 1), "peak_rss_mib": round(_peak_rss_mib(), 1),
              "trainable_params": sum(p.numel() for o in task.objectives() for p in o.trainable())}
    if stage == "stage2":  # the generator objective runs every generator_every steps: split the two step kinds
        every = config.train.generator_every
        all_times = [float(r["s_per_step"]) for r in rows]
        gen = [t for i, t in enumerate(all_times) if i % every == 0 and i >= warmup]
        critic = [t for i, t in enumerate(all_times) if i % every and i >= warmup]
        result.update(median_s_generator_and_critic_step=statistics.median(gen) if gen else None,
                      median_s_critic_only_step=statistics.median(critic) if critic else None)
    if torch.cuda.is_available():
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", default=None, help="run only configurations whose name contains this")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one configuration, JSON out
    args = parser.parse_args(argv)

    if args.one is not None:
        import torch

        torch.set_num_threads(args.threads)
        stage, preset, overrides = json.loads(args.one)
        print("RESULT " + json.dumps(run_one(stage, preset, overrides, args.steps, args.warmup)), flush=True)
        return

    import torch

    gpu = torch.cuda.is_available()

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    results = []
    for name, stage, preset, overrides, needs_gpu in CONFIGS:
        if args.only and args.only not in name:
            continue
        if needs_gpu and not gpu:
            results.append({"name": name, "stage": stage, "preset": preset, "overrides": overrides,
                            "skipped": "no GPU"})
            print(f"{name:28s} skipped: no GPU", flush=True)
            continue
        started = time.time()
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps([stage, preset, overrides]), "--threads",
                               str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                              env=env, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        result = {"name": name, "stage": stage, "preset": preset, "overrides": overrides, **json.loads(lines[0][7:]),
                  "wall_s": round(time.time() - started, 1)}
        results.append(result)
        extra = ""
        if stage == "stage2":
            extra = (f" (generator+critic {result['median_s_generator_and_critic_step']:.3f} s, critic only "
                     f"{result['median_s_critic_only_step']:.3f} s)")
        print(f"{name:28s} {result['median_s_per_step']:.3f} s/step{extra}, peak RSS {result['peak_rss_mib']:.0f} "
              f"MiB (after build {result['peak_rss_after_build_mib']:.0f}), "
              f"{result['trainable_params'] / 1e6:.2f} M trainable"
              + (f", CUDA peak {result['cuda_max_allocated_mib']:.0f} MiB" if gpu else ""), flush=True)
    if args.json:
        meta = {"threads": args.threads, "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
                "machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": _git_commit(),
                "note": "per-step times include data loading (the 4 sample photographs, in memory); peak RSS "
                        "includes the imports (about 850 MiB of it is torch + diffusers + peft)"}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
