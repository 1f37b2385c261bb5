"""Power-law fit error = c·d1^(−ρ) with a seed-bootstrap interval (numpy only).

The generalised-LeNet scaling of arXiv 2211.11106 (METHODS.md §9): log(error) = a − ρ·log(d1)
by least squares, over every run (`runs`) or over the log of each d1's mean error (`means`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from snptool.errors import DataError, UsageError

FITS = ("runs", "means")


@dataclass(frozen=True)
class PowerLawFit:
    """ρ and c of error ≈ c·d1^(−ρ); `rho_ci` is None without bootstrap resamples."""

    rho: float
    prefactor: float
    r2: float
    rho_ci: tuple[float, float] | None
    method: str
    points: int
    bootstrap: int
    confidence: float
    bootstrap_seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "rho": self.rho,
            "rho_ci": list(self.rho_ci) if self.rho_ci is not None else None,
            "prefactor": self.prefactor,
            "intercept": float(np.log(self.prefactor)),
            "r2": self.r2,
            "method": self.method,
            "points": self.points,
            "bootstrap": self.bootstrap,
            "confidence": self.confidence,
            "bootstrap_seed": self.bootstrap_seed,
        }


def fit_power_law(
    d1: np.ndarray,
    errors: np.ndarray,
    seeds: np.ndarray,
    *,
    method: str = "runs",
    bootstrap: int = 1000,
    confidence: float = 0.95,
    bootstrap_seed: int = 0,
) -> PowerLawFit:
    """Fit log(error) = a − ρ·log(d1); bootstrap ρ by resampling the seeds within each d1.

    Args:
        d1, errors, seeds: one entry per run; (d1, seed) pairs must be unique, errors in (0, 1].
        bootstrap: resamples B (0: no interval); each draws, for every d1, as many runs as it
            has, with replacement, and refits. The interval is the B fits' percentiles at
            (1 ∓ confidence) / 2.
    """
    d1, errors, seeds = (np.asarray(v).ravel() for v in (d1, errors, seeds))
    groups = _check_points(d1, errors, seeds, method, bootstrap)
    log_d1, log_error = _fit_inputs(d1, np.log(errors), groups, method)
    slope, intercept = _least_squares(log_d1, log_error[None])
    r2 = _r_squared(log_d1, log_error, slope[0], intercept[0])
    interval = None
    if bootstrap:
        rng = np.random.default_rng(bootstrap_seed)
        resampled = _resample_log_errors(np.log(errors), groups, method, bootstrap, rng)
        boot_slopes, _ = _least_squares(log_d1, resampled)
        tails = np.quantile(-boot_slopes, [(1 - confidence) / 2, (1 + confidence) / 2])
        interval = (float(tails[0]), float(tails[1]))
    return PowerLawFit(
        rho=float(-slope[0]),
        prefactor=float(np.exp(intercept[0])),
        r2=r2,
        rho_ci=interval,
        method=method,
        points=int(len(log_d1)),
        bootstrap=int(bootstrap),
        confidence=float(confidence),
        bootstrap_seed=int(bootstrap_seed),
    )


def _check_points(d1, errors, seeds, method: str, bootstrap: int) -> list[np.ndarray]:
    """Validate the runs; return the run indices of each distinct d1, in increasing d1."""
    if method not in FITS:
        raise UsageError(f"unknown fit {method!r}; use one of {', '.join(FITS)}.")
    if not len(d1) == len(errors) == len(seeds):
        raise UsageError("d1, errors and seeds need one entry per run each.")
    if len({(float(a), int(s)) for a, s in zip(d1, seeds, strict=True)}) != len(d1):
        raise UsageError("every (d1, seed) pair may appear only once.")
    if np.any(d1 <= 0):
        raise UsageError("d1 values must be positive.")
    bad = np.flatnonzero(~((errors > 0) & (errors <= 1)))
    if len(bad):
        i = bad[0]
        raise DataError(
            f"the run d1={d1[i]:g}, seed {seeds[i]} has error {errors[i]:g}; a log-log fit needs "
            "errors in (0, 1] (an error of 0 means the data set is too easy for the fit)."
        )
    values = np.unique(d1)
    if len(values) < 2:
        raise UsageError("a power law needs runs at 2 or more distinct d1 values.")
    groups = [np.flatnonzero(d1 == v) for v in values]
    if bootstrap and min(len(g) for g in groups) < 2:
        raise UsageError("a bootstrap interval needs at least 2 seeds at every d1.")
    return groups


def _fit_inputs(d1, log_errors, groups, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the fit: every run grouped by d1, or one point per d1 (log of its mean error)."""
    if method == "runs":
        order = np.concatenate(groups)
        return np.log(d1[order].astype(float)), log_errors[order]
    x = np.log([float(d1[g[0]]) for g in groups])
    return x, np.log([np.exp(log_errors[g]).mean() for g in groups])


def _resample_log_errors(log_errors, groups, method: str, count: int, rng) -> np.ndarray:
    """(B, points) fit targets of `count` resamples of the runs within each d1."""
    columns = []
    for g in groups:
        draws = log_errors[g][rng.integers(0, len(g), size=(count, len(g)))]  # (B, runs at d1)
        if method == "means":
            draws = np.log(np.exp(draws).mean(axis=1, keepdims=True))  # (B, 1)
        columns.append(draws)
    return np.concatenate(columns, axis=1)  # same point order as _fit_inputs


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of y[b] ≈ intercept[b] + slope[b]·x for each row b of y (B, N)."""
    centred = x - x.mean()
    slope = (y - y.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
    return slope, y.mean(axis=1) - slope * x.mean()


def _r_squared(x, y, slope: float, intercept: float) -> float:
    """1 − SS_res / SS_tot of the fit in log-log space (NaN when every y is equal)."""
    residual = np.sum((y - intercept - slope * x) ** 2)
    total = np.sum((y - y.mean()) ** 2)
    return float(1 - residual / total) if total > 0 else float("nan")


__all__ = ["fit_power_law", "PowerLawFit", "FITS"]
