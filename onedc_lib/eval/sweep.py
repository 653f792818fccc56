"""A dataset x codecs rate-distortion sweep (notebooks/20_eval_rd.ipynb): each codec through
`onedc_lib.eval.runner.evaluate`, its CSV and summary JSON written to `results/<dataset>/`.

    summaries = rd_sweep("samples", ["onedc", "jpeg", "webp"], out_dir="out/eval_rd")   # -> results/samples/
    rd_table(summaries); rd_figure(summaries)

Datasets: "samples" (the scikit-image photographs shipped with the library, written as PNG first), "nano" (the
nano test photographs that `onedc prepare` writes to out/nano_data/test, checked against nano_manifest.json; its
results are kept per model family: `results_dir/<preset>`, e.g. results/nano, results/nano_sr), or any folder of
images (its folder name is the dataset name). Codecs: a baseline name (`eval.baselines.ALL_BASELINES`), `onedc`
(the rate ladder of the `preset` family, by default the default model's (`weights.default_family`): bundled
trained models, else the family's presets with seeded random weights, marked untrained in the summary; presets
that build the same untrained model, as nano q1..q5 do, are
evaluated once), or an explicit `onedc:<model>,<model>,...` (evaluated as given).

Bitstreams and reconstructions go to `out_dir` (not committed); the CSV + JSON go to `results_dir/<dataset>`
(committed), except in smoke runs, which keep everything under `out_dir` and shrink the work: one 64x96 crop,
the lowest and highest rate point of each codec, the metrics whose weights are provisioned, no FID.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

__all__ = ["dataset_folder", "expand_codecs", "nano_test_folder", "rd_figure", "rd_sweep", "rd_table",
           "smoke_images"]

NANO_DATA = "out/nano_data"  # where `onedc prepare` writes the nano photographs (train/, val/, test/)


def nano_test_folder(data_dir=NANO_DATA) -> Path:
    """data_dir/test, checked against the committed nano_manifest.json: exactly its test photographs, same bytes."""
    from ..data.prepare import REFERENCE_MANIFEST
    from ..archives import sha256_file

    folder = Path(data_dir) / "test"
    how = f"build it with `onedc prepare --out {data_dir}`"
    expected = {Path(f["file"]).name: f["sha256"] for f in json.loads(Path(REFERENCE_MANIFEST).read_text())["files"]
                if f["split"] == "test"}
    if not folder.is_dir():
        raise FileNotFoundError(f"no nano test photographs in {folder}: {how}")
    found = {p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    wrong = sorted(set(expected) ^ set(found)) + sorted(n for n in expected.keys() & found.keys()
                                                        if sha256_file(found[n]) != expected[n])
    if wrong:
        raise ValueError(f"{folder} is not the nano test split of nano_manifest.json ({', '.join(wrong[:3])}"
                         f"{', ...' if len(wrong) > 3 else ''} missing, extra or changed): {how}")
    return folder


def smoke_images(images: str, smoke: bool, data_dir=NANO_DATA) -> str:
    """The dataset a run evaluates: `images`, except in a smoke run whose folder (the nano test split, or the
    folder named) is not there, as on a fresh checkout: "samples", said in one line. A full run keeps `images`
    and stops at the missing folder."""
    if not smoke or images == "samples":
        return images
    folder = Path(data_dir) / "test" if images == "nano" else Path(images)
    if folder.is_dir():
        return images
    print(f"no test images at {folder}: evaluating the sample photographs shipped with the package", flush=True)
    return "samples"


def dataset_folder(images: str, out_dir, max_side: int = 0, max_images: int = 0, smoke: bool = False,
                   data_dir=NANO_DATA) -> tuple[str, Path]:
    """(dataset name, folder of images). "samples": the sample photographs written as PNG under out_dir;
    "nano": the nano test photographs (data_dir/test, checked by nano_test_folder); a folder: used as it is
    unless max_side / max_images / smoke ask for a shrunk copy under out_dir. Smoke runs: smoke_images first."""
    from ..data.samples import SAMPLES, sample_image
    from ..image_io import save_image
    from ..data.samples import load_demo_image
    from .runner import list_images

    images = smoke_images(images, smoke, data_dir)
    if images == "samples":
        name, sources = "samples", [(n, n) for n in SAMPLES]
    else:
        folder = nano_test_folder(data_dir) if images == "nano" else Path(images)
        name = "nano" if images == "nano" else folder.name
        sources = [(n, str(p)) for n, p in list_images(folder)]
        if not (max_side or max_images or smoke):
            return name, folder
    if max_images:
        sources = sources[:max_images]
    if smoke:
        sources = sources[:1]
    target = Path(out_dir) / "images" / (f"{name}_smoke" if smoke else f"{name}_{max_side or 'full'}")
    target.mkdir(parents=True, exist_ok=True)
    for stem, source in sources:
        path = target / f"{stem}.png"
        if path.is_file():
            continue
        _, x = load_demo_image(source, max_side)
        if smoke:
            x = sample_image(source)[:, 20:84, 40:136] if source in SAMPLES else x[:, :64, :96]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(x, path)
    return name, target


def expand_codecs(codecs, preset: str | None = None, smoke: bool = False) -> list[tuple[str, list | None]]:
    """[(runner codec spec, qualities or None)]: `onedc` -> onedc:<the family's ladder>, without the untrained
    presets that are the same model as an earlier one (a warning names them); smoke: two rates each."""
    from ..weights import available_models, distinct_models
    from .baselines import ALL_BASELINES

    out = []
    for spec in codecs:
        spec = spec.strip()
        qualities = None
        if spec == "onedc":
            ladder, dropped = distinct_models(available_models(preset))
            if dropped:
                warnings.warn("left out, the same untrained model (same model id) as an earlier rate point: "
                              + ", ".join(f"{a} = {b}" for a, b in dropped.items()), stacklevel=2)
            names = [c.name for c in ladder]
            if smoke and len(names) > 1:
                names = [names[0], names[-1]]
            spec = "onedc:" + ",".join(names)
        elif spec.startswith("onedc:"):
            names = [n for n in spec.partition(":")[2].split(",") if n]
            if smoke and len(names) > 1:
                spec = f"onedc:{names[0]},{names[-1]}"
        elif spec.lower() in ALL_BASELINES:
            spec = spec.lower()
            if smoke:
                sweep = ALL_BASELINES[spec].qualities
                qualities = [sweep[0], sweep[-1]]
        else:
            raise ValueError(f"unknown codec {spec!r}: onedc, onedc:<models>, or one of {', '.join(ALL_BASELINES)}")
        out.append((spec, qualities))
    return out


def _provisioned(metrics, cache_dir) -> tuple[list[str], list[str]]:
    """(metrics whose weights are there, notes about the others)."""
    from .backbones import MetricWeightsError, provisioned_file

    keep, notes = [], []
    for metric in metrics:
        key = {"lpips": "alexnet", "dists": "vgg16"}.get(metric)
        if key is None:
            keep.append(metric)
            continue
        try:
            provisioned_file(key, cache_dir)
            keep.append(metric)
        except MetricWeightsError:
            notes.append(f"{metric}: weights not provisioned (python -m onedc_lib.eval.backbones); left out")
    return keep, notes


def rd_sweep(images: str = "samples", codecs=("onedc",), preset: str | None = None,
             out_dir="out/eval_rd", results_dir="results", metrics=("psnr", "ms_ssim", "lpips", "dists"),
             fid: bool = False,
             max_side: int = 0, max_images: int = 0, device: str = "cpu", smoke: bool = False,
             progress: bool = True, cache_dir=None, overrides: dict | None = None, fid_min_patches: int = 2,
             data_dir=NANO_DATA) -> dict:
    """Runs every codec over the dataset; returns {codec tag: summary} (the JSON each run wrote).
    fid_min_patches: the runner's (FID/KID reported missing, uncomputed, below it); data_dir: for "nano"."""
    from ..paths import output_dir
    from ..weights import default_family
    from .runner import evaluate

    if overrides:
        raise ValueError("overrides: the runner evaluates models by name; save a model built with overrides "
                         "(onedc_lib.weights.save_model) and pass its folder as onedc:<folder>")

    out_dir = Path(out_dir)
    preset = preset or default_family()
    name, folder = dataset_folder(images, out_dir, max_side, max_images, smoke, data_dir)
    if images == "nano" and name == "nano":  # the nano test split (not the smoke run's fallback): per family
        name = preset
    results = output_dir(Path(results_dir) / name if results_dir else "", out_dir / "results" / name, smoke)
    metrics = list(metrics)
    notes = []
    if smoke:
        metrics, notes = _provisioned(metrics, cache_dir)
        fid = False
    for note in notes:
        warnings.warn(note, stacklevel=2)
    summaries = {}
    for spec, qualities in expand_codecs(codecs, preset, smoke):
        summary = evaluate(spec, folder, out_dir / "runs" / name, metrics=metrics, fid=fid, device=device,
                           qualities=qualities, results_dir=results, progress=progress and not smoke,
                           cache_dir=cache_dir, fid_min_patches=fid_min_patches,
                           command=f"onedc_lib.eval.sweep.rd_sweep({images!r}, {spec!r})")
        summary["results_file"] = str(results / f"{summary['codec']}.json")
        summaries[summary["codec"]] = summary
    return summaries


def rd_table(summaries: dict, metrics=None):
    """One row per (codec, rate point): bpp and the mean metrics, as a DataFrame."""
    import pandas as pd

    rows = []
    for tag, summary in summaries.items():
        names = metrics or summary.get("metrics", [])
        untrained = {k for k, v in summary.get("codec_info", {}).get("models", {}).items() if v.get("untrained_parts")}
        for point in summary["points"]:
            row = {"codec": tag, "rate": point["rate"], "bpp": point["bpp"],
                   **{m: point.get(m) for m in names}, "enc_s": point.get("enc_s"), "dec_s": point.get("dec_s"),
                   "images": point.get("images")}
            if summary.get("kind") == "onedc":
                row["untrained"] = str(point["rate"]) in untrained
            rows.append(row)
    return pd.DataFrame(rows)


def rd_figure(summaries: dict, metrics=None, labels: dict | None = None):
    """RD curves (bpp vs each metric) of the summaries' results files (plotting.rd_curves). labels: codec -> legend
    label (default: each summary's label, marked when a model is untrained)."""
    from ..plotting import rd_curves

    paths = [s["results_file"] for s in summaries.values()]
    names = metrics or list(dict.fromkeys(m for s in summaries.values() for m in s.get("metrics", [])))
    if labels is None:
        labels = {s["codec"]: s["label"] + (" (UNTRAINED)" if _untrained(s) else "") for s in summaries.values()}
    return rd_curves(paths, metrics=names, labels=labels)


def _untrained(summary: dict) -> bool:
    return any(v.get("untrained_parts") for v in summary.get("codec_info", {}).get("models", {}).values())


def finite_numbers(summaries: dict) -> bool:
    """True when every point has a finite bpp and finite (or deliberately missing) metric means."""
    for summary in summaries.values():
        for point in summary["points"]:
            if not math.isfinite(point["bpp"]):
                return False
            for m in summary.get("metrics", []):
                value = point.get(m)
                if value is not None and not math.isfinite(value):
                    return False
    return True
