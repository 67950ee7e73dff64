"""The amqtt side of the hub: auth, topic ACL and the bridge into the MessageRouter."""
