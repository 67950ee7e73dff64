"""Broker engines: how MQTT traffic reaches the MessageRouter. The embedded engine runs amqtt in the hub's
own event loop; the running engine is reachable here for the parts of the hub that publish (commands)."""

_engine = None


def get_engine():
    """The engine ``hubserver run`` started in this process, or None."""
    return _engine


def set_engine(engine):
    global _engine
    _engine = engine
