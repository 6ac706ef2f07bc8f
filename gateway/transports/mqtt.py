"""``mqtt://HOST:PORT/TOPIC-FILTER``: the gateway subscribes to a broker (paho-mqtt).

Unlike the stream transports the gateway is the client here: it connects to the broker
(Mosquitto, EMQX, ...), subscribes to the URL's topic filter at QoS 0 or 1 and hands each
message to the sink as ``(stream, payload, topic, now)``: for MQTT the "peer" of a frame
is the topic it was published on (the payload codec and the device come from it).

* **Security**: username with the password read from an environment variable (never
  from the config file), TLS (CA file, client certificate and key; ``tls_insecure`` only
  skips the host name check). A broker refusing the credentials is a
  :class:`~gateway.errors.TransportError` at start; a broker that is down is retried in
  the background (paho's reconnect, 1 to 30 s), with ``connected``/``disconnected``
  events.
* **Topic allowlist and size limit**: messages on topics outside the allowlist (MQTT
  filters) or larger than ``max_payload`` are dropped here and reported to ``on_drop``
  (``(stream, topic)``) with the reason counted in :attr:`MqttTransport.dropped`.
* **QoS 1 duplicates**: the broker's DUP flag is counted (:attr:`MqttTransport.dup_flags`);
  recognising a duplicate is the payload's business (Sparkplug sequence numbers, SenML
  timestamps: :mod:`gateway.sensor_ingest`), since a publisher that re-sends after a
  lost PUBACK sends a new message, not a flagged one.

paho runs its network loop in its own thread; every message crosses to the asyncio loop
with ``call_soon_threadsafe``, so the sink runs on the loop like every other transport's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import TransportError
from gateway.sensors_config import MqttSettings, parse_mqtt_url, topic_matches
from gateway.transports.base import (
    DropSink,
    EventSink,
    FrameSink,
    TransportBase,
    TransportSpec,
    register,
)

log = logging.getLogger("gridtwin.mqtt")
CONNECT_WAIT_S = 5.0  # how long start() waits for the first CONNACK


def settings_from_url(url: str) -> MqttSettings:
    """Settings for a bare URL: the filter is also the allowlist, QoS 1, 64 KiB limit."""
    host, port, topic = parse_mqtt_url(url, "url")
    return MqttSettings(host, port, topic, (topic,), tls=url.startswith("mqtts://"))


def make_client(s: MqttSettings, client_id: str, password: str | None = None
                ) -> mqtt.Client:
    """A paho client with the settings' credentials and TLS (not connected)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv311)
    if s.username:
        pw = password if password is not None else (
            os.environ.get(s.password_env) if s.password_env else None)
        c.username_pw_set(s.username, pw)
    if s.tls:
        try:
            c.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file,
                      cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TransportError(f"mqtt TLS files: {exc}") from exc
        c.tls_insecure_set(s.tls_insecure)
    c.reconnect_delay_set(1, 30)
    return c


@register("mqtt")
@register("mqtts")
class MqttTransport(TransportBase):
    """One broker subscription (see the module docstring)."""

    def __init__(self, spec: TransportSpec, sink: FrameSink, *,
                 on_drop: DropSink | None = None, on_event: EventSink | None = None,
                 clock: Callable[[], float] = time.time,
                 settings: MqttSettings | None = None, password: str | None = None
                 ) -> None:
        super().__init__(spec, sink, on_drop=on_drop, on_event=on_event, clock=clock)
        self.settings = settings or settings_from_url(spec.url)
        self.password = password
        self.client: mqtt.Client | None = None
        self.connected = False
        self.received = 0
        self.dup_flags = 0
        self.dropped = {"topic": 0, "size": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first: asyncio.Future[tuple[int, str]] | None = None

    async def start(self) -> None:
        s = self.settings
        self._loop = loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        cid = s.client_id or f"gridtwin-{self.spec.name}-{os.getpid()}"
        c = make_client(s, cid, self.password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c
        try:
            c.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        except (OSError, ValueError) as exc:
            raise TransportError(f"stream {self.spec.name}: {self.spec.url}: {exc}") from exc
        c.loop_start()
        try:
            rc, why = await asyncio.wait_for(asyncio.shield(self._first), CONNECT_WAIT_S)
        except TimeoutError:
            log.warning("mqtt %s: no broker at %s:%d yet; retrying in the background",
                        self.spec.name, s.host, s.port)
            return
        if rc != 0:
            await self.close()
            raise TransportError(f"stream {self.spec.name}: broker {s.host}:{s.port} "
                                 f"refused the connection: {why}")

    # -- paho's thread -----------------------------------------------------------------
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, c: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        code = int(getattr(rc, "value", rc))
        if code == 0:
            c.subscribe(self.settings.topic, qos=self.settings.qos)
        self._call(self._connected, code, str(rc))

    def _on_disconnect(self, c: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any = None) -> None:
        self._call(self._disconnected, str(rc))

    def _on_message(self, c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self._deliver, msg.topic, bytes(msg.payload), bool(msg.dup))

    # -- the asyncio loop --------------------------------------------------------------
    def _connected(self, code: int, why: str) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result((code, why))
        if code == 0:
            self.connected = True
            self.on_event(self.spec.name, "connected", {"url": self.spec.url})
        else:
            self.on_event(self.spec.name, "refused", {"reason": why})

    def _disconnected(self, reason: str) -> None:
        if self.connected:
            self.connected = False
            self.on_event(self.spec.name, "disconnected", {"reason": reason})

    def _deliver(self, topic: str, payload: bytes, dup: bool) -> None:
        s = self.settings
        if not any(topic_matches(f, topic) for f in s.topics):
            self.dropped["topic"] += 1
            self.on_drop(self.spec.name, topic)
            return
        if len(payload) > s.max_payload:
            self.dropped["size"] += 1
            self.on_drop(self.spec.name, topic)
            return
        self.received += 1
        self.dup_flags += dup
        self.sink(self.spec.name, payload, topic, self.clock())

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> bool:
        """Publish a message (a Sparkplug NCMD); False when not connected."""
        c = self.client
        if c is None or not self.connected:
            return False
        return c.publish(topic, payload, qos=qos).rc == mqtt.MQTT_ERR_SUCCESS

    @property
    def local_address(self) -> tuple[str, int] | None:
        return None

    async def close(self) -> None:
        c, self.client = self.client, None
        if c is None:
            return
        c.on_disconnect = None  # a deliberate stop is not an event
        with contextlib.suppress(Exception):
            c.disconnect()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, c.loop_stop)
        self.connected = False
