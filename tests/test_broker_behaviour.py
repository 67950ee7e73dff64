"""The broker corrections of HubBroker.

Every test runs twice (the ``broker`` fixture of tests/brokers.py): against the hub's broker, and against
stock amqtt 0.12.1 with the same auth and ACL plugins. The stock runs are expected to fail (strict xfail):
if one passes, amqtt fixed the behaviour upstream and the override can go.
"""

import asyncio
import contextlib

import pytest
from amqtt.broker import Broker

from tests.mqtt import RawClient, _string

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow  # waits 1.5 keepalives of 1 s
async def test_a_silent_client_is_disconnected_after_one_and_a_half_keepalives(broker, service, clients):
    watcher = clients(broker.port, "watcher", *service)
    await watcher.connect()
    await watcher.subscribe("lab/will", qos=0)
    silent = RawClient(broker.port)
    code, _ = await silent.connect("silent", *service, keepalive=1, will=("lab/will", b"gone", 0))
    assert code == 0
    try:
        assert await silent.closed(timeout=4), "the broker must drop a client silent for 1.5x its keepalive"
        messages = await watcher.wait_messages(1)
        assert messages[0].payload == b"gone"
    finally:
        silent.close()


async def test_a_persistent_session_keeps_subscriptions_and_queues_qos1_without_retain(broker, service, clients):
    first = clients(broker.port, "keeper", *service, clean_session=False)
    await first.connect()
    await first.subscribe("lab/p", qos=1)
    await first.disconnect()
    await broker.publish("lab/p", b"while you were away", qos=1)
    second = clients(broker.port, "keeper", *service, clean_session=False)
    await second.connect()
    assert second.session_present
    messages = await second.wait_messages(1)
    assert (messages[0].payload, messages[0].qos) == (b"while you were away", 1)
    assert messages[0].retain is False, "a queued message is not a retained message [MQTT-3.3.1-9]"


async def test_unacknowledged_qos1_is_sent_again_on_reconnect(broker, service):
    raw = RawClient(broker.port)
    await raw.connect("forgetful", *service, clean_session=False)
    assert await raw.subscribe("lab/r", qos=1) == 1
    await broker.publish("lab/r", b"important", qos=1)
    topic, payload, qos, dup, _ = await raw.read_publish()
    assert (topic, payload, qos, dup) == ("lab/r", b"important", 1, False)
    raw.close()  # gone without PUBACK
    await asyncio.sleep(0.3)
    again = RawClient(broker.port)
    try:
        code, present = await again.connect("forgetful", *service, clean_session=False)
        assert (code, present) == (0, True)
        topic, payload, qos, dup, packet_id = await again.read_publish(timeout=5)
        assert (topic, payload, qos, dup) == ("lab/r", b"important", 1, True)
        await again.puback(packet_id)
    finally:
        again.close()


async def test_retained_messages_only_for_the_clients_own_new_subscription(broker, service, clients):
    await broker.publish("lab/ret/a", b"A", qos=1, retain=True)
    await broker.publish("lab/other", b"O", qos=1, retain=True)
    other = clients(broker.port, "other", *service)
    await other.connect()
    await other.subscribe("lab/#", qos=1)
    newcomer = clients(broker.port, "newcomer", *service)
    await newcomer.connect()
    await asyncio.sleep(0.5)
    assert newcomer.messages == [], "no retained messages for filters the client did not subscribe to"
    await newcomer.subscribe("lab/ret/+", qos=0)
    messages = await newcomer.wait_messages(1)
    await asyncio.sleep(0.2)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in newcomer.messages] == [("lab/ret/a", b"A", 0, True)]
    assert messages


async def test_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(broker, service, clients):
    client = clients(broker.port, "overlap", *service)
    await client.connect()
    await client.subscribe("lab/o/#", qos=0)
    await client.subscribe("lab/o/+", qos=1)
    await broker.publish("lab/o/x", b"once", qos=1)
    await client.wait_messages(1)
    await asyncio.sleep(0.3)
    assert [(m.payload, m.qos) for m in client.messages] == [(b"once", 1)]


async def test_delivery_qos_is_the_lower_of_publish_and_subscription(broker, service, clients):
    subscriber = clients(broker.port, "sub", *service)
    await subscriber.connect()
    await subscriber.subscribe("lab/q", qos=1)
    publisher = clients(broker.port, "pub", *service)
    await publisher.connect()
    await publisher.publish("lab/q", b"best effort", qos=0)
    messages = await subscriber.wait_messages(1)
    assert messages[0].qos == 0


async def test_subscribing_again_replaces_the_qos(broker, service, clients):
    client = clients(broker.port, "resub", *service)
    await client.connect()
    assert await client.subscribe("lab/s", qos=0) == 0
    assert await client.subscribe("lab/s", qos=1) == 1
    publisher = clients(broker.port, "resub-pub", *service)
    await publisher.connect()
    await publisher.publish("lab/s", b"x", qos=1)
    assert (await client.wait_messages(1))[0].qos == 1


async def test_a_bad_connect_cannot_take_over_a_live_session(broker, service, clients):
    victim = clients(broker.port, "victim", *service)
    await victim.connect()
    await victim.subscribe("lab/v", qos=1)
    intruder = clients(broker.port, "victim", "svc", "wrong")
    assert await intruder.connect(expect_success=False) != 0
    await broker.publish("lab/v", b"still here", qos=1)
    assert (await victim.wait_messages(1, timeout=3))[0].payload == b"still here"


async def test_matching_does_not_scan_every_subscription(broker, service, clients, monkeypatch):
    client = clients(broker.port, "many", *service)
    await client.connect()
    for n in range(200):
        client.paho.subscribe(f"lab/m/{n}", 0)
    assert await client.subscribe("lab/m/+/deep", qos=0) == 0
    calls = []
    original = Broker._matches
    monkeypatch.setattr(Broker, "_matches", lambda self, topic, f: calls.append(f) or original(self, topic, f))
    await broker.publish("lab/m/7", b"x", qos=0)
    await client.wait_messages(1)
    assert len(calls) < 10, f"{len(calls)} filters were tested for one publish"


@pytest.mark.max_connections(2)
async def test_connections_over_the_limit_are_refused_at_once(broker, service, clients):
    for n in range(2):
        await clients(broker.port, f"c{n}", *service).connect()
    extra = RawClient(broker.port)
    extra.reader, extra.writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        assert await extra.closed(timeout=3), "the connection over the limit must be closed, not left waiting"
    finally:
        extra.close()


@pytest.mark.parametrize("broker", ["hub"], indirect=True)  # stock amqtt does this too: no override
async def test_a_refused_subscription_gets_0x80_and_the_connection_stays_usable(broker, service):
    raw = RawClient(broker.port)
    try:
        assert (await raw.connect("picky", *service))[0] == 0
        assert await raw.subscribe("lab/#/bad", qos=1, packet_id=1) == 0x80  # '#' not last: malformed
        assert await raw.subscribe("lab/fine", qos=1, packet_id=2) == 1
        await broker.publish("lab/fine", b"ok", qos=1)
        topic, payload, *_ = await raw.read_publish()
        assert (topic, payload) == ("lab/fine", b"ok")
    finally:
        raw.close()


async def test_a_reconnect_storm_is_queued_by_the_kernel_not_dropped(broker):
    """With the event loop busy, the kernel still completes handshakes up to the listen backlog: 300 devices
    connecting at once must all get through (stock amqtt listens with asyncio's default backlog of 100)."""
    import socket

    with open("/proc/sys/net/core/somaxconn") as limit:
        assert int(limit.read()) >= 300, "net.core.somaxconn caps every listen backlog below this test's storm"
    opened = []
    try:
        for _ in range(300):  # deliberately blocking: the broker's loop cannot accept meanwhile
            opened.append(socket.create_connection(("127.0.0.1", broker.port), timeout=0.5))
    except OSError as exc:
        raise AssertionError(f"connection {len(opened) + 1} of 300 failed: {exc}") from exc
    finally:
        for sock in opened:
            sock.close()


# --- the CONNECT phase: bounded in time and size, every socket counted and closed ------------------------


async def _open(port):
    raw = RawClient(port)
    raw.reader, raw.writer = await asyncio.open_connection("127.0.0.1", port)
    return raw


HALF_CONNECT = bytes([0x10, 40]) + b"\x00\x04MQTT\x04\x02\x00\x3c"  # announces 40 bytes, sends 10


@pytest.mark.parametrize("hub_settings_override", [{"CONNECT_TIMEOUT": 0.5}], indirect=True)
async def test_a_connection_that_does_not_complete_its_connect_is_closed_after_the_connect_timeout(broker):
    raw = await _open(broker.port)
    try:
        raw.writer.write(HALF_CONNECT)
        assert await raw.closed(timeout=5), "a half-sent CONNECT must not hold a socket past CONNECT_TIMEOUT"
    finally:
        raw.close()


async def test_a_connect_cut_short_by_the_client_is_closed_not_left_in_close_wait(broker):
    """The client sends the first byte of a CONNECT and shuts its sending side: the hub must close its side
    too (else the socket sits in CLOSE_WAIT until garbage collection)."""
    raw = await _open(broker.port)
    try:
        raw.writer.write(bytes([0x10]))
        raw.writer.write_eof()
        assert await raw.closed(timeout=3)
    finally:
        raw.close()


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(bytes([0x30, 7]) + b"\x00\x03a/b" + b"hi", id="publish"),
        pytest.param(bytes([0x82, 6, 0, 1, 0, 1]) + b"a" + b"\x00", id="subscribe"),
        pytest.param(bytes([0xC0, 0]), id="pingreq"),
        pytest.param(bytes([0x00, 0]), id="reserved-0"),
        pytest.param(bytes([0xF0, 0]), id="reserved-15"),
        pytest.param(bytes([0x10, 0]), id="empty-connect"),
    ],
)
async def test_a_first_packet_that_is_not_a_valid_connect_closes_the_connection(broker, first):
    """[MQTT-3.1.0-1]: the first packet from the client to the server MUST be a CONNECT."""
    raw = await _open(broker.port)
    try:
        raw.writer.write(first)
        assert await raw.closed(timeout=3)
    finally:
        raw.close()


async def test_mqtt_3_1_gets_connack_0x01_and_is_closed(broker):
    """[MQTT-3.1.2-2]: an unsupported protocol level gets CONNACK return code 0x01, then the connection closes.
    (The hub speaks MQTT 3.1.1 and 5; plugins/connect.py decides.)"""
    await _refused_protocol(broker, "MQIsdp", 3)


@pytest.mark.parametrize("broker", ["hub"], indirect=True)  # stock amqtt answers this one too
async def test_an_unknown_protocol_level_gets_connack_0x01_and_is_closed(broker):
    await _refused_protocol(broker, "MQTT", 6)


async def _refused_protocol(broker, name, level):
    body = _string(name) + bytes([level, 0x02]) + b"\x00\x3c" + _string("old")
    raw = await _open(broker.port)
    try:
        raw.writer.write(bytes([0x10, len(body)]) + body)
        packet_type, data = await raw.read_packet(timeout=3)
        assert (packet_type, data[1]) == (2, 0x01)
        assert await raw.closed(timeout=3)
    finally:
        raw.close()


@pytest.mark.parametrize("hub_settings_override", [{"MAX_CONNECT_SIZE": 1024}], indirect=True)
async def test_a_connect_over_max_connect_size_is_closed_before_it_is_read(broker):
    raw = await _open(broker.port)
    try:
        raw.writer.write(bytes([0x10]) + b"\x80\x80\x04")  # a CONNECT of 65,536 bytes; none of them sent
        assert await raw.closed(timeout=3)
    finally:
        raw.close()


@pytest.mark.max_connections(2)
async def test_sockets_that_have_not_sent_a_connect_count_against_the_connection_limit(broker, service):
    silent = [await _open(broker.port) for _ in range(2)]
    late = RawClient(broker.port)
    try:
        await asyncio.sleep(0.2)
        late.reader, late.writer = await asyncio.open_connection("127.0.0.1", broker.port)
        assert await late.closed(timeout=3), "two open sockets are the limit, CONNECT or not"
    finally:
        late.close()
        for raw in silent:
            raw.close()


@pytest.mark.parametrize("hub_settings_override", [{"MAX_PACKET_SIZE": 65536}], indirect=True)
async def test_a_packet_over_max_packet_size_closes_the_connection_before_its_body_is_read(broker, service):
    raw = RawClient(broker.port)
    try:
        assert (await raw.connect("big", *service))[0] == 0
        raw.writer.write(bytes([0x32]) + b"\x80\x80\x80\x01")  # a PUBLISH of 2 MiB; only its header is sent
        assert await raw.closed(timeout=3)
    finally:
        raw.close()


# Hub only: the correction is in the auth plugin (is_anonymous), which the stock runs share.
@pytest.mark.slow  # waits for amqtt's session monitor
@pytest.mark.parametrize("broker", ["hub"], indirect=True)
@pytest.mark.parametrize("hub_settings_override", [{"ALLOW_ANONYMOUS": True}], indirect=True)
async def test_an_anonymous_client_asking_for_a_persistent_session_gets_one(broker, clients):
    """[MQTT-3.1.2-4]: with clean session 0 the server keeps the session (subscriptions, QoS 1 messages)
    after the client disconnects, whoever the client is."""
    first = clients(broker.port, "anon-keeper", clean_session=False)
    await first.connect()
    await first.subscribe("lab/anon", qos=1)
    await first.disconnect()
    await asyncio.sleep(1.5)  # amqtt's session monitor runs every second
    await broker.publish("lab/anon", b"kept for you", qos=1)
    second = clients(broker.port, "anon-keeper", clean_session=False)
    await second.connect()
    assert second.session_present
    assert (await second.wait_messages(1))[0].payload == b"kept for you"


@pytest.mark.parametrize("hub_settings_override", [{"MAX_INFLIGHT_MESSAGES": 5}], indirect=True)
async def test_a_subscriber_has_at_most_the_inflight_window_unacknowledged(broker, service):
    """EMQX's max_inflight, Mosquitto's max_inflight_messages: a client that acknowledges nothing holds five
    messages, not all of them; each PUBACK lets the next one go."""
    raw = RawClient(broker.port)
    try:
        assert (await raw.connect("slow-reader", *service))[0] == 0
        assert await raw.subscribe("lab/window", qos=1) == 1
        for n in range(20):
            await broker.publish("lab/window", b"%d" % n, qos=1)
        received = []
        with contextlib.suppress(TimeoutError):
            while True:
                received.append(await raw.read_publish(timeout=1.0))
        assert len(received) == 5
        await raw.puback(received[0][4])
        _, payload, *_ = await raw.read_publish(timeout=3)
        assert payload == b"5"
    finally:
        raw.close()
