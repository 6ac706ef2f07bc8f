"""The look-aheads of several quality stages on one event loop as one predictor call."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.config import load_config
from gateway.quality import QualityStage
from gateway.quality.batch import PredictorBatcher
from models.bench import synthetic_snapshots


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    return load_config("ieee33")


def test_rows_of_one_call_are_those_of_separate_calls() -> None:
    """What makes batching exact: a row's output does not depend on its neighbours."""
    from models.runtime import PREDICTOR, load_model

    model = load_model(PREDICTOR)
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((124, 9, 1)).astype(np.float32) for _ in range(5)]
    one = model.bind(124)
    alone = []
    for p in parts:
        one.input[:] = p
        alone.append(one().copy())
    many = model.bind(5 * 124)
    many.input[:] = np.concatenate(parts)
    np.testing.assert_array_equal(many(), np.concatenate(alone))


def test_batched_stages_clean_exactly_as_eager_ones(cfg) -> None:  # type: ignore[no-untyped-def]
    """Three feeders' stages share a loop's batcher: one predictor call per turn for all
    three, and every cleaned value, flag and z is the eager stages' own."""
    n = 3
    x = [synthetic_snapshots(cfg, 60, seed=10 + i, bad_frac=0.05) for i in range(n)]
    zero = np.zeros(x[0].shape[1], np.uint32)
    eager = [QualityStage(cfg) for _ in range(n)]

    async def run() -> tuple[list[list[object]], PredictorBatcher]:
        loop = asyncio.get_running_loop()
        batched = [QualityStage(cfg, batch_loop=loop) for _ in range(n)]
        out: list[list[object]] = [[] for _ in range(n)]
        for k in range(len(x[0])):
            for i, st in enumerate(batched):
                out[i].append(st.process(x[i][k], zero, float(k)))
                st.lookahead()
            await asyncio.sleep(0)  # the next turn: the batch runs
        batcher = batched[0]._batcher
        assert batcher is not None and all(s._batcher is batcher for s in batched)
        return out, batcher

    got, batcher = asyncio.run(run())
    for i in range(n):
        for k in range(len(x[0])):
            want = eager[i].process(x[i][k], zero, float(k))
            eager[i].lookahead()
            r = got[i][k]
            np.testing.assert_array_equal(want.values, r.values)  # type: ignore[attr-defined]
            np.testing.assert_array_equal(want.flags, r.flags)  # type: ignore[attr-defined]
            np.testing.assert_array_equal(want.z, r.z)  # type: ignore[attr-defined]
    assert batcher.calls == len(x[0]) and batcher.rows == n * len(x[0])


def test_a_stage_whose_rows_wait_runs_the_batch_itself(cfg) -> None:  # type: ignore[no-untyped-def]
    """No loop turn between a look-ahead and the next snapshot (a burst): process() runs
    the waiting batch first, for every stage in it, and the numbers stay the eager ones."""
    x = [synthetic_snapshots(cfg, 20, seed=20 + i, bad_frac=0.05) for i in range(2)]
    zero = np.zeros(x[0].shape[1], np.uint32)
    eager = [QualityStage(cfg) for _ in range(2)]

    async def run() -> PredictorBatcher:
        loop = asyncio.get_running_loop()
        a, b = (QualityStage(cfg, batch_loop=loop) for _ in range(2))
        for k in range(len(x[0])):
            for i, st in enumerate((a, b)):
                r = st.process(x[i][k], zero, float(k))
                st.lookahead()
                want = eager[i].process(x[i][k], zero, float(k))
                np.testing.assert_array_equal(want.values, r.values)
                np.testing.assert_array_equal(want.flags, r.flags)
        assert a._batcher is not None
        return a._batcher

    batcher = asyncio.run(run())
    # a's next process() ran the batch holding a and b; b's found its rows done
    assert batcher.calls in (len(x[0]) - 1, len(x[0])) and batcher.rows == 2 * batcher.calls
