"""onedc_lib.progress: compress and decompress report their pieces of work, and a listener's bar reaches the total
they plan. The counts are the pieces by hand: VAE encoder, g_a, h_a, four context-model steps, rANS (compress);
h_s, four steps, g_s, generator, VAE decoder, and each VAE tile twice when the decode is tiled (decompress)."""
import dataclasses
import io

import torch
from tqdm import tqdm

from onedc_lib.progress import done, listening, plan
from onedc_lib.weights import build_model


class Recorder:
    """A listener that records (pieces done, total known) at every piece."""

    def __init__(self):
        self.total, self.n, self.seen = None, 0, []

    def update(self, pieces):
        self.n += pieces
        self.seen.append((self.n, self.total))

    def refresh(self):
        pass


def test_no_listener_no_effect_and_listeners_nest():
    plan(3)
    done()  # nobody listens: nothing happens
    with listening(Recorder()) as outer:
        plan(2)
        with listening(Recorder()) as inner:
            plan(1)
            done()
        done(2)
    assert (outer.n, outer.total, inner.n, inner.total) == (2, 2, 1, 1)


def test_compress_and_decompress_reach_their_totals():
    model = build_model("nano_q3")
    # 448 x 384: the latent is 56 x 48; VAE tiles of 48 latent pixels overlapping by one 16-pixel attention window
    # (stride 32): two tiles down (0-48, 32-56), one across
    x = torch.rand(1, 3, 448, 384, generator=torch.Generator().manual_seed(0))
    with listening(Recorder()) as recorder:
        compressed = model.compress(x)
    assert recorder.seen == [(n, 8) for n in range(1, 9)]  # 3 + 4 + 1 pieces, all planned up front

    with tqdm(file=io.StringIO()) as bar, listening(bar):  # a real bar
        whole = model.decompress(compressed)
    assert bar.n == bar.total == 1 + 4 + 3  # the latent is within one tile of the default 128

    model.decode_options = dataclasses.replace(model.decode_options, vae_tile=48)
    with listening(Recorder()) as recorder:
        tiled = model.decompress(compressed)
    # h_s, 4 steps, g_s, generator planned up front; the tiled decode adds its 2 tiles x 2 passes when it starts
    assert recorder.seen == [(n, 8) for n in range(1, 8)] + [(n, 12) for n in range(8, 13)]
    assert whole.shape == tiled.shape == (1, 3, 448, 384)
