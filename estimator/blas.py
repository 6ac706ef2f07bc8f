"""One BLAS thread for the small dense factorizations.

OpenBLAS parallelises even 100 x 100 eigen-decompositions and inverses; on a loaded
machine the thread hand-offs cost 100x the arithmetic (0.5 ms -> 200 ms measured for a
74 x 74 ``eigh`` on two busy cores). The one-off steps (observability, factorization,
residual sensitivities) run inside :func:`single_threaded`; the per-snapshot matrix-vector
products are left alone (entering the context costs about 60 µs).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_controller: Any = None
_local = threading.local()  # per thread: nesting of single_threaded()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One BLAS thread inside; re-entrant per thread: nested uses (a batch holding the
    limit around the factorizations and re-weightings it triggers) set it only once, as
    entering costs tens of microseconds."""
    global _controller
    depth = getattr(_local, "depth", 0)
    if depth:
        yield
        return
    try:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        ctx = _controller.limit(limits=1, user_api="blas")
    except ImportError:  # threadpoolctl absent: nothing to limit
        yield
        return
    with ctx:
        _local.depth = 1
        try:
            yield
        finally:
            _local.depth = 0
