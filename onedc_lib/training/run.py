"""Training from Python (the training notebooks): one call per stage, and the curves and samples of a run.

    model_dir = run_stage(1, preset="nano_q3", out_dir="runs/s1", steps=300, stage0="runs/s0")
    training_curves("runs/s1")      # a matplotlib Figure of log.csv (stage 0: one row per part)
    training_samples("runs/s1")     # the newest samples/step_*.png of the run (of each part)

A run is the stage's command line, built here as an argument list: with one process the stage's own `main` parses
and runs it in this process; with several, `python -m torch.distributed.run --standalone --nproc_per_node N -m
onedc_lib.training.stageN ...` runs it in a subprocess whose output is streamed here (torchrun works on CPUs with
gloo and on GPUs with nccl; the loop's accelerate picks both up from the environment).
"""
from __future__ import annotations

import csv
import importlib
import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from ..config import load_config
from .sources import smoke_sources

__all__ = ["SMOKE", "read_log", "run_stage", "stage_arguments", "training_curves", "training_samples",
           "training_summary"]

STAGES = {0: "onedc_lib.training.stage0", 1: "onedc_lib.training.stage1", 2: "onedc_lib.training.stage2"}
# smoke=True (CI): a few steps on tiny crops, every step logged and sampled
SMOKE = {"train.crop": 64, "train.batch_size": 2, "train.batch_transform": False, "train.stage0_crop": 64,
         "train.stage0_batch_size": 2, "train.warmup_steps": 1, "train.log_every": 1, "train.sample_every": 1,
         "train.num_workers": 0, "train.keep_last": 1}
SMOKE_STEPS = 2
HIDDEN_COLUMNS = ("step", "lr", "s_per_step")  # not plotted (the summary keeps s_per_step)


def stage_arguments(stage: int, preset: str, out_dir, *, steps: int | None = None, overrides: dict | None = None,
                    seed: int = 0, resume: str | None = None, data: str | None = None, stage0: str | None = None,
                    init: str | None = None, threads: int | None = None, ckpt_every: int | None = None,
                    part: str | None = None, lpips: str | None = None, weights: dict | None = None) -> list[str]:
    """The command-line arguments of `python -m onedc_lib.training.stage<stage>` for these settings.

    Empty strings and zeros mean "not given" (the preset's value), as papermill parameters cannot be None.
    `weights`: local weight files by the stage's option name, e.g. {"vae": ..., "unet": ..., "tokenizer": ...,
    "teacher": ..., "text_encoder": ...} (sd15). Override values go through JSON, which the stages' YAML parser
    reads back as the same value."""
    if stage not in STAGES:
        raise ValueError(f"stage must be 0, 1 or 2, not {stage!r}")
    if part and stage != 0:
        raise ValueError("part is an option of stage 0")
    if stage == 0 and (stage0 or init or weights):
        raise ValueError("stage 0 starts from scratch: stage0, init and weights are options of stages 1 and 2")
    args = ["--preset", str(preset), "--out", str(out_dir), "--seed", str(int(seed))]
    for flag, value in (("--steps", steps), ("--ckpt-every", ckpt_every), ("--threads", threads)):
        if value:
            args += [flag, str(int(value))]
    for flag, value in (("--resume", resume), ("--data", data), ("--stage0", stage0), ("--init", init),
                        ("--part", part), ("--lpips", lpips),
                        *((f"--{name.replace('_', '-')}", path) for name, path in (weights or {}).items())):
        if value:
            args += [flag, str(value)]
    for key, value in (overrides or {}).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def run_stage(stage: int, preset: str = "nano", out_dir="runs/train", *, steps: int | None = None,
              overrides: dict | None = None, seed: int = 0, resume: str | None = None, data: str | None = None,
              stage0: str | None = None, init: str | None = None, threads: int | None = None,
              num_processes: int = 1, ckpt_every: int | None = None, part: str | None = None,
              lpips: str | None = None, weights: dict | None = None, device: str = "",
              smoke: bool = False) -> Path:
    """Train one stage into `out_dir`; returns what the next stage takes: the stage-0 folder (stage 0) or the
    model folder OUT/model (stages I and II).

    device: "cpu" trains on the CPU even where there is a GPU, "cuda" requires one, "" lets accelerate choose.
    smoke: SMOKE's tiny settings (over `overrides`), at most SMOKE_STEPS steps, and missing folders replaced by
    what ships with the package (sources.smoke_sources: the bundled model's parts, the sample photographs)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, not {num_processes}")
    if device not in ("", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"device must be '', 'cpu' or 'cuda', not {device!r}")
    if smoke:
        overrides = {**(overrides or {}), **SMOKE}
        steps = min(steps, SMOKE_STEPS) if steps else SMOKE_STEPS
        stage0, init, data, notes = smoke_sources(stage, load_config(preset, overrides), stage0, init, data)
        for note in notes:
            print(note, flush=True)
    args = stage_arguments(stage, preset, out_dir, steps=steps, overrides=overrides, seed=seed, resume=resume,
                           data=data, stage0=stage0, init=init, threads=threads, ckpt_every=ckpt_every, part=part,
                           lpips=lpips, weights=weights)
    with _device_environment(device):
        if num_processes == 1:
            importlib.import_module(STAGES[stage]).main(args)
        else:
            _launch(stage, args, num_processes, threads)
    out = Path(out_dir)
    result = out if stage == 0 else out / "model"
    if not result.is_dir():
        raise RuntimeError(f"stage {stage} finished without writing {result}")
    return result


@contextmanager
def _device_environment(device: str):
    """ACCELERATE_USE_CPU for "cpu" (the loop's Accelerator and a launched run read it); "cuda" must exist."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device")
    saved = os.environ.get("ACCELERATE_USE_CPU")
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = saved


def _launch(stage: int, args: list[str], num_processes: int, threads: int | None) -> None:
    """torchrun the stage in `num_processes` processes, its output copied here as it comes (progress bars too)."""
    import subprocess

    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    if threads:
        env["OMP_NUM_THREADS"] = str(int(threads))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(num_processes), "-m", STAGES[stage], *args]
    print(" ".join(command), flush=True)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        while chunk := os.read(process.stdout.fileno(), 65536):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"stage {stage} with {num_processes} processes failed (exit status {code})")


# ================================================================================================ what a run shows
def _logs(run_dir) -> list[tuple[str, Path]]:
    """(name, log.csv) of a run: OUT/log.csv, or one per stage-0 part (OUT/<part>/log.csv)."""
    run_dir = Path(run_dir)
    if (run_dir / "log.csv").is_file():
        return [(run_dir.name, run_dir / "log.csv")]
    from .stage0 import PARTS

    order = lambda p: (PARTS.index(p.parent.name) if p.parent.name in PARTS else len(PARTS), p.parent.name)
    logs = [(p.parent.name, p) for p in sorted(run_dir.glob("*/log.csv"), key=order)]
    if not logs:
        raise FileNotFoundError(f"no log.csv in {run_dir} or its subfolders: not a training run folder")
    return logs


def read_log(path) -> list[dict[str, float]]:
    """Rows of a log.csv as numbers; a value a row lacks (an objective not updated in that window) is NaN."""
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def training_summary(run_dir):
    """One row per log and value: first and last logged value and their steps (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for name, path in _logs(run_dir):
        log = read_log(path)
        columns = [c for c in (log[0] if log else {}) if c not in ("step", "lr")]
        for column in columns:
            points = [(r["step"], r[column]) for r in log if math.isfinite(r[column])]
            if points:
                rows.append({"log": name, "value": column, "first_step": int(points[0][0]), "first": points[0][1],
                             "last_step": int(points[-1][0]), "last": points[-1][1]})
    return pd.DataFrame(rows, columns=["log", "value", "first_step", "first", "last_step", "last"])


def training_curves(run_dir, columns: list[str] | None = None, max_panels: int = 6):
    """The logged values over steps, one row of panels per log (stage 0: per part): `columns`, or the losses
    first and then the rest (not lr and s_per_step), at most `max_panels` per row."""
    from matplotlib.figure import Figure

    logs = [(name, read_log(path)) for name, path in _logs(run_dir)]
    panels = []
    for name, log in logs:
        present = list(log[0]) if log else []
        chosen = [c for c in columns if c in present] if columns else sorted(
            (c for c in present if c not in HIDDEN_COLUMNS), key=lambda c: (not c.endswith("loss"), c))
        panels.append((name, log, chosen[:max_panels]))
    width = max((len(chosen) for _, _, chosen in panels), default=1) or 1
    fig = Figure(figsize=(3.2 * width, 2.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), width, squeeze=False)
    for row, (name, log, chosen) in enumerate(panels):
        for col in range(width):
            ax = axes[row][col]
            if col >= len(chosen):
                ax.set_axis_off()
                continue
            points = [(r["step"], r[chosen[col]]) for r in log if math.isfinite(r[chosen[col]])]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 20 else None)
            ax.set_title(f"{name}: {chosen[col]}" if len(panels) > 1 else chosen[col], fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    return fig


def training_samples(run_dir, max_width: float = 14.0):
    """The newest sample image of the run (of each stage-0 part), rows titled with the part and step."""
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    found = []
    for name, log in _logs(run_dir):
        samples = sorted((log.parent / "samples").glob("step_*.png"))
        if samples:
            found.append((name, samples[-1]))
    if not found:
        raise FileNotFoundError(f"no samples/step_*.png under {run_dir} (train.sample_every = 0?)")
    images = [(name, path, np.asarray(Image.open(path).convert("RGB"))) for name, path in found]
    heights = [max(im.shape[0] / im.shape[1], 0.05) * max_width for _, _, im in images]
    fig = Figure(figsize=(max_width, sum(heights) + 0.4 * len(images)), layout="constrained")
    axes = fig.subplots(len(images), 1, squeeze=False, height_ratios=heights)
    for ax, (name, path, image) in zip(axes[:, 0], images):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{name}: step {int(path.stem.split('_')[-1])}", fontsize=9)
        ax.set_axis_off()
    return fig

