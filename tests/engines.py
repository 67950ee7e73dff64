"""A broker engine for tests: it carries no network traffic, it records what the hub asks of it and lets a
test play the broker's side (a device message in, a device that is connected)."""

from hubserver.brokers.base import BaseBroker


class RecordingBroker(BaseBroker):
    settings_keys = frozenset({"HOST", "PORT"})

    def __init__(self, hub, name, settings):
        super().__init__(hub, name, settings)
        self.calls = []
        self.online = set()  # client ids that count as connected and subscribed
        self.published = []
        self.ended = []

    async def start(self):
        self.calls.append("start")

    async def stop(self):
        await self.hub.router.flush()  # what was taken is committed (and would be acknowledged now)
        for type_name, device_id in self.connected_devices():
            await self.hub.device_disconnected(type_name, device_id, "hub stopping")
        self.online.clear()
        self.calls.append("stop")

    async def publish_to_device(
        self, client_id, topic, payload, *, qos=1, correlation_id="", response_topic="", user_properties=None
    ):
        if client_id not in self.online:
            raise ConnectionError(f"{client_id} is not connected")
        self.published.append((client_id, topic, payload, qos, correlation_id))

    def is_connected(self, client_id, topic=None):
        return client_id in self.online

    def connected_devices(self):
        return [tuple(client_id.split(".", 1)) for client_id in self.online]

    async def end_session(self, mqtt_username):
        self.ended.append(mqtt_username)
        self.online.discard(mqtt_username)

    async def device_message(self, kind, type_name, device_id, payload):
        """What an engine does with a device's message: submit its parts, acknowledge after the commit."""
        future = await self.hub.router.submit(kind, type_name, device_id, payload, qos=1, client_id=self.name)
        return await future
