"""Every figure in figures/ and every table (markdown + CSV, figures/tables/) regenerated from results/ alone,
without running a model (notebooks/50_figures_tables.ipynb; `make figures`).

    outputs = regenerate("results", "figures")
    outputs.table()        # what was written, from which results files
    outputs.preview()      # the figures, tiled

What is recognised under results/ (recursively, by content, not by name):

* evaluation summaries (`onedc_lib.eval.runner`: `{"codec", "points": [...], "protocol", ...}`), grouped by
  folder (results/baselines/*.json -> "baselines"):
    figures/rd_<folder>.png                bpp (log) vs each metric, one line per codec (untrained models marked)
    figures/tables/rd_<folder>.md|csv      every rate point: bpp, metrics, times
    figures/tables/bdrate_<folder>.md|csv  BD-rate (%) of each codec against the anchor codec, per metric;
                                           "n/a" with the reason where a curve has < 4 points or no overlap
    figures/tables/bdrate_onedc_<folder>.md|csv   where the folder has OneDC curves (4+ models) and classical
                                           codecs: each OneDC curve against every classical codec (DISTS, LPIPS,
                                           PSNR, MS-SSIM)
  Folders whose summaries were computed on the same images (the sha256 the runner records) are also plotted
  together, as `<folder>_<folder>` (e.g. OneDC in results/samples beside the codecs in results/baselines).
* speed reports (`onedc_lib.eval.timing`, `{"kind": "speed", ...}`):
    figures/speed_<name>.png, figures/tables/speed_<name>.md|csv (median seconds per component and group)
* the entropy-coder benchmark (`benchmarks/entropy_coder.py`, `{"cases": ...}`):
    figures/tables/entropy_coder.md|csv
* the paper's published numbers (results/paper/, `onedc_lib.eval.paper`): its main table as
  figures/tables/paper_main_table.md|csv; and for each summary naming a `paper_dataset` (a reproduction,
  notebooks/60_reproduce_paper): figures/paper_<folder>_<file>.png (the paper's RD figure, ours and the published
  points with their reading error), figures/tables/paper_diff_<...>.md|csv (ours minus the paper per point) and
  paper_bdrate_<...>.md|csv (BD-rate of ours against the published curve)

figures/MANIFEST.json lists every output with the results files (sha256) it was made from; an output in figures/
that nothing made any more is reported as stale (and removed with prune=True). Figures carry no dates, so an
unchanged input regenerates identical bytes.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .archives import sha256_file

__all__ = ["Outputs", "regenerate"]

ANCHORS = ("jpeg", "webp", "hevc", "avif", "jxl")  # the default anchor: the first of these present
BD_METRICS = ("dists", "lpips", "psnr", "ms_ssim")  # OneDC against each classical codec (issue 7: the first three)
MANIFEST = "MANIFEST.json"


# ---------------------------------------------------------------------------------------------------- tables

def _cell(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else "-inf" if value < 0 else "nan"
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str], title: str = "", note: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c), 6) for c in columns})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------- outputs

@dataclass
class Outputs:
    """What regenerate wrote: one entry per file, with its kind, producer and inputs."""

    out_dir: Path
    entries: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    @property
    def figures(self) -> list[Path]:
        return [self.out_dir / e["file"] for e in self.entries if e["kind"] == "figure"]

    @property
    def tables(self) -> list[Path]:
        return [self.out_dir / e["file"] for e in self.entries if e["kind"] == "table"]

    def table(self):
        import pandas as pd

        return pd.DataFrame([{"file": e["file"], "kind": e["kind"], "from": ", ".join(e["inputs"])}
                             for e in self.entries], columns=["file", "kind", "from"])

    def preview(self, ncols: int = 2):
        """The figures written, tiled into one figure (read back from the PNG files)."""
        from matplotlib.figure import Figure
        from matplotlib.image import imread

        paths = self.figures
        if not paths:
            fig = Figure(figsize=(6, 1), layout="constrained")
            ax = fig.subplots()
            ax.text(0.5, 0.5, "no figures: no results found (" + "; ".join(self.notes[:2]) + ")", ha="center",
                    va="center", fontsize="small", wrap=True)
            ax.set_axis_off()
            return fig
        ncols = min(ncols, len(paths))
        nrows = -(-len(paths) // ncols)
        fig = Figure(figsize=(7 * ncols, 4 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, path in zip(axes, paths):
            ax.imshow(imread(path))
            ax.set_title(path.name, fontsize="small")
            ax.set_axis_off()
        for ax in axes[len(paths):]:
            ax.set_visible(False)
        return fig

    def markdown(self):
        """Every markdown table written, as one Markdown display object (a str outside IPython)."""
        text = "\n".join(p.read_text() for p in self.tables if p.suffix == ".md") or "_no tables_"
        try:
            from IPython.display import Markdown
        except ImportError:
            return text
        return Markdown(text)


class _Writer:
    def __init__(self, out_dir: Path, results_dir: Path, dpi: int):
        self.out_dir, self.results_dir, self.dpi = out_dir, results_dir, dpi
        self.outputs = Outputs(out_dir)

    def _rel_inputs(self, inputs) -> list[str]:
        return [str(Path(p).resolve().relative_to(self.results_dir.resolve())) for p in inputs]

    def figure(self, name: str, fig, inputs, producer: str) -> None:
        from .plotting import save_figure

        save_figure(fig, self.out_dir / f"{name}.png", dpi=self.dpi)
        self._record(f"{name}.png", "figure", inputs, producer)

    def table(self, name: str, rows, columns, inputs, producer: str, title: str, note: str = "") -> None:
        from .bitstream import atomic_write

        folder = self.out_dir / "tables"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{name}.md", markdown_table(rows, columns, title, note).encode())
        atomic_write(folder / f"{name}.csv", csv_table(rows, columns).encode())
        for suffix in ("md", "csv"):
            self._record(f"tables/{name}.{suffix}", "table", inputs, producer)

    def _record(self, file: str, kind: str, inputs, producer: str) -> None:
        names = self._rel_inputs(inputs)
        self.outputs.entries.append({"file": file, "kind": kind, "producer": producer, "inputs": names,
                                     "inputs_sha256": {n: sha256_file(p) for n, p in zip(names, inputs)}})


# ---------------------------------------------------------------------------------------------------- producers

def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _classify(results_dir: Path) -> tuple[dict, list, list, dict, list[str]]:
    """({dataset: [summary paths]}, [speed paths], [entropy bench paths], {kind: published paths}, notes)."""
    datasets: dict[str, list[Path]] = {}
    speed, entropy, published, notes = [], [], {}, []
    for path in sorted(results_dir.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(results_dir).parts):
            continue
        data = _load_json(path)
        if not isinstance(data, dict):
            notes.append(f"{path.relative_to(results_dir)}: not a summary (a JSON {type(data).__name__}), skipped")
        elif data.get("kind") in ("published_rd_points", "published_table"):
            published[data["kind"]] = path
        elif isinstance(data.get("points"), list) and ("codec" in data or "name" in data):
            parent = path.parent.relative_to(results_dir).as_posix()
            datasets.setdefault("results" if parent == "." else parent.replace("/", "_"), []).append(path)
        elif data.get("kind") == "speed":
            speed.append(path)
        elif isinstance(data.get("cases"), dict):
            entropy.append(path)
        else:
            notes.append(f"{path.relative_to(results_dir)}: not a results format these figures use, skipped")
    return datasets, speed, entropy, published, notes


def _shared_image_sets(datasets: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """{"<folder>_<folder>": summaries} for folders whose summaries all cover one same set of images (sha256)."""
    by_images: dict[frozenset, list[str]] = {}
    for dataset, paths in datasets.items():
        sets = {frozenset(((_load_json(p).get("images") or {}).get("sha256") or {}).values()) for p in paths}
        if len(sets) == 1 and next(iter(sets)):
            by_images.setdefault(next(iter(sets)), []).append(dataset)
    return {"_".join(sorted(names)): [p for n in sorted(names) for p in datasets[n]]
            for names in by_images.values() if len(names) > 1}


def _is_untrained(summary: dict) -> bool:
    return any(v.get("untrained_parts") for v in summary.get("codec_info", {}).get("models", {}).values())


def _rd(writer: _Writer, dataset: str, paths: list[Path], anchor: str | None, metrics) -> None:
    from .eval.bdrate import bd_rate_row, load_curve
    from .plotting import rd_curves

    summaries = {p: _load_json(p) for p in paths}
    curves = {p: load_curve(p) for p in paths}
    present = list(dict.fromkeys(m for s in summaries.values() for m in s.get("metrics", [])
                                 if any(c.points(m)[0].size for c in curves.values() if m in c.metrics)))
    wanted = [m for m in (metrics or present) if m in present]
    if not wanted:
        writer.outputs.notes.append(f"{dataset}: no metric with values in {len(paths)} summaries; no RD figure")
        return
    labels = {curves[p].name: (s.get("label") or curves[p].name) + (" (UNTRAINED)" if _is_untrained(s) else "")
              for p, s in summaries.items()}
    order = sorted(paths, key=lambda p: (summaries[p].get("kind") != "onedc", curves[p].name))
    fig = rd_curves([curves[p] for p in order], metrics=wanted, labels=labels, log_x=True)
    counts = sorted({s.get("images", {}).get("count") for s in summaries.values()} - {None})
    fig.suptitle(f"{dataset}: {'/'.join(map(str, counts)) or '?'} images", fontsize="small")
    writer.figure(f"rd_{dataset}", fig, order, "figures._rd")

    rows = []
    for p in order:
        s = summaries[p]
        for point in s["points"]:
            rows.append({"codec": curves[p].name, "rate": point.get("rate"), "bpp": point.get("bpp"),
                         **{m: point.get(m) for m in wanted}, "enc_s": point.get("enc_s"),
                         "dec_s": point.get("dec_s"), "images": point.get("images"),
                         "untrained": _is_untrained(s) if s.get("kind") == "onedc" else None})
    columns = ["codec", "rate", "bpp", *wanted, "enc_s", "dec_s", "images", "untrained"]
    note = ("bpp = 8 x bytes of the whole file / pixels, mean over images; metrics: mean over images "
            "(protocol in each summary JSON). UNTRAINED = seeded random weights.")
    writer.table(f"rd_{dataset}", rows, columns, order, "figures._rd", f"Rate-distortion points: {dataset}", note)

    names = {curves[p].name: p for p in order}
    note = ("Negative = fewer bits than the anchor at equal quality (pchip, overlap of the two curves only; "
            "onedc_lib.eval.bdrate).")
    onedc = [n for n, p in names.items() if summaries[p].get("kind") == "onedc" and len(summaries[p]["points"]) >= 4]
    baselines = [n for n, p in names.items() if summaries[p].get("kind") == "baseline"]
    if onedc and baselines:  # each OneDC curve against every classical codec
        bd_metrics = [m for m in BD_METRICS if m in wanted] or wanted
        rows = [bd_rate_row(curves[names[o]], curves[names[b]], bd_metrics) for o in onedc for b in baselines]
        writer.table(f"bdrate_onedc_{dataset}", rows, ["codec", "anchor", *bd_metrics], order, "figures._rd",
                     f"BD-rate (%) of OneDC against each classical codec: {dataset}", note)
    chosen = anchor if anchor in names else next((a for a in ANCHORS if a in names), None)
    if chosen is None:
        writer.outputs.notes.append(f"{dataset}: no anchor codec ({anchor or ', '.join(ANCHORS)}); no BD-rate table")
        return
    bd_rows = [bd_rate_row(curves[p], curves[names[chosen]], wanted) for name, p in names.items() if name != chosen]
    writer.table(f"bdrate_{dataset}", bd_rows, ["codec", "anchor", *wanted], order, "figures._rd",
                 f"BD-rate (%) against {chosen}: {dataset}", note)


def _paper(writer: _Writer, path: Path, points_path: Path) -> None:
    """A reproduction (a summary naming its `paper_dataset`) against the published points: the paper's RD figure
    with both, ours minus the paper's per point, BD-rate of ours against the published curve."""
    from .eval import paper
    from .eval.bdrate import load_curve

    summary, published = _load_json(path), _load_json(points_path)
    dataset = summary["paper_dataset"]
    name = "_".join(path.relative_to(writer.results_dir).with_suffix("").parts)
    curve = load_curve(path)
    source = f"Published: {points_path.relative_to(writer.results_dir)} ({published['provenance']})"
    writer.figure(f"paper_{name}", paper.overlay_figure([curve], published, dataset, {curve.name: summary["label"]}),
                  [path, points_path], "figures._paper")
    rows = paper.difference_rows(summary, published, dataset)
    writer.table(f"paper_diff_{name}", rows, list(rows[0]), [path, points_path], "figures._paper",
                 f"Ours minus the paper, per point: {dataset}",
                 f"_diff = ours - paper; _diff_% in % of the paper's value; _within: inside the +-"
                 f"{100 * published['reading_error_relative']:.0f} % reading error. {source}")
    rows = paper.bdrate_rows(curve, published, dataset)
    writer.table(f"paper_bdrate_{name}", rows, list(rows[0]), [path, points_path], "figures._paper",
                 f"BD-rate (%) of ours against the published curve: {dataset}",
                 f"Positive: we need more bits than the paper for the same quality (pchip). {source}")


def _paper_table(writer: _Writer, path: Path) -> None:
    data = _load_json(path)
    columns = ["method", *data["columns"]]
    writer.table("paper_main_table", data["rows"], columns, [path], "figures._paper_table",
                 f"The paper's main table ({data['dataset']}, BD-rate % with {data['anchor']} as the anchor)",
                 data["provenance"])


def _speed(writer: _Writer, path: Path) -> None:
    from .eval.timing import speed_figure, speed_rows

    report = _load_json(path)
    rel = path.relative_to(writer.results_dir).with_suffix("")
    name = "_".join(p for p in rel.parts if p != "speed") or "speed"
    name = f"speed_{name}" if not name.startswith("speed") else name
    writer.figure(name, speed_figure(report), [path], "figures._speed")
    d = report["device"]
    where = d.get("gpu") or d.get("cpu") or d["device"]
    writer.table(name, speed_rows(report), ["model", "side", "component", "group", "median_s", "share", "gmacs"],
                 [path], "figures._speed",
                 f"Encode / decode time per component, {report['height']}x{report['width']} px, {d['device']} "
                 f"({where}, {d['torch_threads']} threads)",
                 f"Median of {report['repeats']} runs after a warm-up. " + report.get("method", "")
                 + (f". Load average (1 min) at the end: {report['loadavg_at_end'][0]:.1f} on {d['cpu_count']} "
                    "CPUs (a load above the thread count means other processes shared the CPUs)."
                    if report.get("loadavg_at_end") else ""))


def _entropy(writer: _Writer, path: Path) -> None:
    data = _load_json(path)
    rows = []
    for case, coders in data["cases"].items():
        for coder, r in coders.items():
            if not isinstance(r, dict):
                continue
            ideal = r.get("ideal_bits")
            overhead = (8 * r["bytes"] / ideal - 1) * 100 if ideal and r.get("bytes") else None
            rows.append({"case": case, "coder": coder, "symbols": r.get("n_symbols"), "bytes": r.get("bytes"),
                         "overhead_%": overhead, "enc_Msym_s": r.get("enc_msym_s"), "dec_Msym_s": r.get("dec_msym_s"),
                         "enc_Msym_s_best": r.get("enc_msym_s_best"), "dec_Msym_s_best": r.get("dec_msym_s_best")})
    machine = data.get("machine", {})
    writer.table(path.stem, rows, ["case", "coder", "symbols", "bytes", "overhead_%", "enc_Msym_s", "dec_Msym_s",
                                   "enc_Msym_s_best", "dec_Msym_s_best"], [path], "figures._entropy",
                 f"Entropy coders ({machine.get('cpu', '?')}, {machine.get('cores', '?')} cores)",
                 "Median (and best) throughput over repeats; overhead = file bits over the exact cross-entropy.")


# ---------------------------------------------------------------------------------------------------- entry point

def regenerate(results_dir="results", figures_dir="figures", out_dir="out/figures_tables", anchor: str = "",
               metrics=(), dpi: int = 150, prune: bool = False, smoke: bool = False, options: dict | None = None
               ) -> Outputs:
    """Reads results_dir, writes figures and tables into figures_dir (smoke: into out_dir) and MANIFEST.json.
    anchor: the BD-rate anchor codec (default: the first of jpeg, webp, hevc, avif, jxl present); metrics: the
    RD metrics to plot (default: every metric the summaries have); options: {"anchor", "metrics", "dpi"} taking
    precedence over those arguments (the notebook's `overrides`)."""
    from .bitstream import atomic_write
    from .paths import output_dir

    options = dict(options or {})
    unknown = set(options) - {"anchor", "metrics", "dpi"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}: anchor, metrics, dpi")
    anchor, metrics, dpi = options.get("anchor", anchor), options.get("metrics", metrics), options.get("dpi", dpi)

    results_dir = Path(results_dir)
    target = output_dir(figures_dir, out_dir, smoke)
    writer = _Writer(target, results_dir, 80 if smoke else dpi)
    if not results_dir.is_dir():
        writer.outputs.notes.append(f"no results folder {results_dir}")
        return writer.outputs
    datasets, speed, entropy, published, notes = _classify(results_dir)
    writer.outputs.notes += notes
    for dataset, paths in datasets.items():
        _rd(writer, dataset, paths, anchor or None, list(metrics))
    for dataset, paths in _shared_image_sets(datasets).items():
        _rd(writer, dataset, paths, anchor or None, list(metrics))
    for path in speed:
        _speed(writer, path)
    for path in entropy:
        _entropy(writer, path)
    if "published_table" in published:
        _paper_table(writer, published["published_table"])
    for path in (p for paths in datasets.values() for p in paths if (_load_json(p) or {}).get("paper_dataset")):
        if "published_rd_points" in published:
            _paper(writer, path, published["published_rd_points"])
        else:
            writer.outputs.notes.append(f"{path.name}: compared with {_load_json(path)['paper_dataset']} but no "
                                        "published points (paper/rd_points.json) under the results folder")
    written = {e["file"] for e in writer.outputs.entries}
    previous = _load_json(target / MANIFEST) or {}
    candidates = {e["file"] for e in previous.get("outputs", [])}
    candidates |= {p.relative_to(target).as_posix() for p in target.glob("*.png")}
    candidates |= {p.relative_to(target).as_posix() for p in (target / "tables").glob("*.*")}
    writer.outputs.stale = sorted(c for c in candidates if c not in written and (target / c).exists())
    if prune:
        for stale in writer.outputs.stale:
            (target / stale).unlink()
    manifest = {"generated_by": "onedc_lib.figures.regenerate (notebooks/50_figures_tables.ipynb)",
                "results_dir": str(results_dir), "outputs": writer.outputs.entries, "notes": writer.outputs.notes,
                "stale": [] if prune else writer.outputs.stale}
    atomic_write(target / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return writer.outputs
