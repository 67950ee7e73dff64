"""MQTT 5.0 for the embedded broker: the packet codec (``codec``, ``properties``, ``reasons``)."""
