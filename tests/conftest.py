"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil.natsserver import NatsServer


@pytest.fixture()
def nats() -> Iterator[NatsServer]:
    """A real ``nats-server -js`` on a free loopback port with a temporary store."""
    with NatsServer() as srv:
        yield srv


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile (or load) the linear SE's and the quality stage's numba kernels once,
    before any test runs.

    Why: on a fresh checkout the first use compiles them (seconds of CPU); a test that
    starts an estimator process with a READY deadline, or a live twin, would otherwise
    pay that inside its own run. Cached afterwards, this costs a fraction of a second.
    """
    from estimator.warm import warm
    from gateway.quality.detector import compiled_kernels

    warm()
    kernels = compiled_kernels()
    if kernels is not None:
        kernels.warm()
