"""One simulated device: its own MQTT connection, Last Will, periodic data, and answers to commands.

Everything here runs on one asyncio loop (see ``transport``): paho's callbacks, the publishing schedule and
the reconnection back-off. A device that loses its connection (the hub restarted, the device was
deactivated) retries with a growing delay; a refused CONNECT (bad credentials, inactive device) is
remembered in ``last_error`` for the display.
"""

import asyncio
import contextlib
import json
import random
import time
from datetime import UTC, datetime

import paho.mqtt.client as paho

from .. import __version__
from ..exceptions import ValidationError
from .profiles import mains_powered
from .state import apply_command, initial_state
from .transport import LoopTransport
from .values import ReadingValues

ONLINE = {"status": "online"}
OFFLINE = json.dumps({"status": "offline"})
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
CLOSE_TIMEOUT = 3.0


class SimulatedDevice:
    """Connects with the credentials of ``info`` (``connection_info()``) and behaves like the hardware."""

    def __init__(self, device_type, info, target, *, interval=5.0, realistic=False, rng=None, keepalive=30):
        self.device_type = device_type
        self.info = info
        self.device_id = info["device_id"]
        self.topics = info["topics"]
        self.target = target
        self.interval = interval
        self.keepalive = keepalive
        self.rng = rng or random.Random()
        self.values = ReadingValues(device_type, realistic, self.rng, interval=interval)
        self.state = initial_state(device_type, self.rng)
        # A realistic mains-powered device (a plug, a meter) reports no battery level.
        mains = realistic and mains_powered(device_type._readings)
        self.battery = None if mains else round(self.rng.uniform(60, 100), 1)
        # What the display shows.
        self.connected = False
        self.ever_connected = False
        self.sent = 0
        self.acked = 0
        self.commands = 0
        self.last_values = {}
        self.last_error = ""
        self.stopped = False
        self._data_mids = set()
        self._pending_mids = set()
        self.client = None
        self.transport = None

    # -- connection ---------------------------------------------------------------------------------------

    def _make_client(self):
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.info["client_id"], clean_session=True)
        client.username_pw_set(self.info["mqtt_username"], self.info["mqtt_password"])
        client.will_set(self.topics["status"], OFFLINE, qos=1)
        if self.target.tls:
            client.tls_set(
                ca_certs=self.target.ca_certs or None,
                certfile=self.target.certfile or None,
                keyfile=self.target.keyfile or None,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.max_queued_messages_set(1000)
        return client

    def _connect(self):
        """Open the connection (the CONNACK arrives later, in ``_on_connect``); False if the socket failed."""
        try:
            if self.client is None:
                self.client = self._make_client()
                self.transport = LoopTransport(self.client)
                self.client.connect(self.target.host, self.target.port, keepalive=self.keepalive)
            else:
                self.client.reconnect()
            return True
        except (OSError, ValueError) as exc:
            self.last_error = f"cannot connect to {self.target}: {getattr(exc, 'strerror', None) or exc}"
            return False

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.last_error = f"refused: {reason_code}"
            return
        self.connected = self.ever_connected = True
        self.last_error = ""
        client.subscribe(self.topics["cmd"], qos=1)
        self._publish(
            self.topics["status"],
            {
                **ONLINE,
                **({} if self.battery is None else {"battery_level": self.battery}),
                "firmware_version": f"sim-{__version__}",
                **self._reported_state(),
            },
        )

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected and not self.stopped and not self.last_error:
            self.last_error = f"disconnected: {reason_code}"
        self.connected = False

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._pending_mids.discard(mid)
        if mid in self._data_mids:
            self._data_mids.discard(mid)
            self.acked += 1

    def _publish(self, topic, obj, qos=1):
        info = self.client.publish(topic, json.dumps(obj), qos=qos)
        if info.rc == paho.MQTT_ERR_SUCCESS and qos:
            self._pending_mids.add(info.mid)
        return info

    # -- behaviour ----------------------------------------------------------------------------------------

    def publish_data(self):
        readings = self.values.next(self.state)
        payload = {**readings, "timestamp": datetime.now(UTC).isoformat()}
        info = self._publish(self.topics["data"], payload)
        if info.rc == paho.MQTT_ERR_SUCCESS:
            self.sent += 1
            self._data_mids.add(info.mid)
            self.last_values = readings

    def _on_message(self, client, userdata, message):
        if message.topic != self.topics["cmd"]:
            return
        try:
            request = json.loads(message.payload)
        except ValueError:
            return  # nothing to correlate a reply with
        if not isinstance(request, dict) or not isinstance(request.get("correlation_id"), str):
            return
        status, result = self.execute(request.get("command"), request.get("payload"))
        reply = {"correlation_id": request["correlation_id"], "status": status, "result": result}
        self._publish(self.topics["reply"], {**reply, **self._reported_state()})
        self.commands += 1

    def _reported_state(self):
        """``{"state": {...}}``: the StateFields a device reports, so the hub shows what the device really does."""
        fields = self.device_type._state_fields
        state = {name: value for name, value in self.state.items() if fields[name].reported and value is not None}
        return {"state": state} if state else {}

    def execute(self, name, payload):
        """``(status, result)`` of a command: ``ok`` with the state changes, or ``error`` with the reason."""
        command = self.device_type._commands.get(name) if isinstance(name, str) else None
        if command is None:
            return "error", {"error": f"unknown command {name!r}"}
        try:
            payload = command.validate(payload)
        except ValidationError as exc:
            return "error", {"error": str(exc)}
        changed = apply_command(self.device_type, self.state, payload)
        result = {"command": name, "changed": changed, "state": dict(self.state)}
        if "reboot" in name or "restart" in name:
            result["uptime"] = 0
        return "ok", result

    # -- life ---------------------------------------------------------------------------------------------

    async def run(self, stop):
        """Connect, publish every ``interval`` seconds and stay connected until ``stop`` (an Event) is set."""
        loop = asyncio.get_running_loop()
        # Spread the first reports of many devices over one interval.
        next_publish = loop.time() + self.rng.uniform(0, min(self.interval, 1.0))
        retry_at, retry_delay = loop.time(), RETRY_FIRST
        while not stop.is_set():
            now = loop.time()
            if (self.transport is None or not self.transport.open) and now >= retry_at:
                self._connect()
                retry_at, retry_delay = now + retry_delay, min(retry_delay * 2, RETRY_MAX)
            if self.connected:
                retry_delay = RETRY_FIRST
                self.transport.tick()
                if now >= next_publish:
                    self.publish_data()
            while next_publish <= now:
                next_publish += self.interval
            wake = min(next_publish, now + 1.0) if self.connected else min(retry_at, now + 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(wake - now, 0.005))

    async def close(self):
        """Say offline (a clean DISCONNECT suppresses the Last Will), wait for acknowledgements, disconnect."""
        self.stopped = True
        if self.client is None:
            return
        if self.connected:
            self._publish(self.topics["status"], {"status": "offline"})
            deadline = time.monotonic() + CLOSE_TIMEOUT
            while self._pending_mids and self.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self.client.disconnect()
            while self.transport.open and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self.transport.open:
            self.transport.drop()  # no DISCONNECT was possible: drop the socket (the hub publishes the will)
        self.connected = False

    def snapshot(self):
        return {
            "device_id": self.device_id,
            "connected": self.connected,
            "ever_connected": self.ever_connected,
            "stopped": self.stopped,
            "sent": self.sent,
            "acked": self.acked,
            "commands": self.commands,
            "last_values": dict(self.last_values),
            "error": self.last_error,
        }
