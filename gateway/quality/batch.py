"""One predictor call per event-loop turn for the quality stages that share a loop.

The measurement predictor (ONNX Runtime, :mod:`models.runtime`) costs a fixed part per
call on top of its part per row, and that fixed part grows when the call comes between
other work (its code and tables are out of the CPU's caches by then): measured on the
fleet's 2-core machine, 124 rows (one IEEE33 feeder) took ~110 µs per call in a tight
loop, ~180 µs between other work, while 6 feeders' rows in one call took ~125 µs per
feeder. The edges of one fleet-demo process all receive their frames in the same
event-loop turn (:mod:`gateway.cli_fleet_edges`), so their look-aheads come together.

:class:`PredictorBatcher` collects the look-aheads of the stages that use it (each
stage's prepared windows, :meth:`QualityStage.lookahead`) and runs them as ONE call on
the next turn of the loop (``call_soon``): after every stage of this turn has queued
its rows, long before any of them cleans its next snapshot. A stage that has to clean
its next snapshot while its rows still wait runs the batch itself first
(:meth:`run`). The rows are the same and each row's output does not depend on the other
rows of the call (checked bit for bit in the tests), so the numbers are the eager
order's.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from models.runtime import BoundModel, OnnxModel


class Batched(Protocol):
    """A stage whose prepared windows wait in a batch (``QualityStage``)."""

    @property
    def predictor_rows(self) -> np.ndarray: ...

    def take_batched(self, yn: np.ndarray | None) -> None: ...


class PredictorBatcher:
    """The look-aheads of the stages on one event loop, one predictor call per turn."""

    _per_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                  dict[str, PredictorBatcher]]] = (
        weakref.WeakKeyDictionary())

    def __init__(self, model: OnnxModel, loop: asyncio.AbstractEventLoop) -> None:
        self.model = model
        self.loop = loop
        self._queued: list[Batched] = []
        self._scheduled = False
        #: bound models by total rows (the number of stages waiting varies a little)
        self._bound: dict[int, BoundModel] = {}
        self.calls = 0  # predictor calls made
        self.rows = 0  # stage look-aheads they carried

    @classmethod
    def for_loop(cls, model: OnnxModel, loop: asyncio.AbstractEventLoop) -> PredictorBatcher:
        """The batcher of ``loop`` for the model file of ``model`` (made on first use)."""
        per = cls._per_loop.setdefault(loop, {})
        key = str(model.path)
        if key not in per:
            per[key] = cls(model, loop)
        return per[key]

    def submit(self, stage: Batched) -> None:
        """Queue ``stage``'s prepared windows; the batch runs on the loop's next turn."""
        self._queued.append(stage)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        """Run what is queued as one call and hand each stage its rows of the output. A
        failing call hands every stage None (each then predicts for itself) and raises."""
        self._scheduled = False
        queued, self._queued = self._queued, []
        if not queued:
            return
        sizes = [s.predictor_rows.shape[0] for s in queued]
        total = sum(sizes)
        try:
            bound = self._bound.get(total)
            if bound is None:
                bound = self._bound[total] = self.model.bind(total)
            inp = bound.input
            off = 0
            for s, n in zip(queued, sizes, strict=True):
                inp[off:off + n] = s.predictor_rows
                off += n
            out = bound()
        except BaseException:
            for s in queued:
                s.take_batched(None)
            raise
        self.calls += 1
        self.rows += len(queued)
        off = 0
        for s, n in zip(queued, sizes, strict=True):
            s.take_batched(out[off:off + n])
            off += n
