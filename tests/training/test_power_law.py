"""The power-law fit of the generalised-LeNet sweep, on synthetic points."""

from __future__ import annotations

import numpy as np
import pytest

from snptool.errors import DataError, UsageError
from snptool.training.power_law import fit_power_law


def grid(d1_values=(2, 4, 8, 16, 32), seeds=5) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(d1_values, seeds), np.tile(np.arange(seeds), len(d1_values))


@pytest.mark.parametrize("method", ["runs", "means"])
def test_fit_recovers_a_known_exponent_from_noisy_points(method):
    d1, seeds = grid()
    noise = np.exp(np.random.default_rng(0).normal(0.0, 0.05, d1.shape))
    errors = 0.8 * d1**-0.35 * noise
    fit = fit_power_law(d1, errors, seeds, method=method, bootstrap=500, bootstrap_seed=1)
    assert abs(fit.rho - 0.35) < 0.03
    assert fit.rho_ci[0] < 0.35 < fit.rho_ci[1]
    assert fit.rho_ci[1] - fit.rho_ci[0] < 0.1
    assert fit.prefactor == pytest.approx(0.8, rel=0.1)
    assert 0.9 < fit.r2 < 1.0
    assert fit.points == (25 if method == "runs" else 5)


@pytest.mark.parametrize("method", ["runs", "means"])
def test_fit_is_exact_on_noise_free_points(method):
    d1, seeds = grid((3, 6, 12, 24), seeds=3)
    fit = fit_power_law(d1, 0.9 * d1**-0.5, seeds, method=method, bootstrap=50)
    assert fit.rho == pytest.approx(0.5, abs=1e-12)
    assert fit.prefactor == pytest.approx(0.9, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.rho_ci == pytest.approx((0.5, 0.5), abs=1e-12)


def test_fit_methods_differ_as_documented():
    """`means` fits log(mean error); `runs` every run (its slope is that of the mean log)."""
    d1, seeds = grid((2, 4, 8), seeds=2)
    errors = np.array([0.9, 0.5, 0.6, 0.6, 0.3, 0.5])
    runs = fit_power_law(d1, errors, seeds, method="runs", bootstrap=0)
    means = fit_power_law(d1, errors, seeds, method="means", bootstrap=0)
    mean_log = np.log(errors).reshape(3, 2).mean(1)
    log_mean = np.log(errors.reshape(3, 2).mean(1))
    x = np.log([2, 4, 8])
    assert runs.rho == pytest.approx(-np.polyfit(x, mean_log, 1)[0], abs=1e-12)
    assert means.rho == pytest.approx(-np.polyfit(x, log_mean, 1)[0], abs=1e-12)
    assert runs.rho_ci is None and means.rho != pytest.approx(runs.rho)


def test_bootstrap_is_seeded_and_resamples_within_each_d1():
    d1, seeds = grid((2, 4, 8, 16), seeds=3)
    errors = 0.7 * d1**-0.3 * np.exp(np.random.default_rng(3).normal(0, 0.1, d1.shape))
    first = fit_power_law(d1, errors, seeds, bootstrap=300, bootstrap_seed=5)
    again = fit_power_law(d1, errors, seeds, bootstrap=300, bootstrap_seed=5)
    other = fit_power_law(d1, errors, seeds, bootstrap=300, bootstrap_seed=6)
    assert first.rho_ci == again.rho_ci and first.rho_ci != other.rho_ci
    wider = fit_power_law(d1, errors, seeds, bootstrap=300, bootstrap_seed=5, confidence=0.99)
    assert wider.rho_ci[0] <= first.rho_ci[0] and wider.rho_ci[1] >= first.rho_ci[1]


def test_fit_refuses_points_it_cannot_fit():
    d1, seeds = grid((2, 4), seeds=2)
    with pytest.raises(DataError, match="error 0"):
        fit_power_law(d1, np.array([0.5, 0.4, 0.3, 0.0]), seeds)
    with pytest.raises(UsageError, match="2 or more distinct d1"):
        fit_power_law(np.array([4, 4]), np.array([0.5, 0.4]), np.array([0, 1]))
    with pytest.raises(UsageError, match="at least 2 seeds at every d1"):
        fit_power_law(np.array([2, 4]), np.array([0.5, 0.4]), np.array([0, 0]))
    with pytest.raises(UsageError, match="only once"):
        fit_power_law(np.array([2, 2, 4]), np.array([0.5, 0.5, 0.4]), np.array([0, 0, 1]))
