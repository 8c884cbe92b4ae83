"""A tiny MQTT 3.1.1 client (QoS 0 only), enough to publish a message and read it back.

The stdlib alone: the dependencies image needs no MQTT package for the example.
"""

from __future__ import annotations

import socket
import struct


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


class MqttClient:
    """One connection to a broker: ``publish``, ``subscribe``, ``receive``."""

    def __init__(self, address: str, client_id: str, timeout: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self._packet(0x10, _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30)
                     + _string(client_id))  # CONNECT, clean session, keep-alive 30 s
        kind, body = self._read()
        if kind != 0x20 or body[1] != 0:
            raise ConnectionError(f"broker refused the connection (CONNACK {body!r})")

    def _packet(self, header: int, body: bytes) -> None:
        self.sock.sendall(bytes([header]) + _remaining_length(len(body)) + body)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def _read(self) -> tuple[int, bytes]:
        header = self._exact(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._exact(1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return header & 0xF0, self._exact(length)

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 0 and wait for the broker's SUBACK."""
        self._packet(0x82, struct.pack("!H", 1) + _string(topic) + b"\x00")
        kind, body = self._read()
        if kind != 0x90 or body[-1] == 0x80:
            raise ConnectionError(f"subscription to {topic!r} refused ({body!r})")

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 0."""
        self._packet(0x30, _string(topic) + payload)

    def receive(self) -> tuple[str, bytes]:
        """The next message published to a subscribed topic: (topic, payload)."""
        while True:
            kind, body = self._read()
            if kind == 0x30:
                (n,) = struct.unpack("!H", body[:2])
                return body[2:2 + n].decode(), body[2 + n:]

    def close(self) -> None:
        """DISCONNECT and close the socket."""
        try:
            self._packet(0xE0, b"")
        finally:
            self.sock.close()
