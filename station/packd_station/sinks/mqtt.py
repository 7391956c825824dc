"""MQTT (paho-mqtt): one message per frame on PREFIX/LINE/result (QoS 1, acknowledged before it leaves the outbox),
and the drift alarm, retained, on PREFIX/LINE/drift."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from packd_runtime.errors import PackdError
from packd_station.sinks.delivery import Undelivered
from packd_station.sinks.message import message

ACK_TIMEOUT_S = 5.0


class MqttSink:
    """`mqtt://HOST:PORT/PREFIX` (or `mqtts://` for TLS). Reconnects by itself; `send` raises while the broker
    is away, so the outbox keeps the message."""

    name = "mqtt"

    def __init__(self, url: str, client_id: str = "packd-station"):
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise PackdError(f"--mqtt {url!r}: give mqtt://HOST:PORT/PREFIX")
        self.prefix = u.path.strip("/") or "packd"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if u.username:
            self.client.username_pw_set(u.username, u.password)
        if u.scheme == "mqtts":
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect_async(u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883), keepalive=30)
        self.client.loop_start()

    def topic(self, line: str, what: str) -> str:
        return f"{self.prefix}/{line}/{what}"

    def _publish(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        if not self.connected.is_set():
            raise ConnectionError("MQTT broker not connected")
        info = self.client.publish(topic, json.dumps(payload), qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"MQTT publish failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(ACK_TIMEOUT_S)
        if not info.is_published():
            raise ConnectionError("MQTT broker did not acknowledge within 5 s")

    def send_many(self, records: list[dict[str, Any]]) -> None:
        """Publish every result (QoS 1), then wait for the broker's acknowledgements, in order."""
        if not self.connected.is_set():
            raise Undelivered(0, "MQTT broker not connected")
        infos = []
        for r in records:
            info = self.client.publish(self.topic(r["line"], "result"), json.dumps(message(r)), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break
            infos.append(info)
        for i, info in enumerate(infos):
            info.wait_for_publish(ACK_TIMEOUT_S)
            if not info.is_published():
                raise Undelivered(i, "MQTT broker did not acknowledge within 5 s")
        if len(infos) < len(records):
            raise Undelivered(len(infos), "MQTT publish failed: not connected")

    def alarm(self, line: str, state: dict[str, Any]) -> None:
        """The drift state (alarm on or off), retained so a client that connects later sees it."""
        self._publish(self.topic(line, "drift"), state, retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
