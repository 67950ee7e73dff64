"""Broker engines: how MQTT traffic reaches the MessageRouter and commands reach devices.

``base.BaseBroker`` is the interface; ``embedded.EmbeddedBroker`` runs amqtt in the hub's own event loop;
``loading`` reads ``BROKERS`` and loads each entry's ``ENGINE``. The running engines belong to the hub
(``hubserver.hub.running_hub()``).
"""
