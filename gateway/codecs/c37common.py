"""IEEE C37.118.2-2011 common-header facts shared by the frame codec and the TCP stream
reassembler (clause 6.2, Table 2): SYNC byte, versions, frame types, header size.

Kept apart so that :mod:`gateway.codecs.stream` (which only needs these to find frame
boundaries) and :mod:`gateway.codecs.c37118` (which re-exports them and the reassembler)
import in one direction, without a cycle.
"""

from __future__ import annotations

SYNC_BYTE = 0xAA
VERSIONS = (1, 2)  # 1 = C37.118-2005, 2 = C37.118.2-2011

# frame types, SYNC bits 6-4 (Table 2)
FRAME_DATA = 0
FRAME_HEADER = 1
FRAME_CFG1 = 2
FRAME_CFG2 = 3
FRAME_CMD = 4
FRAME_CFG3 = 5
FRAME_NAMES = {0: "data", 1: "header", 2: "cfg1", 3: "cfg2", 4: "command", 5: "cfg3"}

HEADER_SIZE = 14  # SYNC..FRACSEC
MIN_FRAME = HEADER_SIZE + 2  # plus CHK
