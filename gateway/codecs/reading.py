"""One value reported by an edge sensor: what the MQTT payload codecs hand out.

Sensors report at their own pace, so unlike a stream frame a reading carries its own
timestamp and names its device and metric instead of a position in a point list; the
sensor board (:mod:`gateway.sensors`) maps ``(device, name)`` onto a snapshot channel.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reading:
    """``value`` of metric ``name`` of ``device`` at ``time`` (UNIX seconds, the
    device's clock). ``value`` is a float for numbers and booleans (1.0/0.0), a string
    for text metrics (firmware, model), ``None`` for a metric reported as null."""

    device: str
    name: str
    value: float | str | None
    time: float
    unit: str | None = None

    @property
    def numeric(self) -> bool:
        return isinstance(self.value, float)
