"""
Settings for the whole suite.

Hypothesis's per-example deadline is a timed test: on a loaded machine (CI
runs the suite in parallel on two cores) it fails properties that hold.
Speed is measured by the benchmarks, never by tests, so no test has one;
nor the health check that calls generation "too slow".
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "gateway", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("gateway")
