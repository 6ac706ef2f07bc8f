"""numpy layouts read off construct declarations, shared by both codecs.

Each wire format is declared once with construct; the hot paths decode with numpy, so the
byte offset and dtype of every fixed-size field come from the declaration itself.
"""

from __future__ import annotations

import struct
from typing import Any

import construct as cs
import numpy as np


def format_dtype(fmtstr: str) -> np.dtype[Any]:
    """numpy dtype of a ``struct`` format with standard sizes (``>L`` is 4 bytes, not 8)."""
    endian, code = fmtstr[0], fmtstr[1:]
    kind = "f" if code in "efd" else ("i" if code.islower() else "u")
    return np.dtype(f"{endian}{kind}{struct.calcsize(fmtstr)}")


def declaration_leaves(decl: cs.Construct) -> list[tuple[tuple[str | int, ...], int,
                                                           np.dtype[Any]]]:
    """(path, byte offset, numpy dtype) of every fixed-size field of a declaration.

    Handles Struct, Array and FormatField (all the codecs' declarations use); this is the
    bridge that keeps the fast decoders and the construct declarations the same thing.
    """
    out: list[tuple[tuple[str | int, ...], int, np.dtype[Any]]] = []

    def walk(c: cs.Construct, path: tuple[str | int, ...], off: int) -> int:
        if isinstance(c, cs.Renamed):
            return walk(c.subcon, (*path, c.name), off)
        if isinstance(c, cs.Struct):
            for sub in c.subcons:
                off = walk(sub, path, off)
            return off
        if isinstance(c, cs.Array):
            for k in range(int(c.count)):
                off = walk(c.subcon, (*path, k), off)
            return off
        if isinstance(c, cs.FormatField):
            dt = format_dtype(c.fmtstr)
            out.append((path, off, dt))
            return off + dt.itemsize
        raise TypeError(f"{path}: {type(c).__name__} has no fixed numpy layout")

    walk(decl, (), 0)
    return out
