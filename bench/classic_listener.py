"""The classic pipeline's listener: a separate process, paho-mqtt subscribed to a broker (Debian's
Mosquitto in ``bench/peers.py``), that saves each message through the Django ORM, one message at a time.

Django is set up with the hub's own settings (``hubserver.settings``) on the data directory given in
``HUBSERVER_DATA_DIR`` (``--data-dir``), a fresh one: it is migrated at start. For EACH message on
``<prefix>/+/+/data`` (QoS 1), in paho's callback, as django-devicehub's ``iot_listen`` does:

1. parse the topic and the JSON payload;
2. look the device up (``WeatherStationDevice.objects.get(device_id=..., is_active=True)``);
3. ``WeatherStationMessage.objects.create(...)`` (the audit trail, ``processing_status="completed"``);
4. ``WeatherStationReading.objects.create(...)`` with the declared readings.

Autocommit: every create is its own transaction; nothing is batched. paho acknowledges the message to the
broker when the callback returns. The devices (``--devices-file``, a JSON list of provisioning records or of
device ids) are created before it subscribes. It prints ``classic_listener ready`` once subscribed, and
``classic_listener stored=N failed=F`` when stopped (SIGTERM or Ctrl+C).
"""

import argparse
import json
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def setup_django(data_dir):
    os.environ["HUBSERVER_DATA_DIR"] = str(data_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "hubserver.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def device_ids(path):
    records = json.loads(Path(path).read_text())
    return [r["device_id"] if isinstance(r, dict) else str(r) for r in records]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Classic pipeline listener: paho + one ORM save per message.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--data-dir", required=True, help="a fresh data directory for this listener's database")
    parser.add_argument("--devices-file", required=True, help="JSON list of devices (provisioning output) to create")
    parser.add_argument("--topic-prefix", default="things")
    parser.add_argument("--username", help="the broker account, when the broker wants one")
    parser.add_argument("--password", help="its password")
    args = parser.parse_args(argv)
    if args.host not in LOCAL_HOSTS:
        parser.error("the classic listener connects to 127.0.0.1 only")

    setup_django(args.data_dir)
    import paho.mqtt.client as mqtt
    from django.db import close_old_connections
    from hubserver.devicetypes.models import WeatherStationDevice, WeatherStationMessage, WeatherStationReading

    declared = [f.name for f in WeatherStationReading._meta.local_fields if f.name not in {"id", "device"}]
    declared = [name for name in declared if name not in {"timestamp", "received_at"}]
    ids = device_ids(args.devices_file)
    existing = set(WeatherStationDevice.objects.filter(device_id__in=ids).values_list("device_id", flat=True))
    WeatherStationDevice.objects.bulk_create(
        [WeatherStationDevice(device_id=i, name=i) for i in ids if i not in existing], batch_size=500
    )

    counts = {"stored": 0, "failed": 0}
    ready = threading.Event()
    stop = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(f"{args.topic_prefix}/+/+/data", qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        ready.set()
        print("classic_listener ready", flush=True)

    def on_message(client, userdata, message):
        # One message, one lookup, two INSERTs, each committed on its own: the classic design.
        try:
            parts = message.topic.split("/")
            device = WeatherStationDevice.objects.get(device_id=parts[-2], is_active=True)
            payload = json.loads(message.payload)
            now = datetime.now(UTC)
            WeatherStationMessage.objects.create(
                device=device,
                topic=message.topic,
                payload_json=payload,
                processing_status="completed",
                received_at=now,
                processed_at=now,
            )
            values = {name: payload[name] for name in declared if isinstance(payload.get(name), int | float)}
            WeatherStationReading.objects.create(device=device, timestamp=now, received_at=now, **values)
            counts["stored"] += 1
        except Exception as exc:  # a classic listener logs and goes on
            counts["failed"] += 1
            if counts["failed"] <= 5:
                print(f"classic_listener: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            close_old_connections()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"classic-listener-{os.getpid()}")
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    if args.username:
        client.username_pw_set(args.username, args.password)
    client.connect(args.host, args.port, keepalive=60)

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    client.loop_start()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        client.disconnect()
        client.loop_stop()
        print(f"classic_listener stored={counts['stored']} failed={counts['failed']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
