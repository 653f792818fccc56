"""Gaussian coding tables: the release's 256 tables (bit-exact) and ours (no +-50 cap, lower rounding loss).

Both sets share one representation (see cpp_coder/STREAMS.md): 16-bit CDF rows with an escape bin, a length
and an offset per row, identified by a hash that goes into every bitstream.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SCALE_MIN = 0.11
SCALE_MAX = 64.0
NUM_TABLES = 256
PRECISION = 16
TOTAL = 1 << PRECISION
LOG_SCALE_MIN = math.log(SCALE_MIN)
LOG_SCALE_STEP = (math.log(SCALE_MAX) - LOG_SCALE_MIN) / (NUM_TABLES - 1)
# Half-width of our rows in scales. Wider rows spend 16-bit counts on bins of almost no mass, narrower rows escape
# too often; 4.25 keeps the expected code length within 0.015% of the entropy for every scale >= 0.3 (at 0.11 the
# entropy itself is 1e-4 bits and the one-count floor of 16-bit tables dominates).
HALF_WIDTH_SIGMAS = 4.25


@dataclass(frozen=True, eq=False)
class CodingTables:
    """One table set: row k codes values offset[k] .. offset[k] + cdf_length[k] - 3, then the escape bin."""

    name: str
    cdf: np.ndarray  # int32 [T, L]
    cdf_length: np.ndarray  # int32 [T]
    offset: np.ndarray  # int32 [T]
    scale_table: np.ndarray  # the scale each row models
    index_bias: float  # 0.0: floor to the table below (release); 0.5: nearest table in log space (ours)

    @property
    def table_hash(self) -> bytes:
        return table_hash(self.cdf, self.cdf_length, self.offset)

    def scale_to_index(self, scales):
        """Table index of each scale; float64 input gives a machine-independent result."""
        return scale_to_index(scales, self.index_bias)


def table_hash(cdf: np.ndarray, cdf_length: np.ndarray, offset: np.ndarray) -> bytes:
    h = hashlib.sha256(b"onedc-tables-v1")
    h.update(np.ascontiguousarray(cdf_length, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(offset, dtype="<i4").tobytes())
    for row, n in zip(cdf, cdf_length):
        h.update(np.ascontiguousarray(row[:n], dtype="<i4").tobytes())
    return h.digest()[:8]


def scale_to_index(scales, index_bias: float = 0.0):
    """floor((ln max(s, 1e-5) - ln 0.11) / step + bias) clamped to [0, 255], in the dtype of `scales`.

    With bias 0 and float32 input this is the release's map (which sends 36 exact table scales to the table
    below); ours uses bias 0.5 in float64. Numpy input goes through torch too (numpy's float32 log differs).
    """
    import torch

    as_numpy = isinstance(scales, np.ndarray)
    s = torch.from_numpy(scales) if as_numpy else scales
    s = (torch.log(torch.clamp(s, min=1e-5)) - LOG_SCALE_MIN) / LOG_SCALE_STEP + index_bias
    index = torch.clamp(torch.nan_to_num(s, nan=0.0), 0, NUM_TABLES - 1).to(torch.int32)
    return index.numpy() if as_numpy else index


def _steal_empty_bins(cdf: np.ndarray) -> None:
    """The release's fix for zero-frequency bins: take one count from the smallest bin that has more than one."""
    n = len(cdf) - 1
    for i in range(n):
        if cdf[i] != cdf[i + 1]:
            continue
        freqs = np.diff(cdf)
        candidates = np.where(freqs > 1)[0]
        best = candidates[np.argmin(freqs[candidates])]
        if best < i:
            cdf[best + 1 : i + 1] -= 1
        else:
            cdf[i + 1 : best + 1] += 1


@lru_cache(maxsize=None)
def release_tables() -> CodingTables:
    """The released model's tables, rebuilt with its float32 arithmetic (compat README 2.1)."""
    import torch

    scales = torch.exp(torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), NUM_TABLES))
    cdf_rows, lengths, offsets = [], [], []
    for sigma in scales:
        normal = torch.distributions.Normal(torch.tensor(0.0), sigma)
        c = 50
        for i in range(50, 1, -1):
            if normal.cdf(torch.tensor(float(i))) > 0.9999:
                c = i
        values = torch.arange(101, dtype=torch.float32) - c
        lower = normal.cdf(values - 0.5)
        pmf = normal.cdf(values + 0.5) - lower
        tail = 2 * lower[0]
        probs = torch.cat([pmf[: 2 * c + 1], tail[None]])
        scaled = probs * TOTAL
        freq = torch.floor(scaled)
        freq = (freq + (scaled - freq >= 0.5)).to(torch.int64)  # round half away from zero, as the release
        freq = (TOTAL * freq) // freq.sum()
        cdf = np.zeros(len(freq) + 1, dtype=np.int64)
        cdf[1:] = np.cumsum(freq.numpy())
        cdf[-1] = TOTAL
        _steal_empty_bins(cdf)
        cdf_rows.append(cdf)
        lengths.append(len(cdf))
        offsets.append(-c)
    return _pack("release", cdf_rows, lengths, offsets, scales.numpy(), index_bias=0.0)


def _gaussian_bin_probs(sigma: float, c: int) -> np.ndarray:
    """P(v) for v = -c..c of a zero-mean Gaussian integrated over unit bins, then the two-sided tail, in float64."""
    def upper(x: float) -> float:  # P(X > x), accurate in the far tail
        return 0.5 * math.erfc(x / (sigma * math.sqrt(2.0)))

    half = [upper(v - 0.5) - upper(v + 0.5) if v > 0 else 1.0 - 2.0 * upper(0.5) for v in range(c + 1)]
    probs = np.array(half[:0:-1] + half + [2.0 * upper(c + 0.5)], dtype=np.float64)
    return probs / probs.sum()


def _quantize_min_loss(probs: np.ndarray) -> np.ndarray:
    """Integer frequencies >= 1 summing to 2^16, close to `probs` in KL divergence.

    Round to nearest (at least 1), then fix the sum by moving one count in each of the bins where that costs
    least (p * |log change|); ties go to the lower bin, so the result is deterministic.
    """
    freq = np.maximum(1, np.floor(probs * TOTAL + 0.5)).astype(np.int64)
    order = np.arange(len(freq))
    while (excess := int(freq.sum()) - TOTAL) > 0:
        cost = np.where(freq > 1, probs * np.log(freq / np.maximum(freq - 1, 1)), np.inf)
        chosen = np.lexsort((order, cost))[: min(excess, int(np.sum(freq > 1)))]
        freq[chosen] -= 1
    if excess < 0:
        cost = -probs * np.log((freq + 1) / freq)
        freq[np.lexsort((order, cost))[:-excess]] += 1
    assert freq.sum() == TOTAL and freq.min() >= 1
    return freq


@lru_cache(maxsize=None)
def odc_tables() -> CodingTables:
    """Our tables: the same 256 scales, half-width ceil(4.25 sigma) (no cap), low-loss quantisation."""
    scales = np.exp(LOG_SCALE_MIN + LOG_SCALE_STEP * np.arange(NUM_TABLES, dtype=np.float64))
    cdf_rows, lengths, offsets = [], [], []
    for sigma in scales:
        c = max(1, math.ceil(HALF_WIDTH_SIGMAS * sigma))
        freq = _quantize_min_loss(_gaussian_bin_probs(float(sigma), c))
        cdf = np.concatenate([[0], np.cumsum(freq)])
        cdf_rows.append(cdf)
        lengths.append(len(cdf))
        offsets.append(-c)
    return _pack("odc", cdf_rows, lengths, offsets, scales, index_bias=0.5)


def _pack(name, cdf_rows, lengths, offsets, scales, index_bias) -> CodingTables:
    width = max(lengths)
    cdf = np.zeros((len(cdf_rows), width), dtype=np.int32)
    for k, row in enumerate(cdf_rows):
        cdf[k, : len(row)] = row
    tables = CodingTables(
        name=name,
        cdf=cdf,
        cdf_length=np.asarray(lengths, dtype=np.int32),
        offset=np.asarray(offsets, dtype=np.int32),
        scale_table=np.asarray(scales),
        index_bias=index_bias,
    )
    for array in (tables.cdf, tables.cdf_length, tables.offset, tables.scale_table):
        array.setflags(write=False)
    return tables
