"""Commands back to the simulator: the volt-watt policy, its rate limit, the config keys,
and the loop closed for real (gateway → UDP → emulator → UDP → gateway) on loopback."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Callable

import numpy as np
import pytest

from gateway.codecs.gtnet_skt import GtnetSktCodec
from gateway.commands import CommandController, CommandLink, CommandSender, volt_watt
from gateway.config import TwinConfig, load_config, parse_config
from gateway.errors import ConfigError
from hil.closedloop import ClosedLoop
from hil.emulator import Emulator, retarget
from hil.scenario import ScenarioSpec, make_trace
from hil.trace import Trace

BUNDLED = load_config("ieee33").text
OFF = "[commands]\nenabled = false\n"
POINTS = '["cmd_seq:int32", "pv8_curtail", "pv16_p_max_mw", "pv22_curtail"]'


def commands_text(extra: str = "", points: str = POINTS, url: str = "udp://127.0.0.1:9"
                  ) -> str:
    assert OFF in BUNDLED
    return BUNDLED.replace(OFF, f'[commands]\nenabled = true\nurl = "{url}"\n'
                                f"points = {points}\n{extra}\n")


def config(extra: str = "", **kw: str) -> TwinConfig:
    return parse_config(commands_text(extra, **kw))


def voltages(cfg: TwinConfig, at_plants: dict[str, float], rest: float = 1.0) -> np.ndarray:
    vm = np.full(cfg.network.n_bus, rest)
    for name, v in at_plants.items():
        vm[cfg.network.index_of(cfg.plant(name).bus)] = v
    return vm


def decode(cfg: TwinConfig, payload: bytes) -> dict[str, float]:
    pts = cfg.commands.points
    vals = GtnetSktCodec([p.type for p in pts], header=False).parse(payload, 0.0).values
    return {p.name: float(x) for p, x in zip(pts, vals, strict=True)}


# --------------------------------------------------------------------------- the policy


def test_volt_watt_characteristic_ieee1547_defaults() -> None:
    """1.0 at or below V1, P2 at V2 and above, linear between (IEEE 1547-2018 Table 10)."""
    cfg = config()
    c = cfg.commands
    assert (c.policy, c.v1_pu, c.v2_pu, c.p2) == ("volt-watt", 1.06, 1.10, 0.2)
    caps = volt_watt(np.array([0.95, 1.06, 1.07, 1.08, 1.10, 1.20]), v1=1.06, v2=1.10, p2=0.2)
    np.testing.assert_allclose(caps, [1.0, 1.0, 0.8, 0.6, 0.2, 0.2])
    # the controller's per-plant arithmetic is the same function, voltage by voltage
    for v in np.linspace(1.0, 1.15, 31):
        cmd = CommandController(cfg).update(voltages(cfg, {"pv8": v, "pv16": v}), 1, 0.0)
        assert cmd is not None
        want = float(volt_watt(np.array([v]), v1=1.06, v2=1.10, p2=0.2)[0])
        assert cmd.caps[:2] == pytest.approx((want, want), abs=1e-12)


def test_frame_carries_seq_fraction_and_megawatts_nan_for_uncontrolled() -> None:
    cfg = config('plants = ["pv8", "pv16"]\nv1_pu = 0.90\nv2_pu = 1.0\np2 = 0.0')
    ctl = CommandController(cfg)
    assert ctl.plants == ("pv8", "pv16")
    cmd = ctl.update(voltages(cfg, {"pv8": 0.95, "pv16": 0.975, "pv22": 1.0}), 2**32 - 1, 0.0)
    assert cmd is not None and cmd.reason == "first"
    got = decode(cfg, cmd.payload)
    assert got["cmd_seq"] == -1  # the uint32 sequence number, bit for bit in an int32
    assert got["pv8_curtail"] == pytest.approx(0.5, abs=1e-6)
    assert got["pv16_p_max_mw"] == pytest.approx(0.25 * cfg.plant("pv16").rating_mw, abs=1e-6)
    assert math.isnan(got["pv22_curtail"])  # not controlled: the cap stays as it is
    assert cmd.detail()["caps"] == pytest.approx({"pv8": 0.5, "pv16": 0.25})


def test_rate_limit_deadband_and_refresh_follow_now() -> None:
    cfg = config("min_interval_s = 1.0\ndeadband = 0.01\nrefresh_s = 10.0")
    ctl = CommandController(cfg)

    def at(v: float, now: float) -> str | None:
        cmd = ctl.update(voltages(cfg, {"pv8": v, "pv16": v, "pv22": v}), int(now * 50), now)
        return None if cmd is None else cmd.reason

    assert at(1.08, 0.0) == "first"  # cap 0.6
    assert at(1.10, 0.5) is None  # a big change, but within min_interval_s
    assert at(1.10, 1.0) == "change"  # cap 0.2, as soon as the interval is over
    assert at(1.12, 2.0) is None  # above V2 the cap stays P2
    assert at(1.0996, 3.0) is None  # cap 0.208: 0.008 from what was sent, inside the band
    assert at(1.099, 4.0) == "change"  # cap 0.22: 0.02 from what was last sent
    assert at(1.099, 13.9) is None
    assert at(1.099, 14.0) == "refresh"  # unchanged, re-sent for a restarted simulator
    assert at(1.099, 14.5) is None
    assert at(1.099, 3.0) == "refresh"  # the clock stepped back: not silenced for 11 s


def test_incomplete_estimate_is_not_acted_on() -> None:
    cfg = config()
    ctl = CommandController(cfg)
    vm = voltages(cfg, {"pv8": 1.08})
    vm[cfg.network.index_of(cfg.plant("pv16").bus)] = np.nan
    assert ctl.update(vm, 1, 0.0) is None
    vm[cfg.network.index_of(cfg.plant("pv16").bus)] = 1.0
    vm[cfg.network.index_of(cfg.plant("pv33").bus)] = np.nan  # no command point: ignored
    assert ctl.update(vm, 2, 0.1) is not None


# --------------------------------------------------------------------------- config


def test_bundled_config_sends_nothing_and_documents_the_keys() -> None:
    c = load_config("ieee33").commands
    assert not c.enabled and c.points == ()
    for key in ("url", "points", "policy", "v1_pu", "v2_pu", "p2", "min_interval_s",
                "deadband", "refresh_s", "plants"):
        assert f"# {key} = " in BUNDLED, key
    # the commented example is itself a valid config
    example = "\n".join(line[2:].split("  #")[0] for line in BUNDLED.splitlines()
                        if line.startswith(("# url = ", "# points = ")))
    cfg = parse_config(BUNDLED.replace(OFF, f"[commands]\nenabled = true\n{example}\n"))
    assert CommandController(cfg).plants == ("pv8", "pv16", "pv22", "pv33")


BROKEN = [
    ("v1_pu = 1.10\nv2_pu = 1.06", "commands.v2_pu"),
    ("v1_pu = -1", "commands.v1_pu"),
    ("p2 = 1.5", "commands.p2"),
    ('policy = "volt-var"', "commands.policy"),
    ("min_interval_s = 0", "commands.min_interval_s"),
    ("deadband = -0.1", "commands.deadband"),
    ("min_interval_s = 5.0\nrefresh_s = 1.0", "commands.refresh_s"),
    ('plants = ["pv33"]', "commands.plants"),
    ('v1_pu = "high"', "commands.v1_pu"),
    ("gain = 2", "commands.gain"),
]


@pytest.mark.parametrize(("extra", "key"), BROKEN)
def test_broken_commands_key_is_named_with_a_fix(extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(extra)
    problems = {p.key: p for p in info.value.problems}
    assert key in problems, info.value.problems
    assert problems[key].fix


@pytest.mark.parametrize(("points", "url", "key", "match"), [
    ('["cmd_seq:int32", "pv99_curtail"]', "udp://127.0.0.1:9", "commands.points[1]",
     "pv99_curtail"),
    ('["cmd_seq", "pv8_curtail"]', "udp://127.0.0.1:9", "commands.points[0]", "cmd_seq"),
    ('["pv8_curtail:int32"]', "udp://127.0.0.1:9", "commands.points[0]", "float32"),
    ('["pv8_curtail", "pv8_curtail"]', "udp://127.0.0.1:9", "commands.points[1]", "twice"),
    ('["cmd_seq:int32"]', "udp://127.0.0.1:9", "commands.points", "no point names a plant"),
    ('["pv8_curtail"]', "tcp://127.0.0.1:9", "commands.url", "UDP"),
])
def test_command_points_and_url_are_checked_at_load(points: str, url: str, key: str,
                                                    match: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(points=points, url=url)
    hits = [p for p in info.value.problems if p.key == key]
    assert hits and match in str(hits[0]), info.value.problems


# --------------------------------------------------------------------------- sockets


def test_sender_counts_errors_instead_of_raising() -> None:
    sender = CommandSender("udp://127.0.0.1:9")
    sender.open()
    try:
        assert not sender.send(b"\0" * 70_000)  # larger than any UDP datagram
        assert (sender.sent, sender.errors) == (0, 1) and sender.last_error
    finally:
        sender.close()
    assert not sender.send(b"\0" * 8) and sender.errors == 1  # closed: not an error


def test_link_sends_a_datagram_the_emulator_decodes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        cfg = config("v1_pu = 0.90\nv2_pu = 1.0", url=f"udp://127.0.0.1:{rx.getsockname()[1]}")
        sent: list[object] = []
        link = CommandLink(cfg, on_sent=sent.append).open()
        try:
            cmd = link.on_state(voltages(cfg, {"pv8": 0.95, "pv16": 0.975, "pv22": 0.9}), 41,
                                100.0)
            assert cmd is not None and sent == [cmd] and link.sent == 1
            data, addr = rx.recvfrom(65536)
        finally:
            link.close()
    assert addr[0] == "127.0.0.1"
    loop = ClosedLoop(cfg, trace=None)
    rec = loop.receive(data, next_step=42, now=0.0)
    assert rec.cmd_seq == 41
    assert rec.caps_mw["pv8"] == pytest.approx(0.6 * cfg.plant("pv8").rating_mw, abs=1e-6)
    assert rec.caps_mw["pv16"] == pytest.approx(0.4 * cfg.plant("pv16").rating_mw, abs=1e-6)
    assert rec.caps_mw["pv22"] == pytest.approx(1.0)
    assert math.isinf(rec.caps_mw["pv33"])  # never commanded


# --------------------------------------------------------------------------- closed loop

STEPS = 60
LOOP = ('plants = ["pv8", "pv16"]\nv1_pu = 0.90\nv2_pu = 1.0\np2 = 0.2\n'
        "min_interval_s = 600.0\nrefresh_s = 600.0")  # IEEE33 sits at 0.91..1.0 pu


@pytest.fixture(scope="module")
def trace() -> Trace:
    return make_trace(ScenarioSpec(start="1990-06-01T11:00", hours=STEPS / 3600, step_s=1.0,
                                   bad_pct=0, seed=7))


def int32(seq: int) -> int:
    """The low 32 bits of a snapshot seq as the int32 cmd_seq word carries them."""
    return ((seq + 2**31) % 2**32) - 2**31


async def until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait on the event loop for ``cond`` (bounded: a hang fails, it does not block)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def test_gateway_curtails_the_emulated_plants(trace: Trace) -> None:
    """Frames from the emulator → gateway → estimator process → volt-watt decision → a
    command datagram → the emulator's closed loop caps the plants of the next steps."""
    from gateway.app import Gateway, GatewayOptions

    cfg = config(LOOP)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the emulator's command port
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gw_cfg = retarget(cfg, {s.name: "udp://127.0.0.1:0" for s in cfg.streams},
                      commands_url=f"udp://127.0.0.1:{rx.getsockname()[1]}")
    gw = Gateway(gw_cfg, GatewayOptions(config_ref="ieee33", historian_url="none",
                                        metrics_bind="", quality=False, spare=False))
    loop = asyncio.get_running_loop()
    try:
        await gw.start()
        ports = {n: t.local_address for n, t in gw.transports.items()}
        em = Emulator(retarget(cfg, {n: f"udp://{a[0]}:{a[1]}" for n, a in ports.items()
                                     if a}), trace, rate_hz=50.0)
        assert em.closed_loop is not None
        loop.add_reader(rx.fileno(), lambda: em.command(rx.recv(65536),
                                                        now=time.perf_counter()))
        vm_of: dict[int, np.ndarray] = {}
        for k in range(STEPS):
            for out in em.frames(k):
                tx.sendto(out.emission.data, (out.plan.stream.host, out.plan.stream.port))
            await until(lambda k=k: gw.states > k, f"the estimate of step {k}")
            st = gw.latest_state
            assert st is not None
            vm_of[int32(st["seq"])] = np.array(st["vm_pu"])
            if em.closed_loop.records and em.next_step > em.closed_loop.records[0].recv_step + 5:
                break
        await until(lambda: bool(em.closed_loop.records), "the command")  # type: ignore[union-attr]
        summary = gw.summary()
    finally:
        loop.remove_reader(rx.fileno())
        await gw.close()
        rx.close()
        tx.close()
    (rec,) = em.closed_loop.records  # min_interval_s = 600: one decision in this run
    assert summary["commands_sent"] == 1 and summary["command_errors"] == 0
    # the cap is IEEE 1547 volt-watt of the estimate the command names (cmd_seq: the
    # snapshot's time slot, not the emulator's step, so the emulator has no round trip)
    assert rec.cmd_seq is not None and rec.cmd_seq in vm_of
    vm = vm_of[rec.cmd_seq]
    want = {}
    for name in ("pv8", "pv16"):
        v = vm[cfg.network.index_of(cfg.plant(name).bus)]
        want[name] = min(1.0, max(0.2, 1.0 - 0.8 * (v - 0.90) / 0.10))
        assert want[name] < 1.0  # curtailment triggered
        assert rec.caps_mw[name] == pytest.approx(want[name] * cfg.plant(name).rating_mw,
                                                  rel=1e-6)
    assert math.isinf(rec.caps_mw["pv22"]) and math.isinf(rec.caps_mw["pv33"])
    # ... and the emulated plants obey it from the next step on
    caps = np.array([want["pv8"], want["pv16"]])
    binds = False
    for k in range(rec.recv_step, em.next_step):
        np.testing.assert_allclose(em.pv_mw(k)[:2], np.minimum(trace.pv_mw[k, :2], caps),
                                   rtol=1e-6)
        np.testing.assert_array_equal(em.pv_mw(k)[2:], trace.pv_mw[k, 2:])
        binds |= bool(np.any(trace.pv_mw[k, :2] > caps + 1e-6))
    assert binds, "the cap never bound: the test would not show the loop closing"
    assert rec.recv_step < em.next_step
