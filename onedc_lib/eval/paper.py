"""The paper's published OneDC RD points (results/paper/rd_points.json, read off its figure, about +-3 %) beside
our measurements: the points paired, ours minus the paper's per point, BD-rate of ours against the published
curve, and the paper's RD figure with the published points overlaid.

    rep = reproduce(["ckpt/q1", ..., "ckpt/q7"], images="data/kodak", vae="sd21-vae", zonly="ckpt/zonly")
    rep.table(); rep.differences(); rep.bdrate(); rep.figure()     # notebooks/60_reproduce_paper.ipynb

`reproduce` evaluates each model on its own (one model in memory at a time) with the release's protocol
(`runner.evaluate(protocol="release")`), then merges the per-model summaries into one curve,
`results/<dataset>/onedc-paper.json|csv`, which records the paper dataset it is compared with; the figures
notebook (`onedc_lib.figures`) draws the same overlay and difference tables from that file.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..bitstream import atomic_write

__all__ = ["PAPER_DIR", "Reproduction", "bdrate_rows", "difference_rows", "load_published", "match_dataset",
           "merge_summaries", "overlay_figure", "published_curve", "reproduce"]

PAPER_DIR = "results/paper"
POINTS_FILE = "rd_points.json"
TAG = "onedc-paper"
PAPER_LABEL = "OneDC (paper)"
METRIC_ORDER = ("lpips", "dists", "fid", "psnr", "ms_ssim")


def load_published(paper_dir=PAPER_DIR) -> dict:
    """The published points (`results/paper/rd_points.json`): {"datasets": {name: {metric: [8 values or None]}},
    "point_names", "reading_error_relative", "provenance", ...}."""
    path = Path(paper_dir) / POINTS_FILE
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise FileNotFoundError(f"no published points at {path} ({e.strerror or e})") from None
    if data.get("kind") != "published_rd_points":
        raise ValueError(f"{path} is not the published RD points (kind {data.get('kind')!r})")
    return data


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def match_dataset(name: str, published: dict) -> str | None:
    """The paper's dataset that a folder name stands for ("kodak" -> "Kodak", "coco-30k" -> "COCO-30K";
    case, dashes and underscores ignored), else None."""
    names = {_normal(d): d for d in published["datasets"]}
    return names.get(_normal(name))


def _paper_dataset(published: dict, dataset: str) -> dict:
    if dataset not in published["datasets"]:
        raise ValueError(f"no published points for {dataset!r}: {', '.join(published['datasets'])}")
    return published["datasets"][dataset]


def published_curve(published: dict, dataset: str):
    """The published points of one dataset as an RDCurve named "OneDC (paper)" (missing values NaN)."""
    import numpy as np

    from .bdrate import RDCurve

    values = _paper_dataset(published, dataset)
    columns = {m: np.array([math.nan if v is None else v for v in vs], dtype=np.float64) for m, vs in values.items()}
    order = np.argsort(columns["bpp"], kind="stable")
    return RDCurve(PAPER_LABEL, {m: v[order] for m, v in columns.items()}, f"{PAPER_DIR}/{POINTS_FILE}")


def _metrics(published: dict, dataset: str, ours) -> list[str]:
    """The paper's metrics for the dataset that ours has too, in the paper figure's order."""
    have = set(_paper_dataset(published, dataset)) - {"bpp"}
    return [m for m in METRIC_ORDER if m in have and m in ours]


def _pairs(ours: list[dict], paper_bpp: list[float]) -> list[tuple[dict, int, str]]:
    """(our point, index of the paper point, how paired): by rank of bpp when the counts agree, else the paper
    point nearest in log bpp."""
    ranked = sorted(range(len(paper_bpp)), key=lambda i: paper_bpp[i])
    points = sorted(ours, key=lambda p: p["bpp"])
    if len(points) == len(ranked):
        return [(p, i, "rank") for p, i in zip(points, ranked)]
    return [(p, min(ranked, key=lambda i: abs(math.log(p["bpp"] / paper_bpp[i]))), "nearest bpp") for p in points]


def difference_rows(summary: dict, published: dict, dataset: str) -> list[dict]:
    """Ours minus the paper's, point by point: bpp and each shared metric, absolute and in % of the paper's value,
    and whether ours lies within the reading error (+-3 %) of the published value."""
    values = _paper_dataset(published, dataset)
    names, error = published["point_names"], published["reading_error_relative"]
    metrics = _metrics(published, dataset, {m for p in summary["points"] for m in p})
    rows = []
    for point, i, how in _pairs(summary["points"], values["bpp"]):
        row = {"model": point.get("rate"), "paper_point": names[i], "paired_by": how}
        for m in ("bpp", *metrics):
            ours, paper = point.get(m), values[m][i]
            row[f"{m}_ours"], row[f"{m}_paper"] = ours, paper
            if ours is None or paper is None:
                row[f"{m}_diff"] = row[f"{m}_diff_%"] = row[f"{m}_within"] = None
                continue
            row[f"{m}_diff"] = ours - paper
            row[f"{m}_diff_%"] = 100.0 * (ours - paper) / abs(paper)
            row[f"{m}_within"] = abs(ours - paper) <= error * abs(paper)
        rows.append(row)
    return rows


def bdrate_rows(summary_curve, published: dict, dataset: str) -> list[dict]:
    """One row: BD-rate (%) of our curve against the published one per shared metric (bdrate.bd_rate_row: pchip,
    "n/a (why)" below 4 points or without overlap). Positive: we need more bits than the paper for the same
    quality."""
    from .bdrate import bd_rate_row

    metrics = _metrics(published, dataset, summary_curve.metrics)
    return [bd_rate_row(summary_curve, published_curve(published, dataset), metrics)]


def overlay_figure(curves, published: dict, dataset: str, labels: dict | None = None):
    """The paper's RD figure for a dataset (bpp, log scale, against each published metric) with our curves and
    the published points, drawn with their +-3 % reading error."""
    from ..plotting import rd_curves

    metrics = [m for m in METRIC_ORDER if m in _paper_dataset(published, dataset)]
    error = published["reading_error_relative"]
    fig = rd_curves(list(curves), metrics=metrics, labels=labels, log_x=True,
                    reference=published_curve(published, dataset), reference_error=error,
                    reference_label=f"{PAPER_LABEL}, +-{100 * error:.0f} % reading error")
    fig.suptitle(f"{dataset}: ours and the published OneDC points", fontsize="small")
    return fig


def merge_summaries(summaries: list[dict], paper_dataset: str | None, label: str = "OneDC (ours)") -> dict:
    """One summary (one curve) from the one-model summaries of the same images, points sorted by bpp."""
    first = summaries[0]
    for s in summaries[1:]:
        if s["images"]["sha256"] != first["images"]["sha256"]:
            raise ValueError(f"{s['codec']} and {first['codec']} were evaluated on different images")
    merged = {k: v for k, v in first.items() if k not in ("codec", "label", "spec", "points", "codec_info", "csv",
                                                          "files", "reconstructions", "results_file")}
    merged.update(codec=TAG, label=label, spec=[s["spec"] for s in summaries], paper_dataset=paper_dataset,
                  points=sorted((p for s in summaries for p in s["points"]), key=lambda p: p["bpp"]),
                  codec_info={"models": {k: v for s in summaries for k, v in s["codec_info"]["models"].items()}},
                  warnings=[w for s in summaries for w in s.get("warnings", [])],
                  elapsed_s=sum(s.get("elapsed_s", 0.0) for s in summaries), csv=f"{TAG}.csv")
    return merged


@dataclass
class Reproduction:
    """The merged summary (ours), the published points and where the results were written."""

    summary: dict
    published: dict
    paper_dataset: str
    results_file: Path

    def curve(self):
        from .bdrate import load_curve

        return load_curve(self.results_file)

    def table(self):
        import pandas as pd

        metrics = ["bpp", *_metrics(self.published, self.paper_dataset, {m for p in self.summary["points"] for m in p})]
        rows = [{"model": p["rate"], **{m: p.get(m) for m in metrics}, "kid": p.get("kid"),
                 "patches": (p.get("fid_kid") or {}).get("patches"), "images": p["images"]}
                for p in self.summary["points"]]
        return pd.DataFrame(rows)

    def differences(self):
        import pandas as pd

        return pd.DataFrame(difference_rows(self.summary, self.published, self.paper_dataset))

    def bdrate(self):
        import pandas as pd

        return pd.DataFrame(bdrate_rows(self.curve(), self.published, self.paper_dataset))

    def figure(self):
        return overlay_figure([self.curve()], self.published, self.paper_dataset,
                              labels={TAG: self.summary["label"]})


def _merged_csv(paths: list[Path]) -> str:
    header, rows = None, []
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = header or reader.fieldnames
            if reader.fieldnames != header:
                raise ValueError(f"{path}: columns {reader.fieldnames}, expected {header}")
            rows += list(reader)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def reproduce(checkpoints, images: str, vae: str = "", zonly: str = "", paper_dataset: str = "",
              out_dir="out/reproduce", results_dir="results", paper_dir=PAPER_DIR,
              metrics=("psnr", "ms_ssim", "lpips", "dists"), fid: bool = True, device: str = "cpu",
              smoke: bool = False, progress: bool = True, cache_dir=None) -> Reproduction:
    """Encodes every image of `images` with every model (the y models of `checkpoints` and the z-only `zonly`:
    model folders of ours, bundled names, or release checkpoint folders with the SD-2.1 VAE folder `vae`), one
    model at a time, with the release's protocol; bitstreams and per-model runs under out_dir (resumable), the
    merged curve in results_dir/<dataset>/onedc-paper.json|csv (smoke: under out_dir), compared with the
    published points of `paper_dataset` (default: the one the images folder's name stands for).

    smoke: one 64x96 crop (sweep.dataset_folder), the provisioned metrics only, no FID."""
    from ..paths import output_dir
    from .runner import _model_label, evaluate
    from .sweep import _provisioned, dataset_folder

    models = ([zonly] if zonly else []) + [str(c) for c in checkpoints]
    if not models:
        raise ValueError("no checkpoints to evaluate")
    labels = [_model_label(m) for m in models]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:  # a model's runs and its point are named by its folder's name
        raise ValueError(f"several checkpoints named {', '.join(repeated)}: give the folders distinct names")
    published = load_published(paper_dir)
    out_dir = Path(out_dir)
    name, folder = dataset_folder(images, out_dir, smoke=smoke)
    dataset = paper_dataset or match_dataset(name, published)
    if dataset is None:
        raise ValueError(f"images {name!r} are none of the paper's datasets ({', '.join(published['datasets'])}): "
                         "pass paper_dataset")
    _paper_dataset(published, dataset)
    metrics = list(metrics)
    if smoke:
        metrics, fid = _provisioned(metrics, cache_dir)[0], False
    runs = out_dir / "runs" / name
    summaries, csvs = [], []
    for model in models:
        summary = evaluate(f"onedc:{model}", folder, runs, metrics=metrics, fid=fid, device=device,
                           results_dir=runs / "summaries", progress=progress and not smoke, cache_dir=cache_dir,
                           protocol="release", vae=vae or None, zonly=[zonly] if zonly else [],
                           command=f"onedc_lib.eval.paper.reproduce({model!r}, images={images!r})")
        summaries.append(summary)
        csvs.append(runs / "summaries" / summary["csv"])
    merged = merge_summaries(summaries, dataset)
    target = output_dir(Path(results_dir) / name if results_dir else "", out_dir / "results" / name, smoke)
    atomic_write(target / f"{TAG}.csv", _merged_csv(csvs).encode())
    path = target / f"{TAG}.json"
    atomic_write(path, (json.dumps(merged, indent=1, allow_nan=False) + "\n").encode())
    return Reproduction(merged, published, dataset, path)
