"""The compression demo behind notebooks/00_demo_compress.ipynb: one image through every rate point of a model
family, with real files, and an ipywidgets UI (image picker, rate slider, side by side + zoom, numbers).

    explorer = RateExplorer("astronaut", out_dir="out/demo")   # the default model's family (preset="nano": nano's)
    explorer.widget()               # JupyterLab: pick an image, move the slider (each rate is encoded once, cached)
    explorer.compress_all()         # every rate point now: rows + results.json
    explorer.figure()               # the middle rate: original | reconstruction, the same crop of both enlarged

Models (`weights.available_models`): the bundled trained models of the family (`onedc_lib/weights/<family>_*`) when
there are any; otherwise the family's presets with seeded random weights, labelled UNTRAINED everywhere (their
reconstructions are meaningless, their files are real). `models=[...]` takes any bundled names, model folders
(e.g. converted sd15 checkpoints) or presets instead. Rate points are ordered z-only first, then q1 (lowest
rate) upwards. Presets that differ only in training settings (the nano q1..q5 differ in lambda) give the same
untrained model: their z and y streams are identical, and the table says "same model as ...".

bpp is always 8 x (bytes of the written .odc file) / pixels of the image. PSNR is on 8-bit values; LPIPS and
DISTS are computed when their backbone weights are provisioned (`python -m onedc_lib.eval.backbones`), and
reported as "not provisioned" otherwise, never with random backbones.
"""
from __future__ import annotations

import io
import json
import math
import time
import warnings
from pathlib import Path


from .data.samples import load_demo_image
from .weights import available_models, default_family

__all__ = ["RateExplorer"]

NOT_PROVISIONED = "not provisioned"


def _default_crop(height: int, width: int) -> tuple[int, int, int, int]:
    side = max(16, min(height, width) // 3)
    side = min(side, height, width)
    return ((height - side) // 2, (width - side) // 2, side, side)


def _png(fig, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return NOT_PROVISIONED
    if isinstance(value, str):
        return value
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


class _Metrics:
    """PSNR always; LPIPS and DISTS built once when their weights are provisioned, else 'not provisioned'."""

    def __init__(self, names, cache_dir=None, device="cpu"):
        self.names = tuple(names)
        self.status: dict[str, str] = {}
        self.nets = {}
        from .eval import metrics as M
        from .eval.backbones import MetricWeightsError

        for name in self.names:
            if name in ("lpips", "dists"):
                cls = M.LPIPSMetric if name == "lpips" else M.DISTSMetric
                try:
                    self.nets[name] = cls(cache_dir=cache_dir, device=device)
                    self.status[name] = "ok"
                except MetricWeightsError as error:
                    self.status[name] = f"{NOT_PROVISIONED} ({str(error).splitlines()[0][:200]})"
            elif name in ("psnr", "ms_ssim"):
                self.status[name] = "ok"
            else:
                raise ValueError(f"unknown metric {name!r} (psnr, ms_ssim, lpips, dists)")

    def __call__(self, ref, dist) -> dict:
        from .eval import metrics as M

        out = {}
        for name in self.names:
            if name == "psnr":
                out[name] = M.psnr(ref, dist)
            elif name == "ms_ssim":
                out[name] = M.ms_ssim(ref, dist)
            elif name in self.nets:
                try:
                    out[name] = self.nets[name](ref, dist)
                except ValueError:  # LPIPS below 31 px
                    out[name] = None
            else:
                out[name] = None
        return out


class RateExplorer:
    """One image x the rate points of a model family, each encoded to a real file once and cached.

    image: a sample name or a path; preset: the family ("nano", "sd15"; default: the default model's, by
    `weights.default_family`); models: explicit model names/folders;
    overrides: dotted config overrides for models built from presets; max_side: shrink the image first (0: no);
    crop: (top, left, height, width) of the zoom (default: a centred square); smoke: a 64-px image and the lowest
    and highest rate points only (CI).
    """

    def __init__(self, image: str = "astronaut", preset: str | None = None, models=(), overrides: dict | None = None,
                 max_side: int = 512, out_dir="out/demo_compress", metrics=("psnr", "lpips", "dists"),
                 crop=(), device: str = "cpu", smoke: bool = False, cache_dir=None):
        preset = preset or default_family()
        self.choices = available_models(preset, models)
        if smoke:
            max_side = min(max_side or 64, 64)
            self.choices = [self.choices[0], self.choices[-1]] if len(self.choices) > 1 else self.choices
        if overrides and any(c.trained for c in self.choices):
            raise ValueError("overrides apply to models built from presets; trained models are loaded as they are")
        self.preset, self.overrides, self.max_side, self.device = preset, dict(overrides or {}), max_side, device
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metric_names = tuple(metrics)
        self.cache_dir = cache_dir
        self._metrics: _Metrics | None = None
        self._model = None  # (name, model): one model in memory at a time (sd15 models are GBs)
        self.results: dict[tuple[str, str], dict] = {}
        self.crop_request = tuple(crop)
        self.set_image(image)

    # ------------------------------------------------------------------ state
    @property
    def model_names(self) -> list[str]:
        return [c.name for c in self.choices]

    def _choice(self, name: str | None) -> ModelChoice:
        if name is None:
            return self.choices[len(self.choices) // 2]
        for c in self.choices:
            if c.name == name:
                return c
        raise ValueError(f"{name!r} is not one of this explorer's models ({', '.join(self.model_names)})")

    def set_image(self, image: str) -> str:
        """Switch image (sample name or path); results of other images stay cached."""
        self.image_name, self.image = load_demo_image(image, self.max_side)
        self.image_key = str(image)  # the cache key: two paths may share a file name
        h, w = self.image.shape[-2:]
        crop = self.crop_request if len(self.crop_request) == 4 else _default_crop(h, w)
        top, left, ch, cw = (int(v) for v in crop)
        if top < 0 or left < 0 or ch < 1 or cw < 1 or top + ch > h or left + cw > w:
            raise ValueError(f"crop {crop} (top, left, height, width) is outside the {h}x{w} image")
        self.crop = (top, left, ch, cw)
        return self.image_name

    @property
    def metrics(self) -> _Metrics:
        if self._metrics is None:
            self._metrics = _Metrics(self.metric_names, self.cache_dir, self.device)
        return self._metrics

    def _load(self, choice: ModelChoice):
        if self._model is not None and self._model[0] == choice.name:
            return self._model[1], self._model[2]
        self._model = None
        from .weights import build_model, load_model

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if choice.trained:
                model = load_model(choice.name)
            else:
                model = build_model(choice.name, seed=0, **self.overrides)
        notes = [str(w.message) for w in caught]
        if not choice.trained:
            notes.insert(0, f"{choice.name}: UNTRAINED (seeded random weights): the reconstruction is meaningless, "
                            "the file and its size are real")
        model = model.to(self.device)
        self._model = (choice.name, model, notes)
        return model, notes

    # ------------------------------------------------------------------ work
    def result(self, model: str | None = None) -> dict:
        """Encode + decode the current image with one model (cached): file, bytes, bpp, metrics, times."""
        choice = self._choice(model)
        key = (self.image_key, choice.name)
        if key in self.results:
            return self.results[key]
        from .bitstream import read_bytes, write_file

        net, notes = self._load(choice)
        x = self.image[None].to(self.device)
        start = time.perf_counter()
        compressed = net.compress(x)
        enc_s = time.perf_counter() - start
        path = self.out_dir / f"{self.image_name}_{Path(choice.name).name}.odc"
        write_file(path, compressed.container)
        data = read_bytes(path)
        start = time.perf_counter()
        x_hat = net.decompress(data)[0].cpu()
        dec_s = time.perf_counter() - start
        num_bytes = path.stat().st_size
        h, w = self.image.shape[-2:]
        same = next((r["model"] for (img, _), r in self.results.items()
                     if img == self.image_key and r["model_id"] == net.model_id.hex()), None)
        row = {"image": self.image_name, "height": h, "width": w, "model": choice.name, "label": choice.label,
               "trained": choice.trained, "model_id": net.model_id.hex(), "file": str(path), "bytes": num_bytes,
               "bpp": 8 * num_bytes / (h * w), "sections": {s.name: len(s.payload) for s in compressed.container.sections},
               "enc_s": enc_s, "dec_s": dec_s, **self.metrics(self.image, x_hat),
               "same_model_as": same, "notes": notes}
        row["reconstruction"] = x_hat
        self.results[key] = row
        return row

    def compress_all(self) -> list[dict]:
        """Every rate point of the current image; writes results.json (all cached rows) and returns the rows."""
        rows = [self.result(c.name) for c in self.choices]
        self.save()
        return [{k: v for k, v in r.items() if k != "reconstruction"} for r in rows]

    def save(self, path=None) -> Path:
        from .bitstream import atomic_write
        from .eval.runner import device_info

        path = Path(path) if path else self.out_dir / "results.json"
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()
                 if k != "reconstruction"} for r in self.results.values()]
        summary = {"preset": self.preset, "overrides": self.overrides, "max_side": self.max_side,
                   "metrics": {n: self.metrics.status[n] for n in self.metric_names},
                   "bpp": "8 * bytes of the written .odc file / (H * W)",
                   "device": device_info(self.device), "rows": rows}
        atomic_write(path, (json.dumps(summary, indent=1) + "\n").encode())
        return path

    def table(self):
        """The cached rows of the current image as a DataFrame (one row per rate point computed so far)."""
        import pandas as pd

        columns = ["label", "bytes", "bpp", *self.metric_names, "enc_s", "dec_s", "same_model_as"]
        rows = [r for (img, _), r in self.results.items() if img == self.image_key]
        frame = pd.DataFrame([{k: r.get(k) for k in columns} for r in rows], columns=columns)
        for name in self.metric_names:
            if self.metrics.status.get(name, "ok") != "ok":
                frame[name] = self.metrics.status[name].split(" (")[0]
        return frame

    # ------------------------------------------------------------------ views
    def summary_text(self, model: str | None = None) -> str:
        """One line per fact of a rate point, as shown under the images (also the text the browser test reads)."""
        r = self.result(model)
        metrics = " | ".join(f"{n.upper().replace('_', '-')} {self._value(r, n)}" for n in self.metric_names)
        sections = ", ".join(f"{k} {v} B" for k, v in r["sections"].items())
        lines = [f"{r['label']}: bpp {r['bpp']:.4f} ({r['bytes']} bytes in {Path(r['file']).name}: {sections})",
                 f"{metrics}",
                 (f"encode {r['enc_s']:.3f} s | decode {r['dec_s']:.3f} s | {r['height']}x{r['width']} px | "
                  f"model {r['model_id'][:12]}")]
        if r["same_model_as"]:
            lines.append(f"same model (same id) as {r['same_model_as']}: the same z and y streams")
        lines += r["notes"][:1]
        return "\n".join(lines)

    def _value(self, row: dict, name: str) -> str:
        if self.metrics.status.get(name, "ok") != "ok":
            return NOT_PROVISIONED
        if row[name] is None:
            return "n/a (image too small)"
        return _fmt(row[name], 2) + " dB" if name == "psnr" else _fmt(row[name], 4)

    def figure(self, model: str | None = None):
        """Original | reconstruction (whole), and the same crop of both enlarged below."""
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        r = self.result(model)
        top, left, ch, cw = self.crop
        h, w = self.image.shape[-2:]
        images = [("original", self.image), (f"{r['label']}  {r['bpp']:.4f} bpp", r["reconstruction"])]
        fig = Figure(figsize=(8, 4 * h / w + 4.6), layout="constrained")
        axes = fig.subplots(2, 2, height_ratios=[h / w, 1])
        for col, (title, x) in enumerate(images):
            array = x.permute(1, 2, 0).numpy()
            axes[0, col].imshow(array, interpolation="nearest")
            axes[0, col].add_patch(Rectangle((left - 0.5, top - 0.5), cw, ch, fill=False, edgecolor="red"))
            axes[0, col].set_title(title, fontsize="small")
            axes[1, col].imshow(array[top:top + ch, left:left + cw], interpolation="nearest")
            axes[1, col].set_title(f"crop {ch}x{cw} at ({top}, {left})", fontsize="small")
            for ax in axes[:, col]:
                ax.set_xticks([])
                ax.set_yticks([])
        metric = "psnr" if "psnr" in self.metric_names else None
        if metric and r[metric] is not None:
            fig.suptitle(f"{self.image_name}: PSNR {_fmt(r[metric], 2)} dB, encode {r['enc_s']:.2f} s, "
                         f"decode {r['dec_s']:.2f} s", fontsize="small")
        return fig

    def rd_figure(self):
        """bpp vs each metric over the rate points computed so far for the current image."""
        from matplotlib.figure import Figure

        rows = sorted((r for (img, _), r in self.results.items() if img == self.image_key), key=lambda r: r["bpp"])
        names = [n for n in self.metric_names if any(r[n] is not None for r in rows)]
        fig = Figure(figsize=(3.6 * max(1, len(names)), 3.2), layout="constrained")
        axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
        for ax, name in zip(axes, names):
            points = [(r["bpp"], r[name]) for r in rows if r[name] is not None and math.isfinite(r[name])]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
            for r in rows:
                if r[name] is not None and math.isfinite(r[name]):
                    ax.annotate(Path(r["model"]).name, (r["bpp"], r[name]), fontsize="x-small")
            ax.set_xlabel("bpp (from the file)")
            ax.set_ylabel(name.upper())
            ax.grid(alpha=0.3)
        if any(not r["trained"] for r in rows):
            fig.suptitle("UNTRAINED models (seeded random weights)", fontsize="small", color="red")
        return fig

    def widget(self, model: str | None = None):
        """The UI: image picker (samples or a path), slider over the rate points, images, numbers."""
        import ipywidgets as W

        from .data.samples import SAMPLES

        picker = W.Dropdown(options=list(SAMPLES) + (["(path)"] if self.image_name not in SAMPLES else []),
                            value=self.image_name if self.image_name in SAMPLES else "(path)", description="image")
        path_box = W.Text(value="", placeholder="or an image path, then Enter", continuous_update=False,
                          layout=W.Layout(width="320px"))
        slider = W.SelectionSlider(options=[(c.label, c.name) for c in self.choices],
                                   value=self._choice(model).name, description="rate",
                                   continuous_update=False, layout=W.Layout(width="520px"),
                                   style={"description_width": "initial"})
        picture = W.Image(format="png", layout=W.Layout(max_width="900px"))
        info = W.HTML()
        status = W.HTML()
        untrained = [c.label for c in self.choices if not c.trained]
        banner = W.HTML(
            "<b style='color:#b00'>UNTRAINED models (seeded random weights): reconstructions are meaningless; "
            "files, sizes and times are real.</b>" if untrained else "")
        provisioned = ", ".join(f"{n.upper()}: {s}" for n, s in self.metrics.status.items() if s != "ok")

        def render(*_):
            status.value = "<i>encoding ...</i>" if (self.image_key, slider.value) not in self.results else ""
            try:
                text = self.summary_text(slider.value)
                picture.value = _png(self.figure(slider.value))
                info.value = "<pre class='onedc-summary'>" + _html(text) + "</pre>"
                status.value = ""
            except Exception as error:  # noqa: BLE001  shown in the UI; the notebook keeps running
                status.value = f"<b style='color:#b00'>{_html(type(error).__name__ + ': ' + str(error))}</b>"

        def new_image(value):
            try:
                self.set_image(value)
            except (OSError, ValueError) as error:
                status.value = f"<b style='color:#b00'>{_html(str(error))}</b>"
                return
            render()

        picker.observe(lambda change: change["new"] != "(path)" and new_image(change["new"]), names="value")
        path_box.observe(lambda change: change["new"] and new_image(change["new"]), names="value")
        slider.observe(render, names="value")
        render()
        footer = W.HTML(f"<small>bpp = 8 x file bytes / pixels; files in {_html(str(self.out_dir))}"
                        + (f"; {_html(provisioned)}" if provisioned else "") + "</small>")
        return W.VBox([banner, W.HBox([picker, path_box]), slider, status, info, picture, footer])


def _html(text: str) -> str:
    import html

    return html.escape(text)
