"""Micro-benchmark of the MQTT 5 codec (plugins/mqtt5/codec.py): decode and encode of a device's QoS 1
PUBLISH, without and with properties, next to amqtt's MQTT 3.1.1 PublishPacket for scale.

    python bench/mqtt5_codec.py [--number 200000]

Prints one line per case: microseconds per call (best of 5 rounds).
"""

import argparse
import asyncio
import timeit

from amqtt.adapters import BufferReader
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.publish import PublishPacket
from hubserver.plugins.mqtt5 import codec

TOPIC = "things/weatherstation/ws-001/data"
PAYLOAD = b'{"temperature":21.5,"humidity":40.1,"pressure":1001.2}'
PROPERTIES = {
    "payload_format_indicator": 1,
    "content_type": "application/json",
    "correlation_data": b"4f1c2a9e",
    "user_property": [("site", "roof")],
}


def best(fn, number):
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per round")
    number = parser.parse_args(argv).number
    plain = codec.Publish(TOPIC, PAYLOAD, qos=1, packet_id=17)
    rich = codec.Publish(TOPIC, PAYLOAD, qos=1, packet_id=17, properties=PROPERTIES)
    for name, packet in (("no properties", plain), ("4 properties", rich)):
        data = codec.encode(packet)
        first, body, _ = codec.split(data)
        props = packet.properties
        decode = best(lambda f=first, b=body: codec.decode(f, b), number)
        encode = best(lambda p=packet: codec.encode(p), number)
        direct = best(lambda p=props: codec.encode_publish(TOPIC, PAYLOAD, 1, False, False, 17, p), number)
        print(f"mqtt5 codec decode PUBLISH ({name}, {len(data)} bytes): {decode:.2f} us")
        print(f"mqtt5 codec encode PUBLISH ({name}): {encode:.2f} us")
        print(f"mqtt5 codec encode_publish ({name}): {direct:.2f} us")
    # amqtt's MQTT 3.1.1 packet classes, which the hub's reader uses for everything but device PUBLISHes.
    v4 = PublishPacket.build(TOPIC, PAYLOAD, 17, False, 1, False)
    loop = asyncio.new_event_loop()
    raw = loop.run_until_complete(_bytes(v4))
    fixed = MQTTFixedHeader(raw[0] >> 4, raw[0] & 0x0F, len(raw) - 2)

    def amqtt_decode():
        loop.run_until_complete(PublishPacket.from_stream(BufferReader(raw[2:]), fixed_header=fixed))

    rounds = max(number // 10, 1000)
    print(f"amqtt 3.1.1 decode PUBLISH (for scale, {len(raw)} bytes): {best(amqtt_decode, rounds):.2f} us")
    print(f"amqtt 3.1.1 encode PUBLISH (for scale): {best(v4.to_bytes, rounds):.2f} us")
    loop.close()


async def _bytes(packet):
    return packet.to_bytes()


if __name__ == "__main__":
    main()
