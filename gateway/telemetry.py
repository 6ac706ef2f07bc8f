"""The twin's telemetry: batched metrics, latency rings and the run summary.

The pipeline's hot path must not pay for Prometheus: a ``Histogram.observe`` or a labelled
``Counter.inc`` per frame or snapshot costs more than the work it measures. So
:class:`Telemetry` keeps plain Python lists, integers and one numpy array of flag-word
counts while the pipeline runs, and :meth:`Telemetry.flush` moves them into the registry
(:class:`~gateway.metrics.Metrics`) every :data:`METRICS_FLUSH_S` (the runner's timer) and
before every scrape (``Metrics.before_scrape``). The same object keeps the latency rings
the summary's percentiles come from, and builds :meth:`summary` and
:meth:`stream_summary` (``/summary``, ``/streams``, what ``gridtwin run`` prints at exit).

It reads no clock and owns no socket: the pipeline records into it, the runner flushes
it; the registry's per-stream collector reads the runner's clock at scrape time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.metrics import FLAG_NAMES, Metrics, observe_many

if TYPE_CHECKING:
    from gateway.aligner import AlignerStats
    from gateway.config import TwinConfig
    from gateway.handoff import StateMsg
    from gateway.stats import StreamStats

N_FLAG_BITS = 11  # every gateway.snapshot.Flag bit
FLAG_WORDS = 1 << N_FLAG_BITS  # flag words counted per meter kind (bits above: ignored)
LATENCY_SAMPLES = 200_000
METRICS_FLUSH_S = 1.0  # batched metrics reach the registry at least this often
#: BIT_OF_WORD[w, b] = 1 when flag word w has bit b (flag-word counts -> per-bit counts)
BIT_OF_WORD = ((np.arange(FLAG_WORDS)[:, None] >> np.arange(N_FLAG_BITS)) & 1).astype(
    np.int64)
SKIP_REASONS = ("superseded", "stale", "no_estimator")
#: snapshots' flag words buffered before one bincount counts them all (a bincount per
#: snapshot costs more than the rest of its telemetry)
FLAG_BATCH = 64


class Telemetry:
    """Counts and latency samples of one gateway run, flushed into its registry in batches.

    ``stats`` (per-stream statistics) and ``aligner`` (the aligner's counters) are bound
    later by :meth:`watch`, when the pipeline that owns them is built; ``supervisor``
    (an object with ``superseded``/``stale``/``no_estimator`` counts) is set by the runner
    once the estimator runs.
    """

    def __init__(self, cfg: TwinConfig, *, clock: Callable[[], float],
                 version: str = "0") -> None:
        kinds: dict[str, int] = {}
        for c in cfg.channels:
            kinds[c.kind] = kinds.get(c.kind, 0) + 1
        self.kind_names = list(kinds)
        kind_code = np.array([self.kind_names.index(c.kind) for c in cfg.channels], np.intp)
        #: flag words counted per (kind, word): index kind * FLAG_WORDS + (flags & 511)
        self.kind_base = (kind_code * FLAG_WORDS).astype(np.intp)
        self.flag_words = np.zeros(len(self.kind_names) * FLAG_WORDS, np.int64)
        self._flag_words_flushed = np.zeros_like(self.flag_words)
        #: flag words of the snapshots not counted yet (one row each), and how many
        self._flag_rows = np.zeros((FLAG_BATCH, len(cfg.channels)), np.uint32)
        self._n_flag_rows = 0
        self.stats: Mapping[str, StreamStats] = {}
        self.aligner: AlignerStats | None = None
        self.supervisor: Any = None
        self.metrics = Metrics(streams=lambda: self.stats.values(), clock=clock,
                               channel_kinds=kinds)
        self.metrics.info.info({"version": version, "config": cfg.name,
                                "digest": cfg.digest[:12]})
        self.metrics.before_scrape.append(self.flush)
        names = [s.name for s in cfg.enabled_streams]
        self._decode_h = {n: self.metrics.decode.labels(n) for n in names}
        #: decode-time samples per stream (the pipeline appends one frame in 8)
        self.obs_decode: dict[str, list[float]] = {n: [] for n in names}
        self._obs_quality: list[float] = []
        self._obs_e2e: list[float] = []
        self._obs_handoff: list[float] = []
        self._obs_estimate: list[float] = []
        self._hist_counts: dict[str, int] = {}
        self._hist_children: dict[str, Any] = {}
        self._flushed = {"snapshots": 0, "states": 0, "chi2_failures": 0}
        self._incomplete_seen = 0
        self._skips_seen: dict[str, int] = {}
        self._last_state: StateMsg | None = None
        self.snapshots = 0
        self.states = 0
        self.chi2_failures = 0
        self.bus_ids = [int(b) for b in cfg.network.bus_ids]
        self._bus_vm: list[Any] | None = None
        self.e2e_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.handoff_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.quality_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.lookahead_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.align_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.estimate_s: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def watch(self, stats: Mapping[str, StreamStats], aligner: AlignerStats) -> None:
        """Bind the per-stream statistics and aligner counters read at flush and scrape."""
        self.stats = stats
        self.aligner = aligner

    # ------------------------------------------------------------------ recording
    def snapshot(self, quality_s: float, align_wait_s: float, flags: np.ndarray) -> None:
        """One snapshot cleaned: its quality time, its wait in the aligner, its flags."""
        self.snapshots += 1
        self._obs_quality.append(quality_s)
        self.quality_s.append(quality_s)
        self.align_s.append(align_wait_s)
        # flag words per meter kind are counted in batches (one bincount for FLAG_BATCH
        # snapshots, :meth:`_count_flags`); bits are split at flush time
        n = self._n_flag_rows
        self._flag_rows[n] = flags
        self._n_flag_rows = n = n + 1
        if n == FLAG_BATCH:
            self._count_flags()

    def _count_flags(self) -> None:
        """Add the buffered snapshots' flag words to :attr:`flag_words` (word 0, no flag,
        is not counted)."""
        n = self._n_flag_rows
        if not n:
            return
        self._n_flag_rows = 0
        rows = self._flag_rows[:n]
        if not rows.any():
            return
        idx = self.kind_base + (rows & (FLAG_WORDS - 1))
        counts = np.bincount(idx.ravel(), minlength=self.flag_words.size)
        counts.reshape(len(self.kind_names), FLAG_WORDS)[:, 0] = 0
        self.flag_words += counts

    def state(self, st: StateMsg, e2e_s: float, handoff_s: float) -> None:
        """One estimate back: end-to-end, handoff and solve times, the chi-square test."""
        self.states += 1
        self.e2e_s.append(e2e_s)
        self.handoff_s.append(handoff_s)
        self.estimate_s.append(st.t_solve_s)
        self._obs_e2e.append(e2e_s)
        self._obs_handoff.append(handoff_s)
        self._obs_estimate.append(st.t_solve_s)
        if math.isfinite(st.chi2) and math.isfinite(st.chi2_threshold) and \
                st.chi2 > st.chi2_threshold:
            self.chi2_failures += 1
        self._last_state = st

    def estimator_event(self, kind: str, *, stored: bool) -> bool:
        """Count an estimator event in the metrics; False when it should not be recorded
        (deadline misses beyond the first 100 with a historian: counted, not flooded)."""
        m = self.metrics
        if kind == "estimator_restarted":
            m.restarts.inc()
            m.estimator_up.set(1)
        elif kind == "estimator_crashed":
            m.estimator_up.set(0)
        elif kind == "deadline_missed":
            m.deadline_misses.inc()
            ss = self.supervisor
            if stored and ss is not None and ss.deadline_misses > 100:
                return False
        return True

    def stored(self, kind: str, also: str | None = None) -> None:
        """A record (``also``: and a second one) accepted by the historian writer."""
        hc = self._hist_counts
        hc[kind] = hc.get(kind, 0) + 1
        if also is not None:
            hc[also] = hc.get(also, 0) + 1

    # ------------------------------------------------------------------ flag counts
    def flag_counts_by_bit(self) -> np.ndarray:
        """(n_kinds, N_FLAG_BITS) values flagged so far, per meter kind and flag bit."""
        self._count_flags()
        words = self.flag_words.reshape(len(self.kind_names), FLAG_WORDS)
        return words @ BIT_OF_WORD  # type: ignore[no-any-return]

    @property
    def flag_counts(self) -> np.ndarray:
        """Values flagged so far per flag bit (every meter kind)."""
        return self.flag_counts_by_bit().sum(axis=0)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ flushing
    def flush(self) -> None:
        """Move the batched counts and latency samples into the Prometheus registry."""
        m = self.metrics
        for name, buf in self.obs_decode.items():
            if buf:
                observe_many(self._decode_h[name], buf)
                buf.clear()
        for hist, buf in ((m.quality, self._obs_quality), (m.e2e, self._obs_e2e),
                          (m.handoff, self._obs_handoff), (m.estimate, self._obs_estimate)):
            if buf:
                observe_many(hist, buf)
                buf.clear()
        f = self._flushed
        for key, counter, now_n in (("snapshots", m.snapshots, self.snapshots),
                                    ("states", m.states, self.states),
                                    ("chi2_failures", m.chi2_failures, self.chi2_failures)):
            if now_n != f[key]:
                counter.inc(now_n - f[key])
                f[key] = now_n
        inc = self.aligner.incomplete if self.aligner is not None else 0
        if inc != self._incomplete_seen:
            m.incomplete.inc(inc - self._incomplete_seen)
            self._incomplete_seen = inc
        self._flush_historian()
        self._flush_flags()
        self._flush_skips()
        self._flush_state()

    def _flush_historian(self) -> None:
        for kind, n in self._hist_counts.items():
            if n:
                child = self._hist_children.get(kind)
                if child is None:
                    child = self._hist_children[kind] = self.metrics.historian.labels(kind)
                child.inc(n)
        self._hist_counts.clear()

    def _flush_flags(self) -> None:
        self._count_flags()
        if np.array_equal(self.flag_words, self._flag_words_flushed):
            return
        delta = self.flag_words - self._flag_words_flushed
        per = delta.reshape(len(self.kind_names), FLAG_WORDS) @ BIT_OF_WORD
        for k, b in zip(*np.nonzero(per), strict=True):
            self.metrics.flag_child(int(k), int(b)).inc(int(per[k, b]))
        self._flag_words_flushed[:] = self.flag_words

    def _flush_skips(self) -> None:
        ss = self.supervisor
        if ss is None:
            return
        for reason in SKIP_REASONS:
            n = getattr(ss, reason)
            seen = self._skips_seen.get(reason, 0)
            if n != seen:
                self.metrics.skipped.labels(reason).inc(n - seen)
                self._skips_seen[reason] = n

    def _flush_state(self) -> None:
        st, m = self._last_state, self.metrics
        if st is None:
            return
        if math.isfinite(st.chi2):
            m.chi2.set(st.chi2)
            if math.isfinite(st.chi2_threshold):
                m.chi2_threshold.set(st.chi2_threshold)
        if st.vm.size:
            m.vm_min.set(float(st.vm.min()))
            m.vm_max.set(float(st.vm.max()))
            if self._bus_vm is None:  # children made once: the label set is the feeder's
                self._bus_vm = [m.bus_vm.labels(str(b)) for b in self.bus_ids]
            for child, v in zip(self._bus_vm, st.vm.tolist(), strict=False):
                child.set(v)
        m.state_time.set(st.source_time)

    # ------------------------------------------------------------------ reporting
    def stream_summary(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.stats.values()]

    def summary(self) -> dict[str, Any]:
        """Run totals and latency percentiles of the pipeline (the runner adds what its
        components know: estimator, historian, commands)."""
        stats = self.stats.values()
        ss = self.supervisor
        return {
            "frames_received": sum(s.received for s in stats),
            "decode_errors": sum(s.decode_errors for s in stats),
            "frames_lost": sum(s.not_stored for s in stats),
            "frames_late": sum(s.late for s in stats),
            "snapshots": self.snapshots,
            "snapshots_incomplete": self.aligner.incomplete if self.aligner else 0,
            "states": self.states,
            "deadline_misses": ss.deadline_misses if ss else 0,
            "skipped": {r: getattr(ss, r) for r in SKIP_REASONS} if ss else {},
            "estimator_restarts": ss.restarts if ss else 0,
            "estimator_failures": ss.failures if ss else 0,
            "e2e_latency_ms": pct_ms(self.e2e_s),
            "stage_latency_ms": {"align_wait": pct_ms(self.align_s),
                                 "quality": pct_ms(self.quality_s),
                                 "quality_lookahead": pct_ms(self.lookahead_s),
                                 "estimate": pct_ms(self.estimate_s)},
            "handoff_latency_us": {k: None if v is None else v * 1e3
                                   for k, v in pct_ms(self.handoff_s).items()},
            "flags": {n: int(c) for n, c in zip(FLAG_NAMES, self.flag_counts, strict=True)},
            "streams": self.stream_summary(),
        }


def pct_ms(xs: deque[float]) -> dict[str, float | None]:
    """p50, p99 and max of a ring of seconds, in milliseconds (None when empty)."""
    if not xs:
        return {"p50": None, "p99": None, "max": None}
    a = np.fromiter(xs, float) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}
