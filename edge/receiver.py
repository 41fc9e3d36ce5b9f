"""The meter side: paho-mqtt on its own network thread, persistent session, manual acks.

aiomqtt cannot ack manually, so paho runs here in its own thread (loop_start). Each message is
handed to the writer as-is; the writer acks it with `ack()` only after the SQLite commit. The
session is persistent (clean_session=False, a fixed client id), so whatever was not acked when we
crash or disconnect is re-delivered by the broker with the DUP flag.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gridtokenx.config import BrokerURL
from protocol.topics import METER_READINGS_FILTER

log = logging.getLogger(__name__)

Sink = Callable[[str, bytes, int, int], None]


class Receiver:
    def __init__(self, url: BrokerURL, *, client_id: str, sink: Sink, ca_file: str | None = None,
                 on_connection: Callable[[bool], None] = lambda _up: None) -> None:
        self._url = url
        self._sink = sink
        self._paused = threading.Event()
        self._on_connection = on_connection
        self.connected = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                             manual_ack=True)
        if url.username:
            client.username_pw_set(url.username, url.password)
        if url.tls:
            client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        self._client = client

    def start(self) -> None:
        log.info("connecting to the edge broker %s", self._url)
        self._client.connect_async(self._url.host, self._url.port, keepalive=30)
        self._client.loop_start()

    def ack(self, mid: int, qos: int) -> None:
        self._client.ack(mid, qos)

    def pause(self) -> None:
        """Stop taking messages (drain): later ones stay un-acked, and the broker keeps them for us."""
        self._paused.set()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _connected(self, client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags,
                   reason: ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            log.error("edge broker refused the connection: %s (check the edge-agent credentials)", reason)
            return
        # The subscription survives in the persistent session, but subscribing again is harmless and
        # covers a broker that lost its persistence file.
        client.subscribe(METER_READINGS_FILTER, qos=1)
        self.connected = True
        self._on_connection(True)
        log.info("connected to the edge broker, subscribed to %s", METER_READINGS_FILTER)

    def _disconnected(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.DisconnectFlags,
                      reason: ReasonCode, _props: Properties | None) -> None:
        self.connected = False
        self._on_connection(False)
        if not self._paused.is_set():
            log.warning("edge broker connection lost (%s); paho reconnects", reason)

    def _message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._paused.is_set():
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<not UTF-8>"  # quarantined as a topic mismatch, still acked after the commit
        self._sink(topic, bytes(message.payload), message.mid, message.qos)
