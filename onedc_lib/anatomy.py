"""What is inside a OneDC file (notebooks/01_bitstream_anatomy.ipynb): header fields with their byte offsets,
sections, and the cost of z and of y at each of the four steps of the context model.

    anatomy = bitstream_anatomy("photo.odc", model)      # model: the one that wrote it (for the per-step split)
    anatomy.header_table(); anatomy.section_table(); anatomy.step_table(); anatomy.figure()

Where the per-step numbers come from. The y section is ONE odc stream: its tiles interleave the four steps, so
the file itself has no per-step byte boundaries. With the model that wrote the file, the file is decoded step by
step (exactly as `OneDC.decompress` does, symbols CRC checked) and each step's symbols and table indexes are
kept. Per step we then report
  * `coded_bytes`: the bytes of that step's symbols coded ALONE with the same coder and tables
    (`GaussianCoder.encode`, one tile) minus the fixed framing of an empty stream (the two drained
    states, 6 bytes). They are exact sizes of real streams; their sum differs from the y section by that framing, by
    the section's tiling, and by the rANS state flush of each separate stream (a few bytes);
  * `estimated_bits`: the model's rate function (`entropy.rate.gaussian_bits`, eval mode) on the same residuals
    and scales: what training optimises. It uses the continuous Gaussian; the coder uses 16-bit tables picked by
    quantised scale, so the two differ slightly.
z is exact: 14 bits per 64x64 block of the padded image, packed into ceil(14 N / 8) bytes.

Release-format files (the released OneDC's 16-byte header) are described too, without the per-step split (their
y stream needs the release model).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .eval.runner import json_safe

__all__ = ["Anatomy", "bitstream_anatomy", "file_anatomy"]


@dataclass
class Anatomy:
    path: str | None
    format: str
    height: int
    width: int
    total_bytes: int
    header: list[dict]
    sections: list[dict]
    steps: list[dict] = field(default_factory=list)
    z: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: dict = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def bpp(self) -> float:
        return 8 * self.total_bytes / self.pixels

    def header_table(self):
        import pandas as pd

        return pd.DataFrame(self.header, columns=["field", "offset", "bytes", "value"])

    def section_table(self):
        """One row per part of the file: header (fixed part + section table + CRC), then each payload."""
        import pandas as pd

        rows = [{"part": "header", "offset": 0, "bytes": self.header_bytes, "crc32": "", "symbols_crc32": ""}]
        rows += [{"part": f"section {s['name']}", **{k: s.get(k, "") for k in ("offset", "bytes", "crc32",
                                                                                  "symbols_crc32")}}
                 for s in self.sections]
        frame = pd.DataFrame(rows)
        frame["share"] = frame["bytes"] / self.total_bytes
        frame["bpp"] = 8 * frame["bytes"] / self.pixels
        return frame

    @property
    def header_bytes(self) -> int:
        return self.total_bytes - sum(s["bytes"] for s in self.sections)

    def step_table(self):
        """Per step of the four-step prior (empty without the model that wrote the file), and z."""
        import pandas as pd

        rows = [{"part": "z", "symbols": self.z.get("indices"), "coded_bytes": self.z.get("bytes"),
                 "estimated_bits": self.z.get("bits"), "bpp": 8 * self.z.get("bytes", 0) / self.pixels}]
        for s in self.steps:
            rows.append({"part": f"y step {s['step']}", "symbols": s["symbols"], "coded_bytes": s["coded_bytes"],
                         "estimated_bits": s["estimated_bits"], "bpp": 8 * s["coded_bytes"] / self.pixels,
                         "zero_share": s["zero_share"], "mean_abs_symbol": s["mean_abs_symbol"],
                         "mean_scale": s["mean_scale"], "escapes": s["escapes"]})
        return pd.DataFrame(rows)

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "height": self.height, "width": self.width,
                "total_bytes": self.total_bytes, "bpp": self.bpp, "header_bytes": self.header_bytes,
                "header": self.header, "sections": self.sections, "z": self.z, "steps": self.steps,
                "model": self.model, "notes": self.notes,
                "per_step_method": "each step's symbols coded alone (GaussianCoder, one tile) minus the empty-"
                                   "stream framing; estimated_bits from entropy.rate.gaussian_bits (eval)"}

    def save(self, out_dir) -> list[Path]:
        """anatomy.json, and the three tables as CSV, in out_dir."""
        from .bitstream import atomic_write

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "anatomy.json", (json.dumps(json_safe(self.as_dict()), indent=1) + "\n").encode())
        paths = [out / "anatomy.json"]
        for name, table in (("header", self.header_table()), ("sections", self.section_table()),
                            ("steps", self.step_table())):
            atomic_write(out / f"anatomy_{name}.csv", table.to_csv(index=False).encode())
            paths.append(out / f"anatomy_{name}.csv")
        return paths

    def figure(self):
        """Left: the file as one bar (header, z, y steps). Right: coded vs estimated bits per step."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.4), layout="constrained")
        left, right = fig.subplots(1, 2, width_ratios=[1.4, 1])
        parts = [("header", self.header_bytes), ("z", self.z.get("bytes", 0))]
        if self.steps:
            step_total = sum(s["coded_bytes"] for s in self.steps)
            y_bytes = next((s["bytes"] for s in self.sections if s["name"] == "y"), 0)
            # the y section split in proportion to the steps' separate sizes (the stream itself interleaves them)
            parts += [(f"y step {s['step']}", y_bytes * s["coded_bytes"] / max(step_total, 1)) for s in self.steps]
            parts += [(s["name"], s["bytes"]) for s in self.sections if s["name"] not in ("z", "y")]
        else:
            parts += [(s["name"], s["bytes"]) for s in self.sections if s["name"] != "z"]
        start = 0.0
        colors = ["#888888", "#d62728", "#1f77b4", "#4f97d4", "#7fb7e4", "#afd7f4", "#2ca02c", "#ff7f0e"]
        for (name, size), color in zip(parts, colors * 3):
            left.barh([0], [size], left=[start], color=color, label=f"{name}: {size:.0f} B")
            start += size
        left.set_yticks([])
        left.set_xlabel(f"bytes ({self.total_bytes} in all, {self.bpp:.4f} bpp)")
        left.set_title(f"{self.format} file, {self.height}x{self.width}", fontsize="small")
        left.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.35), ncols=3)
        if self.steps:
            x = np.arange(len(self.steps))
            right.bar(x - 0.2, [8 * s["coded_bytes"] for s in self.steps], 0.4, label="coded alone (bits)")
            right.bar(x + 0.2, [s["estimated_bits"] for s in self.steps], 0.4, label="rate function (bits)")
            right.set_xticks(x, [f"step {s['step']}" for s in self.steps])
            right.set_ylabel("bits")
            right.legend(fontsize="x-small")
            right.set_title("y per step of the context model", fontsize="small")
        else:
            right.text(0.5, 0.5, "no per-step split\n" + "\n".join(self.notes[:2]), ha="center", va="center",
                       fontsize="x-small", wrap=True)
            right.set_axis_off()
        return fig


def _container_header(data: bytes, c) -> list[dict]:
    from . import bitstream as B

    rows = [
        {"field": "magic", "offset": 0, "bytes": 8, "value": data[:8].hex(" ")},
        {"field": "version", "offset": 8, "bytes": 1, "value": c.version},
        {"field": "flags", "offset": 9, "bytes": 1, "value": data[9]},
        {"field": "model id", "offset": 10, "bytes": 16, "value": c.model_id.hex()},
        {"field": "table hash", "offset": 26, "bytes": 8, "value": c.table_hash.hex()},
        {"field": "height", "offset": 34, "bytes": 4, "value": c.height},
        {"field": "width", "offset": 38, "bytes": 4, "value": c.width},
        {"field": "section count", "offset": 42, "bytes": 1, "value": len(c.sections)},
    ]
    pos = B._FIXED.size
    for s in c.sections:
        entry = B._ENTRY.size + (4 if s.symbols_crc is not None else 0)
        value = f"tag {s.name!r}, length {len(s.payload)}, crc32 {s.crc:08x}"
        if s.symbols_crc is not None:
            value += f", symbols crc32 {s.symbols_crc:08x}"
        rows.append({"field": f"section table: {s.name}", "offset": pos, "bytes": entry, "value": value})
        pos += entry
    rows.append({"field": "header CRC", "offset": pos, "bytes": 4, "value": data[pos:pos + 4].hex()})
    return rows


def _z_facts(height: int, width: int, num_bytes: int) -> dict:
    from .entropy import release_format

    n = release_format.z_count(height, width)
    return {"indices": n, "bits_per_index": release_format.Z_BITS, "bits": release_format.Z_BITS * n,
            "bytes": num_bytes, "padding_bits": 8 * num_bytes - release_format.Z_BITS * n,
            "grid": [-(-height // release_format.BLOCK), -(-width // release_format.BLOCK)]}


def _decode_steps(model, container) -> list[dict]:
    """Decode y step by step with `model` (as decompress does) and measure each step."""
    import torch

    from .entropy.coder import GaussianCoder
    from .entropy.rate import gaussian_bits
    from .entropy.release_format import unpack_z
    from .models.onedc import PAD

    hp, wp = container.padded_height, container.padded_width
    z = unpack_z(container.section("z").payload, (hp // PAD) * (wp // PAD))
    z = torch.from_numpy(z).view(1, hp // PAD, wp // PAD).to(model._device)
    source = model._symbol_source(container)
    captured = []

    def capture(step, scales):
        symbols = source(step, scales)
        captured.append((scales.detach().cpu().double(), symbols.detach().cpu().double()))
        return symbols

    with torch.no_grad(), model._float64_entropy_path() as codec:
        params, _ = codec.hyper_synthesis(codec.z_from_indices(z).to(torch.float64))
        codec.decode_steps(params, capture)
    coder = GaussianCoder(model.tables)
    framing = len(coder.encode(np.zeros(0, np.int32), np.zeros(0, np.int32), tiles=1))
    tables = model.tables
    rows = []
    for step, (scales, symbols) in enumerate(captured):
        flat = symbols.numpy().reshape(-1).astype(np.int64)
        indexes = tables.scale_to_index(scales).numpy().reshape(-1).astype(np.int64)
        coded = len(coder.encode(flat.astype(np.int32), indexes.astype(np.int32), tiles=1)) - framing
        low = tables.offset[indexes]
        high = low + tables.cdf_length[indexes] - 3  # the last value of each row before its escape bin
        estimated = float(gaussian_bits(symbols, scales, training=False).sum())
        rows.append({"step": step, "symbols": int(flat.size), "coded_bytes": int(coded),
                     "estimated_bits": estimated, "zero_share": float(np.mean(flat == 0)) if flat.size else 0.0,
                     "mean_abs_symbol": float(np.mean(np.abs(flat))) if flat.size else 0.0,
                     "mean_scale": float(scales.mean()) if flat.size else 0.0,
                     "escapes": int(np.sum((flat < low) | (flat > high)))})
    return rows


def bitstream_anatomy(file, model=None) -> Anatomy:
    """Anatomy of a file (path or bytes). `model`: the model that wrote it (an OneDC, or a name for
    weights.load_model); without it, or with another model, the per-step split is left out and a note says why."""
    from . import bitstream as B

    path = None
    if isinstance(file, (bytes, bytearray)):
        data = bytes(file)
    else:
        path = str(file)
        data = B.read_bytes(file)
    fmt = B.detect_format(data)
    if fmt == "release":
        r = B.read_release_file(data)
        size = B.release_format.HEADER.size
        header = [{"field": "height", "offset": 0, "bytes": 4, "value": r.height},
                  {"field": "width", "offset": 4, "bytes": 4, "value": r.width},
                  {"field": "y stream length", "offset": 8, "bytes": 4, "value": len(r.y_stream)},
                  {"field": "caption length", "offset": 12, "bytes": 4, "value": 0}]
        sections = [{"name": "y", "offset": size, "bytes": len(r.y_stream)},
                    {"name": "z", "offset": size + len(r.y_stream), "bytes": len(r.z_bytes)}]
        return Anatomy(path, "release", r.height, r.width, len(data), header, sections,
                       z=_z_facts(r.height, r.width, len(r.z_bytes)),
                       notes=[("release-format file: no magic, version, model id or CRCs; the per-step split of "
                               "its y stream needs the release model and its tables (not done here)")])
    c = B.read_container(data)
    sections, pos = [], c.header_bytes
    for s in c.sections:
        sections.append({"name": s.name, "offset": pos, "bytes": len(s.payload), "crc32": f"{s.crc:08x}",
                         "symbols_crc32": "" if s.symbols_crc is None else f"{s.symbols_crc:08x}"})
        pos += len(s.payload)
    anatomy = Anatomy(path, "onedc", c.height, c.width, len(data), _container_header(data, c), sections,
                      z=_z_facts(c.height, c.width, len(c.section("z").payload)))
    if model is not None and not hasattr(model, "compress"):
        from .weights import load_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(model)
    if model is None:
        anatomy.notes.append("no model given: the per-step split of y needs the model that wrote the file")
    elif model.model_id != c.model_id:
        anatomy.notes.append(f"the file was written by model {c.model_id.hex()}, not by the given "
                             f"{model.config.name} ({model.model_id.hex()}): no per-step split")
    elif "y" not in c.section_names:
        anatomy.notes.append("z-only file: no y section, the image is generated from z alone")
        anatomy.model = {"name": model.config.name, "model_id": model.model_id.hex()}
    else:
        anatomy.steps = _decode_steps(model, c)
        anatomy.model = {"name": model.config.name, "model_id": model.model_id.hex(),
                         "untrained_parts": list(getattr(model, "untrained_parts", ()))}
        y = next(s for s in sections if s["name"] == "y")
        summed = sum(s["coded_bytes"] for s in anatomy.steps)
        anatomy.notes.append(f"y section {y['bytes']} bytes; the four steps coded alone: {summed} bytes "
                             f"(+ framing and tiling of the single stream)")
    return anatomy


def file_anatomy(file: str = "", image: str = "astronaut", model: str = "", overrides: dict | None = None,
                 out_dir="out/bitstream_anatomy", max_side: int = 512, smoke: bool = False) -> Anatomy:
    """The notebook's entry point: the anatomy of `file`, or (file empty) of `image` compressed by `model` into
    out_dir/<image>.odc first. model: a bundled model, a model folder, or a preset (seeded random weights); empty:
    the default model."""
    from .bitstream import write_file
    from .weights import DEFAULT_MODEL, build_model, load_model
    from .data.samples import load_demo_image

    model = model or DEFAULT_MODEL

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = build_model(model, **overrides) if overrides else load_model(model)
    notes = [str(w.message) for w in caught]
    if file:
        anatomy = bitstream_anatomy(file, net)
    else:
        name, x = load_demo_image(image, min(max_side, 128) if smoke else max_side)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.odc"
        write_file(path, net.compress(x[None]).container)
        anatomy = bitstream_anatomy(path, net)
    anatomy.notes = notes + anatomy.notes
    return anatomy
