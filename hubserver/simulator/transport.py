"""paho-mqtt driven by an asyncio loop: the socket is watched by the loop, so a thousand simulated devices
need no thousand network threads, and every paho callback runs on the loop (no locks).

This is paho's documented external-loop integration (``on_socket_open`` / ``on_socket_register_write``
callbacks with ``loop_read``, ``loop_write`` and ``loop_misc``). It needs a selector event loop
(``add_reader``), the default on Linux and macOS.
"""

import asyncio
import contextlib

import paho.mqtt.client as paho


class LoopTransport:
    """Attach one paho ``Client`` to ``loop``; call ``tick()`` about once a second for keepalive."""

    def __init__(self, client, loop=None):
        self.client = client
        self.loop = loop or asyncio.get_running_loop()
        self._sock = None
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    def _on_socket_open(self, client, userdata, sock):
        self._sock = sock
        self.loop.add_reader(sock, client.loop_read)

    def _on_socket_close(self, client, userdata, sock):
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        self._sock = None

    def _on_socket_register_write(self, client, userdata, sock):
        self.loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, client, userdata, sock):
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)

    @property
    def open(self):
        return self._sock is not None

    def drop(self):
        """Stop watching the socket and close it without a DISCONNECT (an abrupt loss of connection)."""
        sock = self._sock
        if sock is not None:
            self._on_socket_close(self.client, None, sock)
            with contextlib.suppress(OSError):
                sock.close()

    def tick(self):
        """Keepalive (PINGREQ) and retry housekeeping; returns paho's result code."""
        if self._sock is None:
            return paho.MQTT_ERR_NO_CONN
        return self.client.loop_misc()
