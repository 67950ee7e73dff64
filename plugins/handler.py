"""The hub's MQTT protocol handler: amqtt's ``BrokerProtocolHandler`` with small, labelled corrections."""

import asyncio
import logging

from amqtt.mqtt.protocol.handler import INCOMING, OUTGOING
from amqtt.mqtt.puback import PubackPacket

from hubserver.routing.throttle import clip

from .bridge import Outcome
from .reader import FastReaderHandler

logger = logging.getLogger("hubserver.mqtt")
_amqtt_logger = logging.getLogger("amqtt.mqtt.protocol.handler")


class HubProtocolHandler(FastReaderHandler):
    """Installed on every session by ``HubBroker``; ``bridge`` is the RouterBridge it hands PUBLISHes to.

    Device PUBLISHes at QoS 0/1 take the reader's short path (plugins/reader.py); the flows below handle
    the rest (QoS 2, RETAIN, service clients)."""

    # Upstream (ProtocolHandler._init_session): each connection gets a LoggerAdapter (~0.8 KB) only to add a
    # client_id extra that the hub's log format does not print, and a write-keepalive timer (start and
    # _send_packet, re-armed on every packet sent) for handle_write_timeout, which does nothing in a broker.
    # Here: amqtt's handler logger itself, and no write timer (the read keepalive is the reader's watchdog).
    def _init_session(self, session):
        super()._init_session(session)
        self.logger = _amqtt_logger
        self.keepalive_timeout = None

    # Upstream (handler.py, _reader_loop / broker_handler.handle_read_timeout): a read timeout is ignored, so a
    # silent client is never disconnected. HubBroker sets the read timeout to 1.5x keepalive; here the
    # timeout ends the reader, which closes the connection and publishes the will.
    def handle_read_timeout(self):
        logger.info(
            "%s silent for 1.5x its keepalive; disconnecting", clip(self.session.client_id if self.session else "?")
        )
        if self._reader_task is not None:
            self._reader_task.cancel()

    # Upstream (ProtocolHandler.mqtt_publish): every QoS 1/2 delivery is sent at once, whatever the client has
    # not acknowledged yet, each waiting in a task of its own: a subscriber that never acknowledges holds
    # every message sent to it. Here at most MAX_INFLIGHT_MESSAGES are unacknowledged (EMQX's max_inflight,
    # Mosquitto's max_inflight_messages); the next MAX_QUEUED_MESSAGES wait their turn; beyond, a delivery
    # is dropped, counted and logged once a minute.
    async def mqtt_publish(self, topic, data, qos, retain, ack_timeout=None, properties=None):
        if not qos:
            return await self._send_publish(topic, data, qos, retain, ack_timeout, properties)
        limits = self.limits
        window = self._window
        if window is None:
            window = self._window = asyncio.Semaphore(self._window_size())
        if limits is not None and window.locked() and self._queued_out >= limits.max_queued:
            self._drop_delivery()
            return None
        self._queued_out += 1
        try:
            await window.acquire()
        finally:
            self._queued_out -= 1
        try:
            return await self._send_publish(topic, data, qos, retain, ack_timeout, properties)
        finally:
            window.release()

    _window = None  # made on the first QoS 1/2 delivery
    _queued_out = 0  # deliveries waiting for the window (QoS 1/2) or for the write lock (QoS 0)

    def _drop_delivery(self):
        self.counters.drop(
            self.session.client_id if self.session else None,
            "queue_full",
            "%s has %d messages waiting to be sent: dropping new ones",
            clip(self.session.client_id if self.session else None),
            self._queued_out,
        )

    def _window_size(self):
        """Unacknowledged QoS 1/2 deliveries at a time (MQTT 5 also honours the client's Receive Maximum)."""
        return self.limits.max_inflight if self.limits else 32

    async def _send_publish(self, topic, data, qos, retain, ack_timeout, properties):
        """Send one delivery (amqtt's flows; ``properties`` are MQTT 5's, which 3.1.1 cannot carry)."""
        return await super().mqtt_publish(topic, data, qos, retain, ack_timeout)

    async def _accept_inbound(self, app_message):
        """Store via the bridge; on an error close the connection without acknowledging (the client resends)."""
        try:
            return await self.bridge.inbound(self.session, app_message)
        except Exception as exc:
            self.counters.close(
                self.session.client_id,
                "not_stored",
                "%s: message on %s not stored (%s); closing the connection unacknowledged",
                clip(self.session.client_id),
                clip(app_message.topic),
                exc,
            )
            if self._reader_task is not None:
                self._reader_task.cancel()
            raise

    # Upstream (_handle_qos0_message_flow): every QoS 0 message goes straight to the broker; every QoS 0
    # delivery waits in a task of its own for the connection's write lock, which a client that does not
    # read holds for ever (its write waits for room): each message sent to it was held. Here a QoS 0
    # delivery waits only if fewer than MAX_QUEUED_MESSAGES deliveries already do; beyond, it is dropped.
    async def _handle_qos0_message_flow(self, app_message):
        if app_message.direction == OUTGOING and self._write_lock.locked():
            limits = self.limits
            if limits is not None and self._queued_out >= limits.max_queued:
                self._drop_delivery()
                return None
            self._queued_out += 1
            try:
                return await super()._handle_qos0_message_flow(app_message)
            finally:
                self._queued_out -= 1
        if app_message.direction == INCOMING and self.bridge is not None:
            if app_message.publish_packet is not None and app_message.publish_packet.dup_flag:
                return await super()._handle_qos0_message_flow(app_message)  # upstream logs and ignores it
            try:
                if await self._accept_inbound(app_message) is not Outcome.DELIVER:
                    return None
            except Exception:
                return None
        return await super()._handle_qos0_message_flow(app_message)

    # Upstream (_handle_qos1_message_flow): PUBACK is sent as soon as the packet is read, before any check
    # or storage, and an outgoing message waiting for its PUBACK is dropped after 5 s or at disconnect.
    async def _handle_qos1_message_flow(self, app_message):
        if app_message.direction == INCOMING and self.bridge is not None:
            outcome = await self._accept_inbound(app_message)  # raises: no PUBACK
            if outcome is Outcome.DELIVER:
                await self.session.delivered_message_queue.put(app_message)
            puback = PubackPacket.build(app_message.packet_id)
            await self._send_packet(puback)
            app_message.puback_packet = puback
            return None
        if app_message.direction == OUTGOING:
            return await self._send_qos1(app_message)
        return await super()._handle_qos1_message_flow(app_message)

    async def _send_qos1(self, app_message):
        """Send and wait for PUBACK as long as the connection lives; on disconnect a persistent session keeps
        the message in flight, and the next connection sends it again with DUP set [MQTT-4.4.0-1]."""
        session = self.session
        session.inflight_out[app_message.packet_id] = app_message
        packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
        waiter = asyncio.get_running_loop().create_future()
        self._puback_waiters[app_message.packet_id] = waiter
        acknowledged = False
        try:
            await self._send_packet(packet)
            app_message.publish_packet = packet
            app_message.puback_packet = await waiter
            acknowledged = True
        finally:
            self._puback_waiters.pop(app_message.packet_id, None)
            if acknowledged or session.clean_session:
                session.inflight_out.pop(app_message.packet_id, None)

    # Upstream (_handle_qos2_message_flow): PUBREC is sent before any check or storage.
    async def _handle_qos2_message_flow(self, app_message):
        if app_message.direction == INCOMING and self.bridge is not None and app_message.pubrec_packet is None:
            outcome = await self._accept_inbound(app_message)  # raises: no PUBREC
            if outcome is not Outcome.DELIVER:
                await self._complete_dropped_qos2(app_message)
                return None
        return await super()._handle_qos2_message_flow(app_message)

    async def _complete_dropped_qos2(self, app_message):
        """Finish the QoS 2 exchange for a message that is not delivered, so the client stops resending it."""
        from amqtt.mqtt.pubcomp import PubcompPacket
        from amqtt.mqtt.pubrec import PubrecPacket

        waiter = asyncio.get_running_loop().create_future()
        self._pubrel_waiters[app_message.packet_id] = waiter
        try:
            await self._send_packet(PubrecPacket.build(app_message.packet_id))
            await waiter
            await self._send_packet(PubcompPacket.build(app_message.packet_id))
        finally:
            self._pubrel_waiters.pop(app_message.packet_id, None)
