"""Bjontegaard deltas (BD-rate, BD-metric) for any metric, and loading RD points from results files.

BD-rate of B relative to the anchor A: the mean, over the metric interval where both curves exist, of
log(rate_B / rate_A) at equal quality, as a percentage: 100 * (exp(mean) - 1). Negative = B needs fewer bits.
BD-metric: the mean, over the log-rate interval where both exist, of metric_B - metric_A, in the metric's
units (for a lower-is-better metric such as LPIPS, DISTS or FID a negative BD-metric means B is better).

Curves are interpolated in the log-rate domain with
    "pchip"  piecewise cubic Hermite (monotone) through the points, the usual modern variant;
    "akima"  Akima's piecewise cubic;
    "cubic"  a least-squares 3rd-order polynomial, the original VCEG-M33 method;
    "linear" straight lines between the points: the only one defined for 2 or 3 points per curve (ablations
             trained at a few rates), and the crudest.
Each needs at least 4 RD points per curve ("linear": 2); the integration runs over the overlap of the two curves' ranges
only (a warning below `min_overlap` of the union, a ValueError without any overlap). Points are sorted by
the integration variable; repeated values of it are an error. Lower-is-better metrics are negated so that
every curve rises with rate; `higher_is_better` only sets that orientation, and a curve that runs the other
way (metric falling as rate rises) draws a warning, since that usually means the flag is wrong.
The results agree with the `bjontegaard` package (same methods) to ~1e-10 percentage points.

Results files (`load_rd_points`, `load_curve`):

- summary JSON written by `onedc eval` / the runner: one point per rate (quality or model), means over images:

      {"codec": "onedc-nano",            # name used in plots and messages ("name" is accepted too)
       "points": [{"bpp": 0.031, "psnr": 22.1, "lpips": 0.21, "dists": 0.12, ...}, ...],
       ...}                              # any other keys (protocol, versions, device, commit) are ignored

  A bare list of point objects is accepted too.
- CSV with a `bpp` column and one column per metric. When a `quality`, `rate`, `preset`, `model` or `lambda`
  column is present (per-image rows), bpp and metrics are averaged per value of it first; otherwise every row
  is one point.

Metric names match case-insensitively, with "-" and "_" the same ("ms-ssim" == "MS_SSIM").
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LOWER_IS_BETTER", "METHODS", "RDCurve", "bd_metric", "bd_rate", "bd_rate_row", "higher_is_better",
           "load_curve", "load_rd_points"]

METHODS = ("pchip", "akima", "cubic", "linear")
MIN_POINTS = {"pchip": 4, "akima": 4, "cubic": 4, "linear": 2}
LOWER_IS_BETTER = frozenset({"lpips", "dists", "fid", "kid", "mse", "mae", "l1", "l2", "bpp", "niqe", "pi",
                             "butteraugli", "ssimulacra2_distance"})
GROUP_COLUMNS = ("quality", "rate", "preset", "model", "lambda", "lmbda", "q")


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def higher_is_better(metric: str) -> bool:
    """False for the known lower-is-better metrics (LPIPS, DISTS, FID, KID, MSE, ...), True otherwise."""
    return _key(metric) not in LOWER_IS_BETTER


def _points(rate, metric, which: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    rate = np.asarray(rate, dtype=np.float64).ravel()
    metric = np.asarray(metric, dtype=np.float64).ravel()
    if rate.shape != metric.shape:
        raise ValueError(f"{which}: {rate.size} rates but {metric.size} metric values")
    if rate.size < MIN_POINTS[method]:
        raise ValueError(f"{which}: BD ({method}) needs at least {MIN_POINTS[method]} RD points per curve, got "
                         f"{rate.size}" + ("" if method == "linear" else "; method='linear' takes 2"))
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(metric))):
        raise ValueError(f"{which}: rates and metric values must be finite")
    if np.any(rate <= 0):
        raise ValueError(f"{which}: rates must be positive (the BD integrals use log rate)")
    return rate, metric


def _interpolator(x: np.ndarray, y: np.ndarray, method: str, which: str):
    """f with f(x) ~ y and f.integrate(a, b), after sorting by x."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if np.any(np.diff(x) <= 0):
        repeated = np.unique(x[:-1][np.diff(x) <= 0])
        raise ValueError(f"{which}: repeated values of the integration variable ({repeated}); "
                         "average the points of the same rate first")
    import scipy.interpolate

    if method == "pchip":
        return scipy.interpolate.PchipInterpolator(x, y, extrapolate=False)
    if method == "akima":
        return scipy.interpolate.Akima1DInterpolator(x, y)
    if method == "cubic":
        return _Polynomial(np.polyfit(x, y, 3))
    if method == "linear":
        return _Linear(x, y)
    raise ValueError(f"unknown BD interpolation method {method!r}; one of {', '.join(METHODS)}")


class _Polynomial:
    def __init__(self, coefficients: np.ndarray):
        self.coefficients = coefficients
        self.antiderivative = np.polyint(coefficients)

    def __call__(self, x):
        return np.polyval(self.coefficients, x)

    def integrate(self, a: float, b: float) -> float:
        return float(np.polyval(self.antiderivative, b) - np.polyval(self.antiderivative, a))


class _Linear:
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def integrate(self, a: float, b: float) -> float:
        """Exact for the polyline: trapezoids between a, the knots inside (a, b), and b."""
        xs = np.concatenate([[a], self.x[(self.x > a) & (self.x < b)], [b]])
        ys = np.interp(xs, self.x, self.y)
        return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)))


def _mean_difference(x_a, y_a, x_b, y_b, method: str, min_overlap: float) -> float:
    """Mean of f_B - f_A over the overlap of the x ranges."""
    low, high = max(x_a.min(), x_b.min()), min(x_a.max(), x_b.max())
    union = max(x_a.max(), x_b.max()) - min(x_a.min(), x_b.min())
    if not high > low:
        raise ValueError(f"the two RD curves do not overlap (A covers [{x_a.min():.6g}, {x_a.max():.6g}], "
                         f"B covers [{x_b.min():.6g}, {x_b.max():.6g}]); BD values are undefined")
    if (high - low) / union < min_overlap:
        warnings.warn(f"the RD curves overlap on {100 * (high - low) / union:.0f}% of their joint range only "
                      f"(minimum {100 * min_overlap:.0f}%); the BD value covers that part only", stacklevel=3)
    f_a = _interpolator(x_a, y_a, method, "A")
    f_b = _interpolator(x_b, y_b, method, "B")
    return float((f_b.integrate(low, high) - f_a.integrate(low, high)) / (high - low))


def _orient(rate: np.ndarray, metric: np.ndarray, higher: bool, which: str) -> np.ndarray:
    """The metric with its sign set so that better is higher; warns when it falls as the rate rises."""
    oriented = metric if higher else -metric
    if np.ptp(oriented) > 0 and np.corrcoef(np.log(rate), oriented)[0, 1] < 0:
        warnings.warn(f"{which}: the metric gets worse as the rate rises (higher_is_better={higher}); "
                      f"is the metric's direction right?", stacklevel=3)
    return oriented


def bd_rate(rate_a, metric_a, rate_b, metric_b, higher_is_better: bool = True, method: str = "pchip",
            min_overlap: float = 0.75) -> float:
    """BD-rate of B relative to anchor A in percent (negative: B needs fewer bits for the same metric)."""
    if method not in METHODS:
        raise ValueError(f"unknown BD interpolation method {method!r}; one of {', '.join(METHODS)}")
    rate_a, metric_a = _points(rate_a, metric_a, "A", method)
    rate_b, metric_b = _points(rate_b, metric_b, "B", method)
    m_a = _orient(rate_a, metric_a, higher_is_better, "A")
    m_b = _orient(rate_b, metric_b, higher_is_better, "B")
    mean_log_ratio = _mean_difference(m_a, np.log(rate_a), m_b, np.log(rate_b), method, min_overlap)
    return float(100.0 * math.expm1(mean_log_ratio))


def bd_metric(rate_a, metric_a, rate_b, metric_b, higher_is_better: bool = True, method: str = "pchip",
              min_overlap: float = 0.75) -> float:
    """BD-metric (BD-PSNR for PSNR): mean metric_B - metric_A at equal rate, in the metric's units."""
    if method not in METHODS:
        raise ValueError(f"unknown BD interpolation method {method!r}; one of {', '.join(METHODS)}")
    rate_a, metric_a = _points(rate_a, metric_a, "A", method)
    rate_b, metric_b = _points(rate_b, metric_b, "B", method)
    m_a = _orient(rate_a, metric_a, higher_is_better, "A")
    m_b = _orient(rate_b, metric_b, higher_is_better, "B")
    difference = _mean_difference(np.log10(rate_a), m_a, np.log10(rate_b), m_b, method, min_overlap)
    return difference if higher_is_better else -difference


def bd_rate_row(test, base, metrics) -> dict:
    """{"codec", "anchor", metric: BD-rate (%, pchip) of the test RDCurve against the anchor RDCurve, or
    "n/a (why)" where a curve has fewer than 4 points of the metric or the curves do not overlap}: a table row."""
    row = {"codec": test.name, "anchor": base.name}
    for m in metrics:
        xa, ya = base.points(m) if m in base.metrics else ((), ())
        xb, yb = test.points(m) if m in test.metrics else ((), ())
        if min(len(xa), len(xb)) < MIN_POINTS["pchip"]:
            row[m] = f"n/a ({min(len(xa), len(xb))} points)"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row[m] = bd_rate(xa, ya, xb, yb, higher_is_better=higher_is_better(m))
        except ValueError as error:
            row[m] = f"n/a ({str(error).split(':')[0][:60]})"
    return row


@dataclass(frozen=True)
class RDCurve:
    """One codec's RD points: `columns["bpp"]` and one array per metric (lower-case keys), sorted by bpp."""

    name: str
    columns: dict[str, np.ndarray]
    source: str = ""

    @property
    def metrics(self) -> list[str]:
        return [k for k in self.columns if k != "bpp"]

    def column(self, metric: str) -> np.ndarray:
        key = _key(metric)
        if key not in self.columns:
            have = ", ".join(self.metrics) or "none"
            raise ValueError(f"{self.source or self.name}: no metric {metric!r} (has: {have})")
        return self.columns[key]

    def points(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(bpp, metric) without the points where the metric is missing."""
        values = self.column(metric)
        keep = np.isfinite(values)
        return self.columns["bpp"][keep], values[keep]


def _number(value) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _table(rows: list[dict], where: str) -> dict[str, np.ndarray]:
    """Numeric columns of rows (lower-case keys); bpp required; averaged per group column when one exists."""
    if not rows:
        raise ValueError(f"{where}: no RD points")
    keys = {_key(k): k for k in rows[0]}
    if "bpp" not in keys:
        raise ValueError(f"{where}: no 'bpp' column/key (has: {', '.join(rows[0]) or 'none'})")
    group = next((keys[g] for g in GROUP_COLUMNS if g in keys), None)
    columns: dict[str, list[float]] = {}
    for original in rows[0]:
        key = _key(original)
        if key in columns or original == group:
            continue
        try:
            columns[key] = [_number(r.get(original)) for r in rows]
        except (TypeError, ValueError):
            continue  # a text column (image name, codec, ...)
    table = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    if group is not None and len({str(r.get(group)) for r in rows}) < len(rows):
        labels = [str(r.get(group)) for r in rows]
        groups = list(dict.fromkeys(labels))
        index = np.asarray([groups.index(label) for label in labels])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN groups of a metric stay NaN
            table = {k: np.asarray([np.nanmean(v[index == g]) for g in range(len(groups))]) for k, v in table.items()}
    if not np.all(np.isfinite(table["bpp"])):
        raise ValueError(f"{where}: missing or non-numeric bpp values")
    order = np.argsort(table["bpp"], kind="stable")
    return {k: v[order] for k, v in table.items()}


def load_curve(path) -> RDCurve:
    """An RDCurve from a summary JSON or a CSV (formats in the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise OSError(f"cannot read {path}: {e.strerror or e}") from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        codecs = sorted({r["codec"] for r in rows if r.get("codec")})
        if len(codecs) > 1:
            raise ValueError(f"{path}: rows of several codecs ({', '.join(codecs)}); one codec per file")
        name = codecs[0] if codecs else path.stem
        return RDCurve(name, _table(rows, str(path)), str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: neither CSV (by suffix) nor valid JSON: {e}") from None
    if isinstance(data, list):
        rows, name = data, path.stem
    elif isinstance(data, dict) and isinstance(data.get("points"), list):
        rows, name = data["points"], str(data.get("codec") or data.get("name") or path.stem)
    else:
        raise ValueError(f"{path}: expected {{\"codec\": ..., \"points\": [{{\"bpp\": ..., ...}}]}} "
                         "or a list of points")
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: every point must be an object with 'bpp' and metric keys")
    return RDCurve(name, _table(rows, str(path)), str(path))


def load_rd_points(path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(bpp, metric) arrays of one results file, sorted by bpp, means per rate point."""
    return load_curve(path).points(metric)
