"""The config's vocabulary, defined once: meter kinds, quantities and units, stream
formats, transport schemes, command points; and, taken from where they are defined, the
GTNET-SKT point types and word budget (the codec) and the weather quantities (the PV
forecaster's feature list).

The rules, the JSON Schema, the command sender and the emulator's closed loop read these
names from here, so a new quantity is added in one place and they all agree on it.
"""

from __future__ import annotations

from gateway.codecs.gtnet_skt import HEADER_WORDS, MAX_WORDS, POINT_TYPES, skt_words
from models.features import PV_FEATURES, PV_UNITS

__all__ = [
    "ACCURACY_FIGURES", "ALLOWED", "ANGLES", "BRANCH_QUANTITIES", "BUS_QUANTITIES",
    "COMMAND_KINDS", "COMMAND_POLICIES", "COMMAND_SEQ", "MAX_RATE_HZ", "MAX_SKT_WORDS",
    "METER_KINDS", "POINT_TYPES", "PV_QUANTITIES", "SKT_HEADER_WORDS", "STREAM_FORMATS",
    "TRANSPORT_SCHEMES", "WEATHER_QUANTITIES", "command_point_plant", "skt_words",
]

METER_KINDS = ("pmu", "scada", "weather", "pv")
#: quantity -> unit of its channels (engineering units, line-to-line kV)
BUS_QUANTITIES = {"vm": "kV", "va": "rad", "pinj": "MW", "qinj": "MVAr"}
BRANCH_QUANTITIES = {"im": "kA", "ia": "rad", "p": "MW", "q": "MVAr"}
#: the PV forecaster's inputs, in the order and units its model card uses
WEATHER_QUANTITIES = dict(zip(PV_FEATURES, PV_UNITS, strict=True))
PV_QUANTITIES = {"ppv": "MW"}
ALLOWED = {
    "pmu": {**BUS_QUANTITIES, **BRANCH_QUANTITIES},
    "scada": {**BUS_QUANTITIES, **BRANCH_QUANTITIES},
    "weather": WEATHER_QUANTITIES,
    "pv": PV_QUANTITIES,
}
ANGLES = {"va", "ia"}
ACCURACY_FIGURES = ("max", "std")

STREAM_FORMATS = ("gtnet-skt", "c37.118")
TRANSPORT_SCHEMES = ("udp", "tcp", "file")
MAX_RATE_HZ = 1000.0

#: GTNET-SKT wire facts are the codec's: point types, the 300-word limit (header words
#: included), VILLASnode's 3 header words, and how a frame's words are counted
SKT_HEADER_WORDS = HEADER_WORDS
MAX_SKT_WORDS = MAX_WORDS


#: the command point carrying the sequence number a decision reacts to
COMMAND_SEQ = "cmd_seq"
#: command point suffixes after a plant name, and what the value is
COMMAND_KINDS = (("_curtail", "curtail"), ("_p_max_mw", "p_max_mw"))
COMMAND_POLICIES = ("volt-watt",)


def command_point_plant(name: str) -> tuple[str, str] | None:
    """(plant, kind) a command point names (``<plant>_curtail``: cap as a fraction of
    rating, ``<plant>_p_max_mw``: cap in MW), else None. Both ends of ``[commands]`` (the
    gateway's sender, the emulator's closed loop) read point names through this."""
    for suffix, kind in COMMAND_KINDS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    return None

#: who estimates a twin that publishes on the bus ([bus] estimate)
BUS_ESTIMATE = ("local", "workers")
