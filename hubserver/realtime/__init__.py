"""Live views of the hub: a WebSocket protocol at ``/ws/hub/``, Server-Sent Events and polling under ``iot/``.

The protocol: server events in ``events``, client events in ``consumers``, error and close codes in
``errors``, SSE in ``sse``, polling in ``views``, the channel-layer message in ``fanout``. The pieces:

| module | what |
|---|---|
| ``events`` | event dicts (``reading``, ``status``, ``connection``, ``command``) from results, changes and rows |
| ``fanout`` | the listeners of the router's commits and of command changes: one channel-layer message per group |
| ``consumers`` | ``HubConsumer``: receive -> ``EVENT_MAP`` -> permission decorators -> handler |
| ``permissions`` / ``errors`` | ``@requires_view``, ``@requires_change``; structured errors |
| ``auth`` | ``TokenAuthMiddleware`` / ``HubAuthMiddlewareStack`` for WebSockets; request auth for SSE and polling |
| ``sse`` / ``views`` | the SSE stream and the polling view; ``urls`` mounts them, ``routing`` the WebSocket |
"""
