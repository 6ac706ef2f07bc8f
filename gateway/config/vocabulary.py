"""The config's vocabulary, defined once: meter kinds, quantities and units, stream
formats, point types and the GTNET-SKT word budget, transport schemes, command points.

Everything that reads or writes one of these names imports it from here (the codecs, the
command sender, the emulator's closed loop), so a new quantity or point type is added in
one place and the checker, the codec and the JSON Schema agree on it.
"""

from __future__ import annotations

from models.features import PV_FEATURES, PV_UNITS

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

#: GTNET-SKT words: every point is one big-endian 32-bit word of one of these types
POINT_TYPES = ("int32", "float32")
#: the RSCAD GTNET-SKT component's limit, header words included
MAX_SKT_WORDS = 300
#: VILLASnode's fake header: sequence, timestamp seconds, timestamp nanoseconds
SKT_HEADER_WORDS = 3


def skt_words(n_points: int, header: bool) -> int:
    """Words in one GTNET-SKT frame: the points plus the header's, as the codec counts."""
    return n_points + (SKT_HEADER_WORDS if header else 0)


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
