"""What every notebook does first: threads, seed, where its files go, and what machine it ran on.

    from onedc_lib.notebook import setup
    env = setup(threads=threads, out_dir=out_dir)     # the notebook's second cell

Smoke runs (`smoke=True`, CI) never write into the committed `results/` and `figures/`: `paths.output_dir` sends
them to `out_dir` instead.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from .eval.runner import device_info
from .paths import output_dir

__all__ = ["device_info", "output_dir", "setup", "show_figures_inline"]  # the first two live below (eval, paths)

REPO = Path(__file__).resolve().parent.parent


def setup(threads: int = 0, seed: int = 0, out_dir: str | os.PathLike | None = None, device: str = "cpu") -> dict:
    """torch intra-op threads (0: torch's default), seeds, the output folder; returns device_info().

    A kernel started in the checkout's notebooks/ folder (JupyterLab does that) moves to the checkout's root, so
    that relative paths in the parameters (results/, figures/, out/) mean the same as under papermill and make.
    """
    import torch

    cwd = Path.cwd()
    if cwd.name == "notebooks" and cwd.parent == REPO and (REPO / "onedc_lib").is_dir():
        os.chdir(REPO)

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    show_figures_inline()
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    info = device_info(device)
    info["cwd"] = str(Path.cwd())
    info["executable"] = sys.executable  # the kernel's python (local path: not written into results)
    if out_dir:
        info["out_dir"] = str(Path(out_dir).resolve())
    return info


def show_figures_inline() -> bool:
    """In IPython, display matplotlib Figure objects (built without pyplot) as PNG; False outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    from matplotlib.figure import Figure

    def png(fig):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
        return buffer.getvalue()

    shell.display_formatter.formatters["image/png"].for_type(Figure, png)
    return True
