"""Wire formats, sans-IO: bytes and ``now`` in, typed frames out.

* :mod:`gateway.codecs.gtnet_skt` — RTDS GTNET-SKT point lists (optionally with the
  VILLASnode "fake" header).
* :mod:`gateway.codecs.c37118` — IEEE C37.118.2-2011 frames and the TCP stream reassembler.

Nothing here imports asyncio or sockets; transports hand bytes in and take bytes out.
"""

from __future__ import annotations
