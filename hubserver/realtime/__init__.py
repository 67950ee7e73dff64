"""Live views of the hub: a WebSocket protocol at ``/ws/hub/``, Server-Sent Events and polling under ``iot/``.

The protocol: server events in ``events``, client events in ``consumers``, error and close codes in
``errors``, SSE in ``sse``, polling in ``views``, the channel-layer message in ``fanout``. The pieces:

| module | what |
|---|---|
| ``events`` | event dicts (``reading``, ``status``, ``connection``, ``command``) from RouteResults and rows |
| ``fanout`` | the commit listener (one channel-layer message per batch and group), ``publish_command_event`` |
| ``consumers`` | ``HubConsumer``: receive -> ``EVENT_MAP`` -> permission decorators -> handler |
| ``permissions`` / ``errors`` | ``@requires_view``, ``@requires_change``; structured errors |
| ``auth`` | ``TokenAuthMiddleware`` / ``HubAuthMiddlewareStack`` for WebSockets; request auth for SSE and polling |
| ``sse`` / ``views`` | the SSE stream and the polling view; ``urls`` mounts them, ``routing`` the WebSocket |
"""
