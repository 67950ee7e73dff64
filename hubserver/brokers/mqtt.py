"""The external engine: the hub as an application on an existing broker (Mosquitto 2, EMQX 5).

``MQTTBroker`` subscribes to every device topic of the types routed to its ``BROKERS`` entry (their
``Meta.broker``), ``$share/<SHARE_GROUP>/...`` so that each of several hub processes gets a share, and
hands every message to the router, with its MQTT 5 properties (content type, correlation data, user
properties: stored on its row; a reply's correlation data names its command). A QoS 1 message is
acknowledged to the broker only after its batch has committed, on a persistent session (``CLIENT_ID``,
session expiry of a week): a worker that is killed and restarted with the same client id gets again
everything it had not acknowledged, and what the broker queued for it meanwhile. Commands go out as MQTT 5
PUBLISHes with the command's correlation id as Correlation Data and user properties; the broker's PUBACK
says whether anyone subscribes to the device's ``cmd`` topic (0x10: nobody, the command stays pending and
is sent again on the next poll).

It keeps django-devicehub's ``MQTTBroker`` API for code of its own: ``MQTTBroker(name="default")``, ``connect()``,
``subscribe(topic)``, ``publish(topic, payload, qos, correlation_id=..., user_properties=...)``,
``set_message_handler(callback)``, ``loop_start()``/``loop_stop()``/``loop_forever()``, ``disconnect()``;
those run the connection on a thread of their own.

What the broker can tell about devices: nothing about their connections on Mosquitto (a device is online
when it sends something, offline after ``HEARTBEAT_TIMEOUT`` of silence or when its Last Will says so);
EMQX's HTTP authentication marks a device online when it connects (``/iot/broker/auth/``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import re
import threading
from collections import Counter
from datetime import UTC, datetime
from functools import partial
from typing import ClassVar

import orjson

from ..conf import hub_settings
from ..registry import registry
from ..routing.properties import MessageProperties
from ..routing.throttle import ThrottledLog
from ..running import notes_dir
from ..vocabulary import Kind, parse_device_topic
from .accounts import managed
from .base import BaseBroker
from .connection import BrokerError, broker_address
from .dynsec import DynsecAdmin
from .mqtt_client import FLAGS, NO_MATCHING_SUBSCRIBERS, BrokerClient, reason_text

logger = logging.getLogger("hubserver.brokers")

# At most this many unacknowledged messages in flight from the broker (MQTT 5 Receive Maximum): the size
# a batch can reach. Mosquitto's own max_inflight_messages (default 20) lowers it: set it to 1000.
RECEIVE_MAXIMUM = 1000
SESSION_EXPIRY = 7 * 24 * 3600
RETRY_SECONDS = (1, 2, 5, 10, 30)
DEVICE_CACHE_SECONDS = 10.0


class MQTTBroker(BaseBroker):
    settings_keys: ClassVar[frozenset[str]] = frozenset(
        {
            "HOST",
            "PORT",
            "USERNAME",
            "PASSWORD",
            "CLIENT_ID",
            "KEEPALIVE",
            "USE_TLS",
            "CA_CERTS",
            "CERTFILE",
            "KEYFILE",
            "USE_SHARED_SUBSCRIPTIONS",
            "SHARE_GROUP",
            "AUTH_BACKEND",
            "DYNAMIC_SECURITY",
        }
    )

    def __init__(self, hub=None, name="default", settings=None, *, client_id=None):
        super().__init__(hub, name, settings if settings is not None else hub_settings.BROKERS[name])
        self.address = broker_address(name, client_id=client_id)
        self.client: BrokerClient | None = None
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.counts = Counter()
        self._handler = None  # seed API: set_message_handler
        self._extra_topics: list[str] = []  # seed API: subscribe() before connect()
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        # (parsed topic, payload, qos, mid, received at, MessageProperties or None, attempt) not yet submitted
        self._inbox: list = []
        self._draining = False
        self.unacknowledged = 0  # QoS 1 messages taken and not yet acknowledged (committed)
        self._paused = False
        self._prefix = hub_settings.TOPIC_PREFIX
        self._retry_log = ThrottledLog(logger)
        self._session_lock = None

    # What the hub calls --------------------------------------------------------------------------------

    def topic_filters(self):
        """The filters of every device topic whose type uses this broker (shared when configured)."""
        prefix = hub_settings.TOPIC_PREFIX
        types = [t for t in registry.all() if t._meta.broker == self.name]
        if not types:
            return []
        share = self.settings["SHARE_GROUP"] if self.settings["USE_SHARED_SUBSCRIPTIONS"] else ""
        filters = []
        # Every type here: one filter per kind; else one per type and kind.
        names = ["+"] if len(types) == len(registry.all()) else [t.type_name() for t in types]
        for kind in sorted(Kind.INBOUND):
            for type_name in names:
                topic = f"{prefix}/{type_name}/+/{kind}"
                filters.append(f"$share/{share}/{topic}" if share else topic)
        return filters

    async def start(self) -> None:
        """Connect, check the dynamic-security plugin when the hub keeps accounts here, subscribe. Raises
        BrokerError naming the broker and the key to fix when any of that fails."""
        self.loop = asyncio.get_running_loop()
        self.closing = False
        self._prefix = hub_settings.TOPIC_PREFIX
        self._lock_session()
        if self.hub is not None:
            # Other processes write the same devices (deactivation, status, offline marks): read each cached
            # device again after a while instead of trusting this process's copy for ever.
            self.hub.router.devices.positive_ttl = DEVICE_CACHE_SECONDS
        try:
            if managed(self.name):
                await asyncio.to_thread(self._check_dynsec)
            self.client = BrokerClient(
                self.address,
                self._on_publish,
                persistent=True,
                session_expiry=SESSION_EXPIRY,
                receive_maximum=RECEIVE_MAXIMUM,
                on_lost=self._on_lost,
            )
            await self.client.connect()
            try:
                await self.client.subscribe([*self.topic_filters(), *self._extra_topics])
            except BaseException:
                await self.client.disconnect()
                raise
        except BaseException:
            self._unlock_session()  # a start that failed holds nothing: the next one may take the session
            raise
        logger.info(
            "%s: connected as %r (%s session), subscribed to %d filter(s)",
            self.address,
            self.address.client_id,
            "resumed" if self.client.session_present else "new",
            len(self.topic_filters()),
        )

    def _lock_session(self):
        """One process per client id on this machine: two would take the session from each other in turns
        (Mosquitto closes the older connection without saying why; it reconnects and does the same)."""
        folder = notes_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle = open(folder / f"client-{_safe(self.address.client_id)}.lock", "w")  # noqa: SIM115 (held)
        except OSError:
            return  # no place for the lock: nothing to compare with
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise BrokerError(
                f"{self.address}: another hub process on this machine already uses client id "
                f"{self.address.client_id!r} (its persistent session); give each worker its own: "
                "hubserver listen --client-id NAME, or CLIENT_ID"
            ) from None
        self._session_lock = handle

    def _unlock_session(self):
        if self._session_lock is not None:
            self._session_lock.close()
            self._session_lock = None

    def _check_dynsec(self):
        # The plugin answers in milliseconds; five seconds of silence means it is not there.
        with DynsecAdmin(self.address, timeout=5.0) as admin:
            admin.check()

    async def stop(self) -> None:
        """Take no new message, commit what was taken (its acknowledgements go out), then disconnect. The
        persistent session stays: what arrives meanwhile waits on the broker for the next start."""
        self.closing = True
        if self.client is None:
            return
        if self.hub is not None:
            await self.hub.router.flush()
        await asyncio.sleep(0)
        await self.client.disconnect()
        self._unlock_session()
        logger.info(
            "%s: disconnected (%d stored, %d refused)", self.address, self.counts["stored"], self.counts["refused"]
        )

    async def drain(self, idle=2.0):
        """Leave the share group for good (scaling down): unsubscribe, store what the session still holds
        and what is in flight, then end the session on the broker. Without this, a worker that never comes
        back keeps being dealt its share of the messages, which wait on the broker for its session."""
        await self.client.unsubscribe([*self.topic_filters(), *self._extra_topics])
        while True:
            received = self.counts["received"]
            await asyncio.sleep(idle)
            await self.hub.router.flush()
            if self.counts["received"] == received and not self._inbox:
                break
        await asyncio.sleep(0)  # the acknowledgements of the last commit
        self.closing = True
        await self.client.disconnect(end_session=True)
        logger.info("%s: drained; session %r ended", self.address, self.address.client_id)

    async def publish_to_device(
        self, client_id, topic, payload, *, qos=1, correlation_id="", response_topic="", user_properties=None
    ):
        if self.client is None or not self.client.connected:
            raise ConnectionError(f"{self.address} is not connected")
        properties = {"content_type": "application/json", **_properties(correlation_id, user_properties)}
        if response_topic:
            properties["response_topic"] = response_topic
        code = await self.client.publish(topic, payload, qos=qos, **properties)
        if code == NO_MATCHING_SUBSCRIBERS:
            raise ConnectionError(f"{client_id} does not subscribe to {topic} on {self.address} (offline?)")
        if code >= 0x80:
            raise ConnectionError(f"{self.address} refused the command to {client_id}: {reason_text(code)}")

    def is_connected(self, client_id, topic=None):
        """The broker knows; the hub only knows its own link: send, and the PUBACK tells."""
        return self.client is not None and self.client.connected

    def connected_devices(self):
        return []  # the broker keeps sessions; the hub sees messages, not connections

    async def end_session(self, mqtt_username):
        """Nothing to do here: on Mosquitto the account change (dynamic security) ends the session; EMQX
        asks the hub again at the device's next connection."""

    def stats(self):
        return {
            "connected": int(self.client is not None and self.client.connected),
            "devices": 0,
            "refused": {},
            "dropped": {k: v for k, v in self.counts.items() if k not in ("received", "stored")},
        }

    # Messages -------------------------------------------------------------------------------------------

    def _on_publish(self, topic, payload, qos, properties, mid):
        """Every message from the broker (on the loop, no task per message): queued for the router."""
        self.counts["received"] += 1
        if self._handler is not None or self.hub is None:  # seed API: the application's own handler
            try:
                if self._handler is not None:
                    self._handler(self, topic, payload, qos, properties)
            finally:
                if mid is not None:
                    self.client.ack(mid)
            return
        if self.closing:
            return  # not acknowledged: the broker sends it again to the next session
        parsed = parse_device_topic(topic, self._prefix)
        if parsed is None:
            self.counts["not_a_device_topic"] += 1
            if mid is not None:
                self.client.ack(mid)  # nothing to store, ever: do not have it sent again
            return
        # Only the flags: no MQTT 5 property (always so on the client's short path), nothing to convert.
        extra = message_properties(properties) if len(properties) > FLAGS else None
        self._inbox.append((parsed, payload, qos, mid, datetime.now(UTC), extra, 0))
        if mid is not None:
            self.unacknowledged += 1
            if self.unacknowledged >= RECEIVE_MAXIMUM and not self._paused:
                # Mosquitto 2.0 sends a subscriber more than its Receive Maximum from a queued session (28,000
                # unacknowledged were measured): stop reading until commits catch up; TCP holds the rest.
                self._paused = True
                self.counts["paused"] += 1
                self.client.pause_reading()
        self._wake_drain()

    def _wake_drain(self):
        if not self._draining:
            self._draining = True
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self):
        """Hand the queued messages to the router (it awaits only when its queue is full: back-pressure,
        and the broker stops sending once RECEIVE_MAXIMUM messages wait for their acknowledgement)."""
        router = self.hub.router
        try:
            while self._inbox:
                batch, self._inbox = self._inbox, []
                for item in batch:
                    parsed, payload, qos, _, received_at, properties, _ = item
                    try:
                        future = await router.submit(
                            parsed.kind,
                            parsed.type_name,
                            parsed.device_id,
                            payload,
                            qos=qos,
                            received_at=received_at,
                            client_id=f"{parsed.type_name}.{parsed.device_id}",
                            properties=properties,
                        )
                    except Exception as exc:
                        self._retry(item, exc)
                        continue
                    future.add_done_callback(partial(self._settled, item))
        finally:
            self._draining = False

    def _settled(self, item, future):
        """After commit: acknowledge (stored or refused for good), or keep it and try again."""
        if future.cancelled() or future.exception() is not None:
            self._retry(item, future.exception() if not future.cancelled() else "cancelled")
            return
        self.counts["stored" if future.result().stored else "refused"] += 1
        mid = item[3]
        if mid is not None and self.client is not None:
            self.unacknowledged = max(0, self.unacknowledged - 1)
            self.client.ack(mid)
            if self._paused and self.unacknowledged <= RECEIVE_MAXIMUM // 2:
                self._paused = False
                self.client.resume_reading()

    def _retry(self, item, error):
        """Not stored (the database refused the batch, the router is stopping): unacknowledged, submitted
        again after a pause; on stop the broker keeps it for the next session."""
        if self.closing or item[3] is None:
            self.counts["not_stored"] += 1
            return
        attempt = item[6]
        delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
        self.counts["retried"] += 1
        self._retry_log.warning(
            "retry", self.name, "%s: message not stored (%s); trying again in %d s", self.address, error, delay
        )

        def again():
            if not self.closing:
                self._inbox.append((*item[:6], attempt + 1))
                self._wake_drain()

        self.loop.call_later(delay, again)

    def _on_lost(self):
        self.counts["connection_lost"] += 1
        # The broker sends what was not acknowledged again on the next connection: count afresh.
        self.unacknowledged = 0
        self._paused = False

    # Seed 002's API (a connection of its own, on a thread) -----------------------------------------------

    def set_message_handler(self, callback):
        """``callback(broker, topic, payload, qos, properties)`` for every message, instead of the router."""
        self._handler = callback

    def connect(self):
        """Connect (blocking) and subscribe to every registered type's topics; the loop runs on a thread."""
        if self._thread is not None:
            return
        started = threading.Event()
        failure = []

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._stopped = asyncio.Event()

            async def main():
                try:
                    await self.start()
                except BaseException as exc:
                    failure.append(exc)
                    return
                finally:
                    started.set()
                await self._stopped.wait()
                await self.client.disconnect()

            loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"hubserver-broker-{self.name}", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def subscribe(self, topic, qos=1):
        if self.loop is None or self.client is None:
            self._extra_topics.append(topic)
            return
        asyncio.run_coroutine_threadsafe(self.client.subscribe([topic], qos=qos), self.loop).result(30)

    def publish(self, topic, payload, qos=1, correlation_id=None, user_properties=None, **kwargs):
        """Publish (blocking until the broker's PUBACK at QoS 1); returns the PUBACK's reason code."""
        if not isinstance(payload, (bytes, bytearray, str)):
            payload = orjson.dumps(payload)
        coroutine = self.client.publish(topic, payload, qos=qos, **_properties(correlation_id, user_properties))
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def loop_start(self):
        """The loop already runs on its thread once connected (paho's name, kept for seed code)."""
        if self._thread is None:
            raise BrokerError(f"{self.address}: connect() first")

    def loop_stop(self):
        self.disconnect()

    def loop_forever(self):
        if self._thread is None:
            self.connect()
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(1.0)

    def disconnect(self):
        if self._thread is None or self.loop is None:
            return
        self.closing = True
        self.loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)
        self._thread = None


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:200]


def message_properties(properties):
    """What a device's PUBLISH says about itself (content type, correlation data, user properties) as the
    router takes it, from the properties the client gives ``on_publish`` (gmqtt's decoding: each property
    as the list of its values); None when it carries none of the three."""
    content_type = properties.get("content_type")
    correlation = properties.get("correlation_data")
    pairs = properties.get("user_property")
    if not (content_type or correlation or pairs):
        return None
    return MessageProperties.from_mqtt(
        {
            "content_type": content_type[0] if content_type else "",
            "correlation_data": correlation[0] if correlation else None,
            "user_property": pairs,
        }
    )


def _properties(correlation_id, user_properties):
    properties = {}
    if correlation_id:
        properties["correlation_data"] = str(correlation_id).encode()
    if user_properties:
        properties["user_property"] = [(str(k), str(v)) for k, v in dict(user_properties).items()]
    return properties
