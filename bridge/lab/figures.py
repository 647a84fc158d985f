"""The benchmarks' figures: percentiles of latency samples, one definition for all."""
from __future__ import annotations

import statistics


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted samples (fraction 0.95 for p95)."""
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(samples_ms: list[float], digits: int = 1) -> dict:
    """{"median_ms", "p95_ms", "n"} of latency samples in milliseconds."""
    ordered = sorted(samples_ms)
    return {"median_ms": round(statistics.median(ordered), digits),
            "p95_ms": round(percentile(ordered, 0.95), digits), "n": len(ordered)}
