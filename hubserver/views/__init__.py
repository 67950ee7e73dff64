"""HTTP views of the hub's ``iot/`` URLs (``hubserver.urls``) and of ``/metrics``.

- ``broker_auth``: ``POST /iot/broker/auth/`` and ``/iot/broker/acl/``, the HTTP adapter of the access
  layer for an external broker (EMQX).
- ``ingest``: ``POST /iot/devices/<type>/<device_id>/data/`` and ``status/``, device messages over HTTP
  into the same MessageRouter entry point MQTT uses.
- ``metrics``: the Prometheus text exposition of the hub's counters.

Submodules are imported by the URLconfs, not here, so importing this package stays cheap.
"""
