"""Two ``hubserver run`` processes on one database and a Redis channel layer: a DASF message produced on
one reaches a consumer connected to the other, once, and its acknowledgement there lets it go."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import websocket

from tests.mqtt import free_port
from tests.test_dasf_demessaging import SETUP

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (Debian's redis-server)"),
]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)


class Process:
    def __init__(self, data_dir, redis_url):
        self.http_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_"))}
        env.update(
            {
                "HUBSERVER_DATA_DIR": str(data_dir),
                "DASF_TEST_REDIS_URL": redis_url,
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env = env
        self.output = []
        command = [sys.executable, "-m", "django", "run", "--settings", "tests.dasf_redis_settings"]
        command += ["--host", "127.0.0.1", "--http-port", str(self.http_port), "--mqtt-port", str(free_port())]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True).start()
        deadline = time.monotonic() + 90
        while not any("hubserver is running" in line for line in self.output):
            assert self.process.poll() is None and time.monotonic() < deadline, "".join(self.output)
            time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def test_a_message_crosses_hub_processes_through_redis(tmp_path, redis_url):
    data_dir = tmp_path / "data"
    first = Process(data_dir, redis_url)
    second = None
    try:
        second = Process(data_dir, redis_url)
        out = subprocess.run(
            [sys.executable, "-m", "django", "shell", "--settings", "tests.dasf_redis_settings", "-c", SETUP],
            env=first.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        tokens = json.loads(out.stdout.strip().splitlines()[-1])
        consumer = websocket.create_connection(
            f"ws://127.0.0.1:{second.http_port}/ws/calc/backend/",
            header=[f"Authorization: Token {tokens['backend']}"],
            timeout=20,
        )
        assert json.loads(consumer.recv())["properties"]["messageType"] == "api_info"  # nothing was waiting
        producer = websocket.create_connection(
            f"ws://127.0.0.1:{first.http_port}/ws/calc/",
            header=[f"Authorization: Token {tokens['client']}"],
            timeout=20,
        )
        message_id = str(uuid.uuid4())
        producer.send(json.dumps({"messageId": message_id, "properties": {"messageType": "request"}, "payload": "x"}))
        assert json.loads(producer.recv()) == {"messageId": message_id, "result": "ok"}
        got = json.loads(consumer.recv())
        assert got["messageId"] == message_id and got["payload"] == "x"
        consumer.send(json.dumps({"messageId": message_id}))
        consumer.settimeout(1)
        with pytest.raises(websocket.WebSocketTimeoutException):
            consumer.recv()  # once: not again through the layer
        deadline = time.monotonic() + 10
        while _stored(data_dir):
            assert time.monotonic() < deadline, "the acknowledged message was not deleted"
            time.sleep(0.1)
        producer.close()
        consumer.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def _stored(data_dir):
    import sqlite3

    with sqlite3.connect(data_dir / "hubserver.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM dasf_broker_brokermessage").fetchone()[0]
