"""The statistics behind every verdict: is a model better than chance, are two models as accurate,
is one faster, does a latency fit under a limit.

Everything here is plain numpy and the standard library, so the gate, the quantize stage and the
bench scripts decide with the same rules:

* accuracy on ``n`` eval examples is a binomial proportion: its interval is Wilson's, and "better than
  always guessing the majority class" is a one-sided exact binomial test;
* perplexity is summed over texts: its interval is a bootstrap over texts (seeded, so repeatable);
* latency samples taken interleaved are cut into consecutive blocks; the ratio of two models' medians
  gets an interval from the spread of the per-block ratios (a load spike hits one block, both
  models); a quantile of one model's samples gets the distribution-free order-statistic interval.

A difference inside an interval is a tie: callers then decide on size, then on accuracy.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np

#: Two-sided 95% normal quantile: the confidence of every interval edgeslim reports.
Z95 = 1.959964
#: One-sided significance level of the floor tests (better than the majority class / a unigram LM).
ALPHA = 0.05


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space (no scipy needed)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (stays inside [0, 1], sane at 0 and n)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def better_than_rate(accuracy: float, n: int, rate: float, alpha: float = ALPHA) -> tuple[bool, float]:
    """Whether ``accuracy`` on ``n`` examples is significantly above ``rate`` (one-sided binomial test).

    Returns (verdict, p-value). A model that always predicts the majority class scores exactly the
    majority rate and gets p of about 0.5: never significant."""
    hits = int(round(accuracy * n))
    p_value = binomial_sf(hits, n, rate)
    return p_value < alpha, p_value


def bootstrap_interval(totals: Sequence[float], counts: Sequence[float], rounds: int = 2000, seed: int = 0,
                       z_level: float = 0.95) -> tuple[float, float]:
    """Interval of ``sum(totals) / sum(counts)`` from resampling the (total, count) pairs (texts)."""
    totals_arr, counts_arr = np.asarray(totals, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if totals_arr.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, totals_arr.size, size=(rounds, totals_arr.size))
    means = totals_arr[picks].sum(axis=1) / np.maximum(counts_arr[picks].sum(axis=1), 1e-12)
    tail = (1 - z_level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def quantile_interval(samples: Sequence[float], q: float = 0.5, z: float = Z95) -> tuple[float, float]:
    """Distribution-free interval of the ``q`` quantile: the order statistics at ranks
    ``n q -/+ z sqrt(n q (1 - q))`` (the normal approximation to the binomial count below it)."""
    values = np.sort(np.asarray(samples, dtype=np.float64))
    n = values.size
    if n == 0:
        return float("nan"), float("nan")
    spread = z * math.sqrt(n * q * (1 - q))
    low = int(max(0, math.floor(n * q - spread)))
    high = int(min(n - 1, math.ceil(n * q + spread)))
    return float(values[low]), float(values[high])


def ratio_interval(numerator_ms: Sequence[float], denominator_ms: Sequence[float], blocks: int = 10,
                   k: float = 3.0) -> dict[str, float]:
    """Ratio of the medians of two interleaved sample series, with an interval from block ratios.

    The series (in run order) are cut into ``blocks`` consecutive blocks; each gives a ratio of
    medians over the same stretch of time. The interval is the overall ratio -/+ ``k`` robust
    standard errors of those block ratios (1.4826 x their median absolute deviation / sqrt(blocks)),
    widened to include the two central block ratios' range when the blocks are too few to judge.
    """
    n = min(len(numerator_ms), len(denominator_ms))
    ratio = float(np.median(numerator_ms) / np.median(denominator_ms))
    if n < 2 * blocks:
        blocks = max(1, n // 2)
    size = max(1, n // blocks)
    num, den = np.asarray(numerator_ms[: size * blocks]), np.asarray(denominator_ms[: size * blocks])
    ratios = [float(np.median(num[i * size:(i + 1) * size]) / np.median(den[i * size:(i + 1) * size]))
              for i in range(blocks)]
    centre = statistics.median(ratios)
    mad = statistics.median(abs(r - centre) for r in ratios)
    half = k * 1.4826 * mad / math.sqrt(blocks)
    return {"ratio": ratio, "low": ratio - half, "high": ratio + half, "noise": half, "blocks": blocks,
            "block_ratios": ratios}


def compare_latency(a_ms: Sequence[float], b_ms: Sequence[float]) -> int:
    """-1 when ``a`` is faster than ``b`` beyond noise, 1 when slower, 0 when they tie."""
    interval = ratio_interval(a_ms, b_ms)
    if interval["high"] < 1.0:
        return -1
    if interval["low"] > 1.0:
        return 1
    return 0
