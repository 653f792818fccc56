"""Progress of one long call (a large image through compress or decompress): the models say how many pieces of work
are coming (`plan`) and when each is done (`done`); whoever listens (the command line's bar) shows it. With no
listener both are no-ops, so the models report unconditionally and stay silent in training, tests and notebooks.

    with listening(bar):        # bar: a tqdm bar (anything with .total, .update(n) and .refresh())
        model.compress_file("big.png", "big.odc")

Pieces: compress = VAE encoder, g_a, h_a, the four steps of the context model, rANS coding; decompress = h_s, the
four steps (each with its rANS decode), g_s, the generator, the VAE decoder; a VAE decode in tiles adds its tiles
(two passes each) when it starts, the only time the total grows. The listener is per thread (a context variable).
"""
from __future__ import annotations

import contextlib
import contextvars

__all__ = ["done", "listening", "plan"]

_listener: contextvars.ContextVar = contextvars.ContextVar("onedc_progress", default=None)


@contextlib.contextmanager
def listening(bar):
    """Report plan() and done() of the calls inside to `bar`."""
    token = _listener.set(bar)
    try:
        yield bar
    finally:
        _listener.reset(token)


def plan(pieces: int) -> None:
    """`pieces` more pieces of work are coming (added to the listener's total)."""
    bar = _listener.get()
    if bar is not None:
        bar.total = (bar.total or 0) + pieces
        bar.refresh()


def done(pieces: int = 1) -> None:
    """`pieces` pieces of work are done."""
    bar = _listener.get()
    if bar is not None:
        bar.update(pieces)
