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
