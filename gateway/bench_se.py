"""State-estimation benchmarks (``gridtwin bench --only se.``), medians.

* ``se.ieee33.single`` (µs/snapshot): the linear SE on the bundled ieee33 twin config,
  warm start, a new noisy snapshot per call; peer: power-grid-model ``iterative_linear``,
  one ``update`` + ``calculate_state_estimation`` call per snapshot on a model built once
  (sensor update buffers prepared outside the timing, as our per-unit vectors are). The
  two are timed in alternating blocks (medians of the per-call times), so a shared
  machine's load swings reach both.
* ``se.ieee33.single_vs_pandapower`` (µs): the same against pandapower's WLS
  (``estimate``; measurement table rebuilt per snapshot, as the API requires).
* ``se.ieee33.batch`` (µs/snapshot): a sequence of snapshots (a load and PV ramp) in one
  ``solve_batch`` call (vectorised across snapshots: one multi-right-hand-side product
  per iteration for every snapshot sharing a gain) of an estimator warmed on the first
  snapshot, as power-grid-model's model is built before its timed call; the ramp (load
  x2, PV x5 over 500 snapshots) re-weights the gain about 20 times, inside the timing;
  peer: power-grid-model batch state estimation over the same sequence; medians of 5
  alternating runs of each (3 with ``--quick``).
* ``se.ieee33.bad_data`` (µs/snapshot): a snapshot with one gross error (20-40 sigma on
  a random measurement) through the estimator worker's path: a solve, then the
  largest-normalized-residual search (``solve_clean``) warm-started from it, which
  removes the error and re-estimates; a new snapshot and error every call, the search's
  per-set caches (residual sensitivities, observability) emptied before each but for
  the full set's (kept, as on the live path), so every call pays for the trial sets as
  seen for the first time. Peer: the same snapshot
  without its gross error, one solve. ``se.ieee33.bad_data_3``: the same with three
  gross errors.
* ``se.feeder1k.single``, ``se.feeder10k.single`` (ms): synthetic radial feeders, PMUs
  every 50 buses, P/Q on every branch, one zero-injection junction in ten; peer:
  power-grid-model ``iterative_linear`` single call. No normalized residuals at 10k buses.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from gateway.bench import BenchResult, median, time_call_us

PV = np.array([0.05, 0.08, 0.03, 0.07])


def _ieee33_model() -> Any:
    from gateway.config import load_config
    from gateway.se_model import measurement_model

    return measurement_model(load_config("ieee33"))


def _snapshots(model: Any, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` noisy measurement vectors along a load/PV ramp, and their true voltages."""
    from estimator import pgm

    net = model.net
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.6, 1.2, k)[:, None]
    p = net.p_gen - scale * net.p_load
    q = net.q_gen - scale * net.q_load
    if model.pv_nodes.size:
        p[:, model.pv_nodes] = np.linspace(0.2, 1.0, k)[:, None] * PV[: model.pv_nodes.size]
    v = pgm.power_flow(net, p, q, tolerance=1e-12, max_iterations=50)
    z = np.array([model.h(vv) for vv in v])
    z += rng.standard_normal(z.shape) * np.array([model.sigma(zz) for zz in z])
    return z, v


class _PgmRunner:
    """power-grid-model SE with update buffers prepared ahead of the timed calls."""

    def __init__(self, model: Any, zs: np.ndarray, method: str = "iterative_linear") -> None:
        from power_grid_model import ComponentType, PowerGridModel

        from estimator.baselines import PgmEstimator

        self.est = PgmEstimator(model, method=method, tolerance=1e-7, max_iterations=50)
        act = np.ones(model.m, bool)
        lay = self.est._layout(act)
        self.est._fill(lay, zs[0])
        self.est._copy_into_input(lay)
        data = dict(lay["input"])
        data[ComponentType.sym_voltage_sensor] = lay["vs_in"]
        data[ComponentType.sym_power_sensor] = lay["ps_in"]
        if lay["cs"].size:
            data[ComponentType.sym_current_sensor] = lay["cs_in"]
        self.model = PowerGridModel(data)
        self.updates = []
        for z in zs:
            self.est._fill(lay, z)
            upd = {ComponentType.sym_voltage_sensor: lay["vs"].copy(),
                   ComponentType.sym_power_sensor: lay["ps"].copy()}
            if lay["cs"].size:
                upd[ComponentType.sym_current_sensor] = lay["cs"].copy()
            self.updates.append(upd)
        self.method = method
        self.out: dict[Any, Any] = {ComponentType.node: ["u_pu", "u_angle"]}
        self.k = 0

    def single(self) -> Any:
        from power_grid_model import CalculationMethod

        upd = self.updates[self.k % len(self.updates)]
        self.k += 1
        self.model.update(update_data=upd)
        return self.model.calculate_state_estimation(
            calculation_method=CalculationMethod[self.method], error_tolerance=1e-7,
            max_iterations=50, output_component_types=self.out)

    def batch(self) -> Any:
        from power_grid_model import CalculationMethod

        batch: dict[Any, np.ndarray] = {}
        for comp in self.updates[0]:
            batch[comp] = np.stack([u[comp] for u in self.updates])
        return self.model.calculate_state_estimation(
            update_data=batch, calculation_method=CalculationMethod[self.method],
            error_tolerance=1e-7, max_iterations=50, output_component_types=self.out,
            threading=-1)


def _cycle(est: Any, zs: np.ndarray) -> Any:
    state = {"k": 0}

    def call() -> Any:
        z = zs[state["k"] % len(zs)]
        state["k"] += 1
        return est.solve(z)

    return call


def _interleaved(ours: Any, theirs: Any, *, repeat: int, blocks: int) -> tuple[float, float]:
    """Medians (µs) of per-call times of ``ours`` and ``theirs`` taken in alternating
    blocks (``theirs`` a quarter as many calls), so that both see the same load of a
    shared machine."""
    a: list[float] = []
    b: list[float] = []
    for k in range(blocks):
        warm = 10 if k == 0 else 0
        a += time_call_us(ours, repeat=max(1, repeat // blocks), warmup=warm)
        b += time_call_us(theirs, repeat=max(1, repeat // (4 * blocks)), warmup=warm)
    return median(a), median(b)


def _batch_pair(model: Any, zs: np.ndarray, peer: _PgmRunner, rounds: int
                ) -> tuple[float, float]:
    """Medians over ``rounds`` alternating runs of the per-snapshot wall time (µs) of our
    whole-sequence ``solve_batch`` (a fresh estimator warmed on the first snapshot, as
    power-grid-model's model is built before its timed call; warm start forgotten; the
    re-weightings along the ramp inside the timing) and of power-grid-model's batch."""
    from estimator.linear import LinearStateEstimator

    ours, theirs = [], []
    for _ in range(rounds):
        lin_b = LinearStateEstimator(model, tolerance=1e-7, max_iterations=30)
        lin_b.solve(zs[0])
        lin_b.reset()
        t0 = time.perf_counter()
        lin_b.solve_batch(zs)
        ours.append((time.perf_counter() - t0) / len(zs) * 1e6)
        t0 = time.perf_counter()
        peer.batch()
        theirs.append((time.perf_counter() - t0) / len(zs) * 1e6)
    return median(ours), median(theirs)


def _ieee33(quick: bool) -> list[BenchResult]:
    from estimator.linear import LinearStateEstimator

    model = _ieee33_model()
    k = 100 if quick else 500
    zs, _ = _snapshots(model, k)
    lin = LinearStateEstimator(model, tolerance=1e-7, max_iterations=30)
    lin.solve(zs[0])
    peer = _PgmRunner(model, zs)
    repeat = 300 if quick else 2000
    ours, theirs = _interleaved(_cycle(lin, zs), peer.single, repeat=repeat,
                                blocks=5 if quick else 10)
    out = [BenchResult("se.ieee33.single", ours, "us",
                       "power-grid-model iterative_linear single call", theirs)]
    try:
        import warnings

        from estimator.baselines import PandapowerEstimator

        pp_est = PandapowerEstimator(model, tolerance=1e-7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp_t = median(time_call_us(_cycle(pp_est, zs), repeat=5 if quick else 20,
                                       warmup=1))
        ours_pp = median(time_call_us(_cycle(lin, zs), repeat=repeat))
        out.append(BenchResult("se.ieee33.single_vs_pandapower", ours_pp, "us",
                               "pandapower WLS estimate", pp_t))
    except ImportError:
        out.append(BenchResult("se.ieee33.single_vs_pandapower", ours, "us", None, None))
    ours_b, theirs_b = _batch_pair(model, zs, peer, 3 if quick else 5)
    out.append(BenchResult("se.ieee33.batch", ours_b, "us",
                           "power-grid-model batch state estimation", theirs_b))
    return out


def _gross(model: Any, zs: np.ndarray, n_err: int, seed: int) -> np.ndarray:
    """``zs`` with ``n_err`` gross errors (20-40 sigma, random sign) per snapshot."""
    rng = np.random.default_rng(seed)
    out = zs.copy()
    for z in out:
        cols = rng.choice(model.m, n_err, replace=False)
        z[cols] += (rng.choice([-1.0, 1.0], n_err) * rng.uniform(20, 40, n_err)
                    * model.sigma(z)[cols])
    return out


def bad_data(quick: bool) -> list[BenchResult]:
    """``se.ieee33.bad_data`` and ``…_3`` (module docstring): medians of per-snapshot
    times, the clean solve (peer) and the worker's path timed snapshot by snapshot."""
    from estimator.errors import EstimatorError
    from estimator.linear import LinearStateEstimator

    model = _ieee33_model()
    k = 60 if quick else 200
    zs, _ = _snapshots(model, k, seed=4)
    out = []
    for n_err, name in ((1, "se.ieee33.bad_data"), (3, "se.ieee33.bad_data_3")):
        bad = _gross(model, zs, n_err, seed=10 + n_err)
        est = LinearStateEstimator(model, tolerance=1e-7, max_iterations=30)
        est.solve_clean(bad[0], warm_start=est.solve(bad[0]).v)  # imports, kernels
        ours, clean = [], []
        full = np.ones(model.m, bool).tobytes()
        for z, zb in zip(zs, bad, strict=True):
            for cache in (est._sens, est._obs_ok):  # first sight of every trial set
                for key in [key for key in cache if key != full]:
                    del cache[key]
            t0 = time.perf_counter()
            est.solve(z)
            t1 = time.perf_counter()
            try:
                est.solve_clean(zb, warm_start=est.solve(zb).v)
            except EstimatorError:  # an unobservable or stalled case: not timed
                continue
            t2 = time.perf_counter()
            clean.append((t1 - t0) * 1e6)
            ours.append((t2 - t1) * 1e6)
        out.append(BenchResult(name, median(ours), "us",
                               "the same snapshot without its gross errors, one solve",
                               median(clean)))
    return out


def _feeder(n: int, quick: bool) -> BenchResult:
    from estimator.linear import LinearStateEstimator
    from estimator.measurement import MeasurementModel
    from estimator.synthetic import paper_specs, radial_feeder, truth

    net = radial_feeder(n, seed=1)
    pmus = [int(net.bus_ids[i]) for i in range(0, n, 50)]
    model = MeasurementModel(net, paper_specs(net, pmus=pmus, injections=(), plants=()))
    _, z = truth(model)
    rng = np.random.default_rng(3)
    zs = np.array([z + rng.standard_normal(z.size) * model.sigma(z) for _ in range(8)])
    lin = LinearStateEstimator(model, tolerance=1e-7, max_iterations=30)
    lin.solve(zs[0])
    repeat = 5 if quick else 30
    ours = median(time_call_us(_cycle(lin, zs), repeat=repeat, warmup=3)) / 1e3
    peer = _PgmRunner(model, zs)
    theirs = median(time_call_us(peer.single, repeat=max(3, repeat // 3), warmup=1)) / 1e3
    return BenchResult(f"se.feeder{n // 1000}k.single", ours, "ms",
                       "power-grid-model iterative_linear single call", theirs)


def benchmarks(quick: bool) -> list[BenchResult]:
    out = _ieee33(quick)
    out += bad_data(quick)
    out.append(_feeder(1000, quick))
    out.append(_feeder(10000, quick))
    return out
