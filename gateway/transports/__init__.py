"""Transports chosen by URL scheme: see :mod:`gateway.transports.base`."""

from __future__ import annotations

from gateway.transports.base import (
    Allowlist,
    Transport,
    TransportSpec,
    open_transport,
    register,
    transport_class,
)

__all__ = ["Allowlist", "Transport", "TransportSpec", "open_transport", "register",
           "transport_class"]
