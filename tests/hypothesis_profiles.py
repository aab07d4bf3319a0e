"""Hypothesis profiles for the model-based suite (``tests/test_model.py``).

``ci`` (loaded by default from ``tests/conftest.py``): 300 examples on memory, 150 on Redis, 75 on Redis Cluster, each
up to 30 steps; under a minute in all on two cores. ``soak``: ``pytest -m model --hypothesis-profile=soak`` runs about
eight times as many examples, each up to 50 steps (about ten minutes). A profile named on the command line wins over
the default: Hypothesis's pytest plugin loads it after the initial conftest registered these.

``max_examples`` is the count for the memory store; the model suite scales it down for Redis (1/2) and Redis Cluster
(1/4), whose steps cost round trips.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

COMMON = {
    "deadline": None,  # a step may wait for an audit of the store (a fraction of a second); no timing flakes
    "suppress_health_check": [HealthCheck.too_slow],
    "print_blob": True,
}


def register() -> None:
    # CI explores the same examples every run (derandomized: a red CI means a change broke them, not bad luck);
    # the soak explores new ones every run, and what it finds becomes a regression test.
    settings.register_profile("ci", max_examples=300, stateful_step_count=30, derandomize=True, **COMMON)  # type: ignore[arg-type]
    settings.register_profile("soak", max_examples=2500, stateful_step_count=50, derandomize=False, **COMMON)  # type: ignore[arg-type]
    settings.load_profile("ci")
