"""The guidance ablation (notebooks/30_ablation_guidance.ipynb): what guides the one-step generator.

    (a) "text"           the image's caption through a frozen text encoder (codec.guidance: text), no distillation
    (b) "hyper"          the hyperprior's semantic tokens, as OneDC, without distillation (loss.distill_weight 0)
    (c) "hyper_distill"  the hyperprior's tokens with semantic distillation: the full model, the anchor

Each variant is the same preset with only those fields overridden, trained through stage I
(`training.run.run_stage`) at each lambda, then evaluated on real files by `eval.runner.evaluate` (a text-guided
model's files carry the caption, counted in the bpp). The paper reports BD-rates of (a) and (b) against (c) on
DISTS, LPIPS and FID; with two or three rates per variant the BD integral is the `linear` one (bdrate.py).

    summary = guidance_ablation("nano", lmbdas=[1.8, 12.2], steps=400, stage0="runs/s0", data="out/nano_data/train",
                                test_images="out/nano_data/test", out_dir="out/ablation",
                                results_dir="results/ablation")

Written: models and files under out_dir; under results_dir the runner's per-variant CSV + JSON, `points.csv`
(one row per variant and lambda), `bdrate.csv`, `bdrate_per_image.csv` (the BD-rates on each test image alone:
how noisy the table is) and `ablation.json` (all of it with the settings and provenance), and `rd_ablation.png`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from pathlib import Path

__all__ = ["ANCHOR", "LABELS", "VARIANTS", "bd_table", "frame", "guidance_ablation", "per_image_bd"]

VARIANTS = {
    "text": {"codec.guidance": "text", "loss.distill_weight": 0},
    "hyper": {"loss.distill_weight": 0},
    "hyper_distill": {},
}
ANCHOR = "hyper_distill"
LABELS = {"text": "(a) text prompt", "hyper": "(b) hyperprior tokens",
          "hyper_distill": "(c) hyperprior tokens + distillation"}
BD_METRICS = ("dists", "lpips", "fid")


def _model_name(variant: str, lmbda: float) -> str:
    return f"{variant}_l{lmbda:g}"


def train_variants(preset: str, lmbdas, out_dir, *, variants=None, steps: int = 0, overrides: dict | None = None,
                   stage0: str = "", data: str = "", seed: int = 0, threads: int = 0, device: str = "",
                   lpips: str = "", smoke: bool = False) -> dict[str, dict[float, Path]]:
    """Stage I of every variant at every lambda -> {variant: {lambda: model folder}}.

    A variant's model folder that exists already is reused (re-running the notebook evaluates again only), an
    interrupted run resumes. The folders are linked as out_dir/models/<variant>_l<lambda>, the names the results
    use."""
    from ..training.run import run_stage

    out_dir = Path(out_dir)
    variants = list(variants or VARIANTS)
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; available: {', '.join(VARIANTS)}")
    if not lmbdas:
        raise ValueError("no lambdas: the ablation needs at least one rate point per variant")
    models: dict[str, dict[float, Path]] = {}
    for variant in variants:
        models[variant] = {}
        for lmbda in lmbdas:
            name = _model_name(variant, float(lmbda))
            run_dir = out_dir / "train" / name
            if not (run_dir / "model").is_dir():
                started = time.perf_counter()
                run_stage(1, preset, run_dir, steps=steps or None, stage0=stage0 or None, data=data or None,
                          overrides={**(overrides or {}), **VARIANTS[variant], "loss.lmbda": float(lmbda)},
                          seed=seed, threads=threads or None, device=device, lpips=lpips or None, smoke=smoke,
                          resume="auto")  # an interrupted run goes on from its newest checkpoint
                print(f"{name}: stage I in {time.perf_counter() - started:.0f} s", flush=True)
            link = out_dir / "models" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(Path("..") / "train" / name / "model", target_is_directory=True)
            models[variant][float(lmbda)] = link
    return models


def bd_table(summaries: dict[str, dict], metrics=BD_METRICS, anchor: str = ANCHOR) -> list[dict]:
    """One row per variant other than the anchor: BD-rate (%) against the anchor on each metric (linear
    interpolation in log rate; None with the reason when a metric is missing or the curves do not overlap)."""
    from ..eval.bdrate import bd_rate, higher_is_better

    if anchor not in summaries:
        raise ValueError(f"the anchor variant {anchor!r} was not evaluated")

    def curve(summary, metric):
        points = [p for p in summary["points"] if p.get(metric) is not None and math.isfinite(p[metric])]
        return [p["bpp"] for p in points], [p[metric] for p in points]

    rows = []
    for variant, summary in summaries.items():
        if variant == anchor:
            continue
        row = {"variant": variant, "label": LABELS[variant], "anchor": anchor}
        for metric in metrics:
            rate_a, value_a = curve(summaries[anchor], metric)
            rate_b, value_b = curve(summary, metric)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    row[f"bd_rate_{metric}"] = bd_rate(rate_a, value_a, rate_b, value_b,
                                                       higher_is_better(metric), method="linear", min_overlap=0)
                row[f"note_{metric}"] = "; ".join(str(w.message) for w in caught)
            except ValueError as error:
                row[f"bd_rate_{metric}"] = None
                row[f"note_{metric}"] = str(error) if rate_a and rate_b else f"{metric} not measured"
        rows.append(row)
    return rows


def per_image_bd(summaries: dict[str, dict], results_dir, metrics=("dists", "lpips"),
                 anchor: str = ANCHOR) -> list[dict]:
    """BD-rate (%) of each variant against the anchor on every test image alone (each image's own curves, from
    the runner's per-image CSV rows): how much the pooled table depends on which few images were tested.
    One row per variant, metric and image; None where that image's curves do not overlap."""
    from ..eval.bdrate import bd_rate, higher_is_better

    def rows(summary):
        with open(Path(results_dir) / summary["csv"], newline="") as f:
            return list(csv.DictReader(f))

    anchor_rows = rows(summaries[anchor])
    out = []
    for variant, summary in summaries.items():
        if variant == anchor:
            continue
        variant_rows = rows(summary)
        for metric in metrics:
            for name in summary["images"]["names"]:
                a = [(float(r["bpp"]), float(r[metric])) for r in anchor_rows if r["name"] == name and r.get(metric)]
                b = [(float(r["bpp"]), float(r[metric])) for r in variant_rows if r["name"] == name and r.get(metric)]
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        value = bd_rate(*zip(*a), *zip(*b), higher_is_better(metric), method="linear",
                                        min_overlap=0)
                except (ValueError, TypeError):
                    value = None
                out.append({"variant": variant, "metric": metric, "image": name, "bd_rate": value})
    return out


def frame(rows: list[dict]):
    """Rows (points or BD-rates) as a pandas DataFrame, for display."""
    import pandas as pd

    return pd.DataFrame(rows)


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                         for k in columns})
    return buffer.getvalue()


def guidance_ablation(preset: str, lmbdas, test_images, out_dir, results_dir, *, variants=None, steps: int = 0,
                      overrides: dict | None = None, stage0: str = "", data: str = "", seed: int = 0,
                      threads: int = 0, device: str = "", lpips: str = "", metrics=("psnr", "lpips", "dists"),
                      fid: bool = True, fid_min_patches: int = 2, smoke: bool = False) -> dict:
    """Train (train_variants), evaluate every variant on test_images, write the tables and the figure; returns
    the summary written to results_dir/ablation.json (with "summaries": the runner's summary per variant).

    test_images: a folder, or "samples". smoke (CI): two stage-I steps on 64-px crops per model, one 64x96 test
    crop, the provisioned metrics only, no FID, everything under out_dir (results_dir untouched)."""
    from ..bitstream import atomic_write
    from ..paths import output_dir
    from ..eval.runner import evaluate, git_commit, json_safe
    from ..eval.sweep import _provisioned, dataset_folder, rd_figure

    started = time.perf_counter()
    _, test_folder = dataset_folder(test_images, out_dir, smoke=smoke)
    metrics = list(metrics)
    if smoke:
        metrics, notes = _provisioned(metrics, None)
        fid = False
        for note in notes:
            warnings.warn(note, stacklevel=2)
    models = train_variants(preset, lmbdas, out_dir, variants=variants, steps=steps, overrides=overrides,
                            stage0=stage0, data=data, seed=seed, threads=threads, device=device, lpips=lpips,
                            smoke=smoke)
    train_s = time.perf_counter() - started
    results_dir = output_dir(results_dir, Path(out_dir) / "results", smoke)
    summaries, points = {}, []
    for variant, by_lmbda in models.items():
        spec = "onedc:" + ",".join(str(path) for path in by_lmbda.values())
        summary = evaluate(spec, test_folder, Path(out_dir) / "eval", metrics=metrics, fid=fid,
                           device=device or "cpu", results_dir=results_dir, progress=False,
                           fid_min_patches=fid_min_patches, command=f"guidance ablation: {variant}")
        summary["results_file"] = str(results_dir / f"{summary['codec']}.json")
        summaries[variant] = summary
        for lmbda, point in zip(by_lmbda, summary["points"]):
            points.append({"variant": variant, "label": LABELS[variant], "lmbda": lmbda, "model": point["rate"],
                           **{k: point.get(k) for k in ("bpp", *metrics, "fid", "kid")}})
    compared = ANCHOR in summaries and len(summaries) > 1
    table = bd_table(summaries) if compared else []
    per_image = per_image_bd(summaries, results_dir, [m for m in ("dists", "lpips") if m in metrics]) \
        if compared else []
    atomic_write(results_dir / "points.csv", _csv_text(points).encode())
    atomic_write(results_dir / "bdrate.csv", _csv_text(table).encode())
    atomic_write(results_dir / "bdrate_per_image.csv", _csv_text(per_image).encode())
    figure = rd_figure(summaries, [m for m in metrics if any(m in s["metrics"] for s in summaries.values())],
                       labels={s["codec"]: LABELS[v] for v, s in summaries.items()})  # (a), (b), (c)
    figure.savefig(results_dir / "rd_ablation.png", dpi=80 if smoke else 150, bbox_inches="tight")
    result = json_safe({
        "format": "onedc-guidance-ablation/1",
        "preset": preset, "lmbdas": [float(x) for x in lmbdas], "variants": {v: VARIANTS[v] for v in models},
        "anchor": ANCHOR, "labels": LABELS, "steps": steps, "overrides": overrides or {}, "stage0": stage0,
        "data": data, "test_images": str(test_images), "seed": seed, "threads": threads, "smoke": smoke,
        "bd_method": "linear (polyline in log rate; two or three rates per variant)",
        "points": points, "bdrate": table, "bdrate_per_image": per_image,
        "results": {v: Path(s["results_file"]).name for v, s in summaries.items()},
        "train_s": train_s, "elapsed_s": time.perf_counter() - started, "git_commit": git_commit(),
    })
    atomic_write(results_dir / "ablation.json", (json.dumps(result, indent=1, allow_nan=False) + "\n").encode())
    return {**result, "summaries": summaries, "figure": figure}
