"""The nano results of issue 7 in one command: every bundled model of a family (default: the default model's,
`weights.default_family`) and the classical baselines on the nano test photographs -> results/<family>/
(per-image CSV and summary JSON per codec), then every figure and table from results/ (for family nano:
figures/rd_nano.png, figures/tables/rd_nano.*, bdrate_nano.* against JPEG, bdrate_onedc_nano.*: each OneDC curve
against every classical codec on DISTS, LPIPS, PSNR and MS-SSIM).

    python -m onedc_lib.experiments.nano                        # = onedc eval-nano; resumable, one thread
    python -m onedc_lib.experiments.nano --family nano          # another family's bundled models -> results/nano
    python -m onedc_lib.experiments.nano --only baselines       # the classical codecs only (no models needed)
    nano_results(models=["runs/q1/model", ...])          # model folders instead of the bundled models

The evaluation is `sweep.rd_sweep("nano", ..., preset=family)` (so notebook 20 with `images="nano"` writes the
same files) and
the figures are `figures.regenerate` (notebook 50). OneDC models are trained weights only, bundled
(`onedc bundle`) or model folders: presets with random weights are refused, since results/ holds results. The
models form one curve per kind, ordered by lambda: those that code y (one RD point each) and the z-only model(s).
Baselines run their whole quality sweeps (0.05-0.15 bpp up to 1.1-1.6 bpp on these photographs: no classical
codec reaches 0.02 bpp, see `baselines`). FID/KID are reported missing with the patch counts: the six test
photographs give far fewer 256-px patches than FID_MIN_PATCHES.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ..eval.sweep import NANO_DATA

__all__ = ["FID_MIN_PATCHES", "nano_codecs", "nano_results"]

FID_MIN_PATCHES = 192  # Kodak's patch count, the smallest set the spec reports FID for (as results/baselines)


def _model_config(name: str):
    """The ModelConfig of a bundled model or a model folder, read without loading weights; presets refused."""
    from ..config import config_from_dict
    from ..weights import WeightsError, bundled_dir, bundled_models

    folder = bundled_dir() / name if name in bundled_models() else Path(name)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{name!r} is not a bundled model ({', '.join(bundled_models()) or 'none'}) or a model "
                           "folder: results come from trained weights only")
    return config_from_dict(json.loads((folder / "config.json").read_text())["config"])


def nano_codecs(models=None, family: str | None = None) -> list[str]:
    """Runner specs of the OneDC curves: `onedc:<models that code y>` and `onedc:<z-only models>`, each ordered
    by decreasing lambda (increasing rate). models: bundled names or model folders (default: every bundled model
    of the family, by default the default model's); [] when there is none."""
    from ..weights import bundled_models, default_family, family_members

    names = list(models) if models is not None else family_members(family or default_family(), bundled_models())
    curves: dict[bool, list] = {False: [], True: []}
    for name in names:
        config = _model_config(str(name))
        curves[config.codec.z_only].append((-config.loss.lmbda, str(name)))
    return ["onedc:" + ",".join(n for _, n in sorted(c)) for c in (curves[False], curves[True]) if c]


def nano_results(data_dir=NANO_DATA, results_dir="results", figures_dir="figures", out_dir="out/nano_eval",
                 baselines=None, models=None, onedc: bool = True, figures: bool = True, device: str = "cpu",
                 metrics=("psnr", "ms_ssim", "lpips", "dists"), progress: bool = True,
                 family: str | None = None) -> dict:
    """Evaluates, writes results_dir/<family>/ and (figures=True) regenerates figures_dir from results_dir; returns
    {"summaries": {codec tag: summary}, "figures": [files], "notes": [...]}.

    baselines: names (default all of eval.baselines.BASELINES; [] for none); models / onedc: the OneDC models
    (default: nano_codecs of the family) / False for none; family: default the default model's. Bitstreams and
    reconstructions go to out_dir/runs/<family> (not committed)."""
    from ..eval.baselines import BASELINES
    from ..eval.sweep import nano_test_folder, rd_sweep
    from ..weights import default_family

    family = family or default_family()
    nano_test_folder(data_dir)  # a clear error before any model is loaded
    codecs = nano_codecs(models, family) if onedc else []
    notes = []
    if onedc and not codecs:
        notes.append(f"no bundled {family} models (onedc bundle ...): OneDC left out, baselines only")
    codecs += list(BASELINES if baselines is None else baselines)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    summaries = rd_sweep("nano", codecs, preset=family, out_dir=out_dir, results_dir=results_dir, metrics=metrics,
                         fid=True, fid_min_patches=FID_MIN_PATCHES, device=device, progress=progress, data_dir=data_dir)
    written = []
    if figures:
        from ..figures import regenerate

        outputs = regenerate(results_dir, figures_dir)
        written = [e["file"] for e in outputs.entries]
        notes += outputs.notes
    return {"summaries": summaries, "figures": written, "notes": notes}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=NANO_DATA, metavar="DIR",
                        help=f"the prepared nano photographs, test/ evaluated (default: {NANO_DATA})")
    parser.add_argument("--family", metavar="NAME", help="the bundled models of this family (default: the default "
                        "model's) and the results folder DIR/NAME")
    parser.add_argument("--results", default="results", metavar="DIR",
                        help="CSV + JSON into DIR/<family> (default: results)")
    parser.add_argument("--figures", default="figures", metavar="DIR", help="figures and tables (default: figures)")
    parser.add_argument("--out", default="out/nano_eval", metavar="DIR",
                        help="bitstreams and reconstructions (default: out/nano_eval)")
    parser.add_argument("--only", choices=("baselines", "onedc"), help="one side only")
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help="bundled names or model folders (default: every bundled model of the family)")
    parser.add_argument("--baselines", nargs="+", metavar="CODEC", help="default: jpeg webp avif jxl hevc")
    parser.add_argument("--no-figures", action="store_true", help="do not regenerate figures/ from results/")
    parser.add_argument("--device", default="cpu", help="torch device of the models and metrics (default: cpu)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default: 1)")


def run_from_args(args: argparse.Namespace) -> int:
    """`onedc eval-nano`: one line per codec, then the figures written; bad data or models exit 2."""
    import torch

    from ..weights import WeightsError

    torch.set_num_threads(args.threads)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = nano_results(args.data, args.results, args.figures, args.out, baselines=(
                [] if args.only == "onedc" else args.baselines), models=args.models,
                onedc=args.only != "baselines", figures=not args.no_figures, device=args.device,
                family=args.family)
    except (OSError, ValueError, WeightsError) as e:
        print(f"onedc: {e}", file=sys.stderr)
        return 2
    finally:
        for w in dict.fromkeys(str(w.message) for w in caught):
            print(f"onedc: warning: {w}", file=sys.stderr)
    for tag, s in result["summaries"].items():
        bpp = [p["bpp"] for p in s["points"]]
        print(f"{tag}: {len(s['points'])} rate points, {min(bpp):.4f}-{max(bpp):.4f} bpp -> {s['results_file']}")
    if result["figures"]:
        print(f"{len(result['figures'])} figures and tables in {args.figures}/ (MANIFEST.json)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onedc_lib.experiments.nano", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
