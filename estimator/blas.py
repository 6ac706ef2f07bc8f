"""One BLAS thread for the small dense factorizations.

OpenBLAS parallelises even 100 x 100 eigen-decompositions and inverses; on a loaded
machine the thread hand-offs cost 100x the arithmetic (0.5 ms -> 200 ms measured for a
74 x 74 ``eigh`` on two busy cores). The one-off steps (observability, factorization,
residual sensitivities) run inside :func:`single_threaded`; the per-snapshot matrix-vector
products are left alone (entering the context costs about 60 µs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_controller: Any = None


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    global _controller
    try:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        ctx = _controller.limit(limits=1, user_api="blas")
    except ImportError:  # threadpoolctl absent: nothing to limit
        yield
        return
    with ctx:
        yield
