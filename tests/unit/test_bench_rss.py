"""The RSS run's verdict ("flat or growing") is a least-squares slope: check it on known shapes."""

from __future__ import annotations

import os

import pytest

from attribution.devkit.bench_rss import rss_bytes, slope_per_minute

MIB = 1024 * 1024


def test_slope_of_a_steady_leak_is_its_rate() -> None:
    samples = [(t, 100 * MIB + int(t * MIB / 60)) for t in range(0, 600, 5)]  # 1 MiB per minute
    assert slope_per_minute(samples) / MIB == pytest.approx(1.0, rel=1e-3)


def test_a_plateau_with_noise_is_flat() -> None:
    samples = [(t, 100 * MIB + (MIB if i % 2 else -MIB)) for i, t in enumerate(range(0, 600, 5))]
    assert abs(slope_per_minute(samples)) / MIB < 0.02
    assert slope_per_minute(samples[:1]) == 0.0
    assert slope_per_minute([(1.0, 5), (1.0, 9)]) == 0.0


def test_rss_of_this_process_is_plausible() -> None:
    assert 5 * MIB < rss_bytes(os.getpid()) < 4096 * MIB
