"""Interop with an implementation nobody here wrote: the ``synchrophasor`` PMU simulator.

Its PMU listens on loopback TCP; our client sends C37.118 commands, reassembles the byte
stream and decodes the header, CFG-2 and data frames; the phasors must equal what the
simulator was given. The package's per-client handlers are processes: the fixture
terminates them.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.codecs import c37118 as c
from gateway.codecs.stream import StreamReassembler

collections.Sequence = collections.abc.Sequence  # type: ignore[attr-defined]
sp_frame = pytest.importorskip("synchrophasor.frame")
sp_pmu = pytest.importorskip("synchrophasor.pmu")

DATA = Path(__file__).parent / "data"
SOC = 1149580800
BREAKERS = [f"BREAKER {ch} STATUS" for ch in "123456789ABCDEFG"]
NAMES = ["VA", "VB", "VC", "I1", "ANALOG1", "ANALOG2", "ANALOG3", *BREAKERS]


def annex_d_cfg2(fmt: tuple[bool, bool, bool, bool] = (False, False, True, False)) -> Any:
    """The simulator's CFG-2 for the Annex D example (``fmt``: polar, phasor float,
    analog float, freq float)."""
    return sp_frame.ConfigFrame2(
        7734, 1_000_000, 1, "Station A", 7734, fmt, 4, 3, 1, NAMES,
        [(915527, "v"), (915527, "v"), (915527, "v"), (45776, "i")],
        [(1, "pow"), (1, "rms"), (1, "peak")], [(0x0000, 0xFFFF)], 60, 22, 30,
        soc=SOC, frasec=(0,))


def test_simulator_encodes_annex_d_like_our_golden_frames() -> None:
    """Independent encoder, same bytes: the golden CFG-2 and data frame of Annex D."""
    cfg2 = annex_d_cfg2()
    assert cfg2.convert2bytes() == (DATA / "c37118_annexd_cfg2.bin").read_bytes()
    data = sp_frame.DataFrame(
        7734, ("ok", True, "timestamp", False, False, False, 0, "<10", 0),
        [(14635, 0), (-7318, -12676), (-7318, 12675), (1092, 0)], 2500, 0,
        [100, 1000, 10000], [0x3C12], cfg2, soc=SOC, frasec=(16817,))
    assert data.convert2bytes() == (DATA / "c37118_annexd_data.bin").read_bytes()
    cmd = sp_frame.CommandFrame(7734, "start", None, soc=SOC, frasec=(0,))
    assert cmd.convert2bytes() == (DATA / "c37118_cmd_start.bin").read_bytes()
    # and it decodes what we build
    ours = c.CommandFrame(7734, c.CMD_CFG2, soc=SOC).build()
    assert sp_frame.CommonFrame.convert2frame(ours).get_command() == "cfg2"


class _Stopped(Exception):
    """Raised into the simulator's acceptor loop to end it (see :class:`Simulator`)."""


class _Listener:
    """The simulator's listening socket: once ``stopping`` is set, the connection that
    wakes ``accept()`` is closed and the loop ended with :class:`_Stopped`."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self.stopping = stopping

    def accept(self) -> tuple[socket.socket, Any]:
        conn, addr = self.sock.accept()
        if self.stopping.is_set():
            conn.close()
            raise _Stopped
        return conn, addr

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


_Pmu: Any = sp_pmu.Pmu


class Simulator(_Pmu):
    """The package's PMU, with a way to stop it. Its acceptor thread loops on
    ``accept()`` for ever; closing the socket under it makes ``accept()`` raise in the
    thread, and that exception surfaces later, in whatever test runs then. Here the
    package's own loop runs on a wrapped socket and :meth:`stop` ends it cleanly: wake
    ``accept()`` with one connection, the loop ends, the thread is joined, and only then
    is the socket closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopping = threading.Event()

    def acceptor(self) -> None:
        raw: socket.socket = self.socket
        self.socket: Any = _Listener(raw, self.stopping)
        try:
            super().acceptor()
        except _Stopped:
            return

    def stop(self) -> None:
        if self.listener is None:
            return
        self.stopping.set()
        address = self.socket.getsockname()
        with contextlib.suppress(OSError):
            socket.create_connection(address, timeout=5).close()
        self.listener.join(10)
        assert not self.listener.is_alive(), "the simulator's acceptor did not end"
        self.socket.close()


@pytest.fixture
def pmu() -> Iterator[Any]:
    sim = Simulator(pmu_id=7734, data_rate=30, port=0, ip="127.0.0.1", set_timestamp=False)
    sim.logger.setLevel("WARNING")
    yield sim
    sim.stop()  # first: no new handler process after the ones ended below
    for proc in sim.clients:
        proc.terminate()
        proc.join(5)


class Client:
    """A minimal PDC over a blocking loopback socket, using only our codecs."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reasm = StreamReassembler()
        self.pending: list[bytes] = []

    def send(self, cmd: int) -> None:
        self.sock.sendall(c.command(7734, cmd))

    def next_frame(self) -> bytes:
        while not self.pending:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("simulator closed the connection")
            self.pending += self.reasm.feed(chunk)
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def _run(sim: Any, cfg2: Any) -> Client:
    sim.set_configuration(cfg2)
    sim.set_header("Hi! I am tinyPMU!")
    sim.run()
    return Client(sim.socket.getsockname()[1])


def test_header_cfg2_and_int_rectangular_data(pmu: Any) -> None:
    sim_cfg = annex_d_cfg2()
    client = _run(pmu, sim_cfg)
    try:
        client.send(c.CMD_HEADER)
        hdr = c.parse(client.next_frame(), 0.0)
        assert isinstance(hdr, c.HeaderFrame)
        assert hdr.text == "Hi! I am tinyPMU!" and hdr.idcode == 7734

        client.send(c.CMD_CFG2)
        cfg = c.parse(client.next_frame(), 0.0)
        assert isinstance(cfg, c.ConfigFrame) and cfg.frame_type == c.FRAME_CFG2
        (p,) = cfg.pmus
        assert (p.station, p.phasor_names, p.digital_names) == ("Station A", NAMES[:4],
                                                                BREAKERS)
        assert cfg.data_rate == 30 and cfg.time_base == 1_000_000

        client.send(c.CMD_START)
        sent = [
            [(14635, 0), (-7318, -12676), (-7318, 12675), (1092, 0)],
            [(100, -200), (300, 400), (-500, 600), (32767, -32767)],
            [(1, 2), (3, 4), (5, 6), (7, 8)],
        ]
        for k, ph in enumerate(sent):
            frame = sp_frame.DataFrame(
                7734, ("ok", True, "timestamp", False, False, False, 0, "<10", 0),
                ph, 2500 + k, -k, [100.0 + k, 1000.0, 10000.0], [0x3C12 + k], sim_cfg,
                soc=SOC + k, frasec=(1000 * k,))
            pmu.send(frame)
        units = np.array([915527, 915527, 915527, 45776]) * 1e-5
        for k, ph in enumerate(sent):
            got = c.parse(client.next_frame(), 0.0, cfg)
            assert isinstance(got, c.DataFrame)
            want = np.array([complex(a, b) for a, b in ph]) * units
            np.testing.assert_allclose(got.phasors, want, rtol=1e-12)
            assert got.freq.tolist() == [pytest.approx(60 + (2500 + k) / 1000)]
            assert got.dfreq.tolist() == [pytest.approx(-k / 100)]
            assert got.analogs.tolist() == [100.0 + k, 1000.0, 10000.0]
            assert got.digitals.tolist() == [0x3C12 + k]
            assert got.soc == SOC + k and got.fracsec == 1000 * k
        client.send(c.CMD_STOP)
        assert client.reasm.garbage_bytes == 0
    finally:
        client.close()


def test_float_polar_data(pmu: Any) -> None:
    # FREQ stays int16: the package range-checks a float FREQ as a deviation (±32.767),
    # while the standard sends the actual frequency in Hz in floating point
    sim_cfg = annex_d_cfg2((True, True, True, False))
    client = _run(pmu, sim_cfg)
    try:
        client.send(c.CMD_CFG2)
        cfg = c.parse(client.next_frame(), 0.0)
        assert isinstance(cfg, c.ConfigFrame)
        assert cfg.pmus[0].polar and cfg.pmus[0].phasor_float
        client.send(c.CMD_START)
        sent = [(7200.5, 0.25), (7199.0, -1.5), (7201.25, 2.75), (101.5, -0.125)]
        pmu.send(sp_frame.DataFrame(
            7734, ("ok", True, "timestamp", False, False, False, 0, "<10", 0),
            sent, 20, 50, [1.5, 2.5, 3.5], [0x0001], sim_cfg, soc=SOC, frasec=(0,)))
        got = c.parse(client.next_frame(), 0.0, cfg)
        assert isinstance(got, c.DataFrame)
        np.testing.assert_allclose(np.abs(got.phasors), [m for m, _ in sent], rtol=1e-7)
        np.testing.assert_allclose(np.angle(got.phasors), [a for _, a in sent], atol=1e-6)
        assert got.freq[0] == pytest.approx(60.02)  # 60 Hz nominal + 20 mHz
        assert got.dfreq[0] == pytest.approx(0.5)  # ROCOF x 100 on the wire
        assert got.analogs.tolist() == [1.5, 2.5, 3.5]
    finally:
        client.close()
