"""The DASF topic broker: the WebSocket message broker of the Data Analytics Software Framework, served by
the hub on its HTTP port, so that DASF backends and clients (``demessaging``) run against ``hubserver run``.

| module | what |
|---|---|
| ``models`` | ``BrokerTopic``, ``BrokerMessage``, ``ResponseTopic`` and their permissions |
| ``consumers``, ``routing`` | the WebSocket protocol (producers, consumers, ``status-ping``) |
| ``service`` | the engine: writer, delivery, pings, garbage collection |
| ``grants`` | the in-memory permission snapshot |
| ``views``, ``urls`` | ``<slug>/status/`` and ``<slug>/ping/`` |
| ``admin`` | topics, response topics and messages in the admin |
| ``app_settings`` | ``DASF_*`` settings |

``docs/topics.md`` describes the protocol and how to run a DASF backend against the hub.
"""
