"""Bounded memory on large photographs: self-attention computed a block of queries at a time gives the whole-map
result, and compressing a large image costs memory that grows with its pixels, not with their square (a 4000x3000
photograph took 16.7 GB before; benchmarks/memory.py measures the default model)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onedc_lib.models.blocks import ATTENTION_QUERIES, AttnBlock

REPO = Path(__file__).resolve().parents[2]


def whole_map_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """The VQGAN formula with the whole (positions x positions) map at once: the oracle."""
    b, c, h, w = x.shape
    hn = block.norm(x)
    q = block.q(hn).reshape(b, c, h * w)
    k = block.k(hn).reshape(b, c, h * w)
    v = block.v(hn).reshape(b, c, h * w)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / c**0.5, dim=2)
    return x + block.proj_out(torch.einsum("bcj,bij->bci", v, weights).reshape(b, c, h, w))


def test_attention_by_query_blocks_is_the_whole_map():
    torch.manual_seed(0)
    block = AttnBlock(32).eval()
    for h, w in ((7, 9), (40, 53), (64, 64)):  # below, across and at multiples of ATTENTION_QUERIES positions
        x = torch.randn(2, 32, h, w)
        with torch.no_grad():
            torch.testing.assert_close(block(x), whole_map_attention(block, x), rtol=1e-5, atol=1e-5)
    assert 40 * 53 > ATTENTION_QUERIES and (64 * 64) % ATTENTION_QUERIES == 0


PEAK = r"""
import json, resource, sys, warnings
import torch
from onedc_lib.weights import build_model
warnings.simplefilter("ignore")
model = build_model("nano")
model.compress(torch.rand(1, 3, 64, 64))  # lazy imports and first-call allocations before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.compress(torch.rand(1, 3, int(sys.argv[1]), int(sys.argv[2]), generator=torch.Generator().manual_seed(0)))
print(json.dumps({"extra_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def test_compress_of_a_large_image_in_bounded_memory():
    """2048x1536 in a fresh process: the whole attention map of g_a's block at 1/16 (12288 positions) alone would
    be 0.6 GB, and the code before held two of them (1.9 GB above the model); now about 0.6 GB in all."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PEAK, "1536", "2048"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    extra_gb = json.loads(result.stdout.strip().splitlines()[-1])["extra_kb"] / 2**20
    assert extra_gb < 1.0, f"compressing 2048x1536 took {extra_gb:.2f} GB above the loaded model"


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height (its pixels are never decoded when the size is refused)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) +
                     chunk(b"IEND", b""))
    return path


def test_images_above_the_limit_are_refused_before_any_work(tmp_path, capsys):
    from onedc_lib import bitstream
    from onedc_lib.cli import main
    from onedc_lib.models.onedc import MAX_CODEC_PIXELS
    from onedc_lib.weights import build_model

    assert MAX_CODEC_PIXELS < bitstream.MAX_PIXELS  # what the tool processes, below what the format can say
    side = 8200  # 8200 x 8200 = 67.2 MP > 64 MP
    big = _png_header_only(tmp_path / "big.png", side, side)
    code = main(["compress", str(big), "-o", str(tmp_path / "big.odc"), "--model", "nano"])
    err = capsys.readouterr().err
    assert code == 1 and f"image of {side} x {side} pixels (67.2 MP) is larger than onedc processes" in err
    assert not (tmp_path / "big.odc").exists()

    model = build_model("nano")
    z = bitstream.Section("z", bytes(bitstream.z_num_bytes(side, side)))
    odd = bitstream.Container(model.model_id, model.tables.table_hash, side, side, (z,))
    with pytest.raises(bitstream.BitstreamError, match=r"8200 x 8200 pixels \(67.2 MP\) is larger"):
        model.decompress(odd)
