"""The real-server fixtures answer like the servers they are: a fresh PostgreSQL database, a Redis that
answers PING, and a Mosquitto whose dynamic-security plugin takes commands from the admin client and
refuses anonymous clients."""

import json
import threading
import urllib.parse
import uuid

import paho.mqtt.client as paho
import pytest

pytestmark = pytest.mark.slow


def test_each_postgres_database_is_fresh_and_writable(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        connection.execute("CREATE TABLE probe (id int)")
        connection.execute("INSERT INTO probe VALUES (1)")
        assert connection.execute("SELECT id FROM probe").fetchall() == [(1,)]


def test_redis_answers(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"probe-{uuid.uuid4().hex}"
    client.set(key, b"1", ex=10)
    assert client.get(key) == b"1"


def _connect(url, username=None, password=None):
    parts = urllib.parse.urlsplit(url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    if username is not None:
        client.username_pw_set(username, password)
    connected = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        connected.set()

    client.on_connect = on_connect
    client.connect(parts.hostname, parts.port)
    client.loop_start()
    assert connected.wait(10), "no CONNACK"
    return client, result["rc"]


def test_mosquitto_takes_dynamic_security_commands_from_its_admin(mosquitto_url):
    parts = urllib.parse.urlsplit(mosquitto_url)
    admin, rc = _connect(mosquitto_url, parts.username, urllib.parse.unquote(parts.password))
    try:
        assert not rc.is_failure
        answered = threading.Event()
        answers = []

        def on_message(client, userdata, message):
            answers.append(json.loads(message.payload))
            answered.set()

        admin.on_message = on_message
        admin.subscribe("$CONTROL/dynamic-security/v1/response", qos=1)
        admin.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": [{"command": "listClients"}]}), qos=1)
        assert answered.wait(10), "no answer from the dynamic-security plugin"
        clients = answers[0]["responses"][0]["data"]["clients"]
        assert parts.username in clients
    finally:
        admin.loop_stop()
        admin.disconnect()

    anonymous, rc = _connect(mosquitto_url)
    anonymous.loop_stop()
    assert rc.is_failure
