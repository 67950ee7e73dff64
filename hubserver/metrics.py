"""Prometheus metrics, read at scrape time: nothing is counted per message for them.

The hub already keeps plain counters where the work happens (the router's ``stats()``, the embedded
broker's ``stats()``, the verifiers' ``stats``, the HTTP views' counters); ``HubCollector`` turns them into
metric families when ``/metrics`` is scraped. The metrics live in their own ``REGISTRY`` (not
prometheus-client's global one), together with the process collector (``process_*``: memory, CPU, fds).

Names (all prefixed ``hubserver_``):

| metric | type | from |
|---|---|---|
| ``engine_running`` | gauge | 1 if the hub (router and broker engines) runs in this process |
| ``connected_clients`` / ``connected_devices`` | gauge | broker: live MQTT principals / device ones |
| ``messages_received_total`` / ``_stored_total`` / ``_failed_total`` | counter | router |
| ``messages_refused_total{reason}`` | counter | router refusals, plus the broker bridge's ``acl`` drops |
| ``router_errors_total`` | counter | messages whose processing raised (not stored) |
| ``batches_total``, ``batch_size{stat="last"\\|"max"}`` | counter, gauge | group-commit writer |
| ``commit_errors_total``, ``uncommitted_messages_total`` | counter | batches that failed to commit, their messages |
| ``writer_queue_depth``, ``heartbeat_tracked_devices`` | gauge | writer queue, heartbeat monitor |
| ``connections_refused_total{reason}`` | counter | broker: ``not_authorized``, ``max_connections``, |
| | | ``unsupported_protocol`` |
| ``mqtt_open_sockets`` | gauge | accepted MQTT connections, CONNECT completed or not |
| ``mqtt_dropped_total{reason}`` | counter | deliveries dropped (``queue_full``) |
| ``mqtt_closed_total{reason}`` | counter | connections the broker closed for a limit or a protocol violation |
| ``mqtt_throttled_total{reason}``, ``mqtt_throttled_seconds_total`` | counter | pauses of reading a client, |
| | | and their seconds (quotas, back-pressure) |
| ``mqtt5_disconnects_total{reason}`` | counter | DISCONNECTs sent to MQTT 5 clients (``packet_too_large``, |
| | | ``session_taken_over``, ``keep_alive_timeout``, ``protocol_error``...) |
| ``auth_failures_total{source}`` | counter | ``mqtt`` (broker CONNECTs refused), ``http`` (``/iot/broker/auth/``) |
| ``auth_throttled_total{source,reason}`` | counter | attempts refused unchecked (``username``, ``address``) |
| ``auth_throttle_keys{table}`` | gauge | usernames and addresses whose failures the throttle remembers |
| ``verifier_cache_hits_total``, ``_misses_total``, ``verifier_checks_total`` ``{verifier}`` | counter | verifiers |
| ``verifier_cache_entries{verifier}`` | gauge | secret verifiers |
| ``http_broker_requests_total{endpoint,outcome}`` | counter | ``/iot/broker/auth/`` and ``acl/`` |
| ``http_ingest_requests_total{kind,outcome}`` | counter | ``/iot/devices/.../data/`` and ``status/`` |
| ``storage_rows``, ``storage_bytes``, ``storage_oldest_timestamp_seconds`` ``{device_type,table}`` | gauge | tables |
| ``database_bytes``, ``storage_figures_age_seconds`` | gauge | the database; the figures' age |
| ``pruned_rows_total{device_type,kind}``, ``prune_passes_total``, ``prune_errors_total`` | counter | pruning |
| ``prune_last_pass_seconds`` | gauge | how long its last pass took |
| ``http_bodies_refused_total{route}`` | counter | HTTP bodies over their route's limit, refused unread (413) |
| ``websocket_send_paused_total{endpoint}`` | counter | sends that waited for a WebSocket client to read |
| | | (``mqtt``, ``live``, ``dasf``; ``WEBSOCKET_SEND_BUFFER``) |
| ``websocket_send_waiting{endpoint}`` | gauge | sends waiting now for their client to read |
| ``realtime_slow_viewers_total`` | counter | live-view WebSockets closed for falling behind (4429) |
| ``dasf_connections``, ``dasf_topics``, ``dasf_writer_queue_depth`` | gauge | DASF topic broker |
| ``dasf_messages_total{outcome}`` | counter | DASF messages ``received``, ``delivered`` (per consumer), ``refused`` |
| ``dasf_slow_consumers_total`` | counter | DASF connections closed for falling behind (4429) |
| ``dasf_mqtt_messages_total{outcome}`` | counter | DASF over MQTT: ``received``, ``dropped``, ``published`` |
| ``dasf_mqtt_subscriptions_refused_total`` | counter | MQTT subscriptions to a DASF topic without ``can_consume`` |

Router counters restart with the hub; Prometheus' ``rate()`` handles such resets. The ``storage_*`` gauges
(each type's messages, readings and rollups tables) are taken in the background at most every five minutes
(``lifecycle.storage``): a scrape never waits for them, and the first scrapes after start have none.
"""

import logging

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .routing.results import Refusal

logger = logging.getLogger("hubserver.metrics")

NAMESPACE = "hubserver"
MESSAGE_REFUSALS = (
    Refusal.BAD_TOPIC,
    Refusal.UNKNOWN_TYPE,
    Refusal.UNKNOWN_DEVICE,
    Refusal.INACTIVE_DEVICE,
    Refusal.PAYLOAD_TOO_LARGE,
    "acl",
)
CONNECTION_REFUSALS = ("not_authorized", "max_connections", "unsupported_protocol")
WEBSOCKET_ENDPOINTS = ("mqtt", "live", "dasf")


def _name(name):
    return f"{NAMESPACE}_{name}"


def _counter(name, documentation, value=None, labels=None, samples=()):
    family = CounterMetricFamily(_name(name), documentation, value=value, labels=labels)
    for label_values, sample in samples:
        family.add_metric(label_values, sample)
    return family


def _gauge(name, documentation, value=None, labels=None, samples=()):
    family = GaugeMetricFamily(_name(name), documentation, value=value, labels=labels)
    for label_values, sample in samples:
        family.add_metric(label_values, sample)
    return family


def _histogram(name, documentation, snapshot):
    """A histogram family from the router's ``{"count", "sum", "buckets": {bound: cumulative}}``."""
    buckets = [
        ("+Inf" if bound == float("inf") else repr(float(bound)), count)
        for bound, count in (snapshot or {}).get("buckets", {}).items()
    ] or [("+Inf", 0)]
    return HistogramMetricFamily(
        _name(name), documentation, buckets=buckets, sum_value=(snapshot or {}).get("sum", 0.0)
    )


def _limit_metrics(broker_stats):
    """The embedded broker's limit counters (every reason present from the start, at 0)."""
    yield _gauge(
        "mqtt_open_sockets",
        "Accepted MQTT connections, whether or not they completed their CONNECT (counted against MAX_CONNECTIONS).",
        broker_stats.get("sockets", 0),
    )
    closed = broker_stats.get("closed", {})
    yield _counter(
        "mqtt_closed",
        "MQTT connections the hub closed because of what the client sent, by reason (docs/limits.md).",
        labels=["reason"],
        samples=[([reason], count) for reason, count in sorted(closed.items())],
    )
    throttled = broker_stats.get("throttled", {})
    yield _counter(
        "mqtt_throttled",
        "Times the hub paused reading an MQTT client, by the quota or back-pressure that caused it.",
        labels=["reason"],
        samples=[([reason], count) for reason, count in sorted(throttled.items())],
    )
    yield _counter(
        "mqtt_dropped",
        "Messages the hub did not deliver to an MQTT client, by reason (queue_full: MAX_QUEUED_MESSAGES).",
        labels=["reason"],
        samples=[([reason], count) for reason, count in sorted(broker_stats.get("dropped_deliveries", {}).items())],
    )
    yield _counter(
        "mqtt_throttled_seconds",
        "Seconds MQTT clients' reading was paused by their quotas and back-pressure, in total.",
        broker_stats.get("throttled_seconds", 0.0),
    )
    disconnects = broker_stats.get("mqtt5_disconnects", {})
    yield _counter(
        "mqtt5_disconnects",
        "DISCONNECTs the hub sent to MQTT 5 clients before closing their connection, by reason code name.",
        labels=["reason"],
        samples=[([reason], count) for reason, count in sorted(disconnects.items())],
    )


class HubCollector(Collector):
    """Reads the hub's counters at scrape time from the running hub, the verifiers and the views."""

    def describe(self):
        return []  # names are fixed, but their values need a live engine: no collect() at registration

    def collect(self):
        from .hub import running_hub

        try:
            yield from self._engine_metrics(running_hub())
        except Exception:  # a scrape must never fail because one source is half-started
            logger.exception("collecting the engine's metrics failed")
        yield from self._storage_metrics()
        yield from self._verifier_metrics()
        yield from self._throttle_metrics()
        yield from self._http_metrics()
        yield from self._websocket_metrics()
        yield from self._dasf_metrics()

    def _websocket_metrics(self):
        from .realtime.consumers import stats as realtime_stats
        from .web.send_buffer import stats as send_stats

        current = send_stats.snapshot()
        yield _counter(
            "websocket_send_paused",
            "Sends to a WebSocket client that had to wait for it to read (WEBSOCKET_SEND_BUFFER), by endpoint.",
            labels=["endpoint"],
            samples=[([endpoint], current["paused"].get(endpoint, 0)) for endpoint in WEBSOCKET_ENDPOINTS],
        )
        yield _gauge(
            "websocket_send_waiting",
            "Sends waiting now for a WebSocket client to read what it was sent, by endpoint.",
            labels=["endpoint"],
            samples=[([endpoint], current["waiting"].get(endpoint, 0)) for endpoint in WEBSOCKET_ENDPOINTS],
        )
        yield _counter(
            "realtime_slow_viewers",
            "Live-view WebSockets closed for falling REALTIME_QUEUE_SIZE events behind (too_slow, 4429).",
            realtime_stats["too_slow"],
        )

    def _dasf_metrics(self):
        from .dasf.service import get_service

        service = get_service()
        stats = service.stats() if service is not None else {}
        yield _gauge("dasf_connections", "DASF consumer connections to this process.", stats.get("connections", 0))
        yield _gauge("dasf_topics", "DASF topics the broker knows.", stats.get("topics", 0))
        yield _gauge("dasf_writer_queue_depth", "DASF items queued for their writer.", stats.get("queued", 0))
        yield _counter(
            "dasf_messages",
            "DASF messages by outcome: received from producers, delivered to consumers, refused.",
            labels=["outcome"],
            samples=[([outcome], stats.get(outcome, 0)) for outcome in ("received", "delivered", "refused")],
        )
        yield _counter(
            "dasf_slow_consumers", "DASF connections closed for falling behind (4429).", stats.get("too_slow", 0)
        )
        mqtt = stats.get("mqtt", {})
        yield _counter(
            "dasf_mqtt_messages",
            "DASF messages over MQTT (dasf/<topic>): received from publishers, dropped (not a DASF message, or "
            "refused), published to subscribers.",
            labels=["outcome"],
            samples=[([outcome], mqtt.get(outcome, 0)) for outcome in ("received", "dropped", "published")],
        )
        yield _counter(
            "dasf_mqtt_subscriptions_refused",
            "MQTT subscriptions to a DASF topic (dasf/<topic>) refused: no can_consume on it.",
            mqtt.get("subscriptions_refused", 0),
        )

    def _engine_metrics(self, hub):
        router = hub.router if hub is not None else None
        broker_stats = hub.stats() if hub is not None else {}
        router_stats = router.stats() if router is not None else {}
        yield _gauge("engine_running", "1 if a hub engine (broker and router) runs in this process.", int(bool(router)))
        yield _gauge(
            "connected_clients",
            "MQTT clients (devices, service and anonymous clients) connected to the embedded broker.",
            broker_stats.get("connected", 0),
        )
        yield _gauge("connected_devices", "Devices with a live MQTT connection.", broker_stats.get("devices", 0))
        yield _counter("messages_received", "Device messages submitted to the router.", router_stats.get("received", 0))
        yield _counter("messages_stored", "Device messages committed as Message rows.", router_stats.get("stored", 0))
        yield _counter(
            "messages_failed",
            "Device messages stored with processing_status=failed (unusable payload).",
            router_stats.get("failed", 0),
        )
        refused = dict.fromkeys(MESSAGE_REFUSALS, 0)  # every known reason, so the series exist from the start
        refused.update(router_stats.get("refused", {}))
        for reason, count in broker_stats.get("dropped", {}).items():
            refused[reason] = refused.get(reason, 0) + count
        yield _counter(
            "messages_refused",
            "Device messages not stored, by reason (router refusals; 'acl': publishes the broker's ACL dropped).",
            labels=["reason"],
            samples=[([reason], count) for reason, count in sorted(refused.items())],
        )
        yield _counter(
            "router_errors", "Messages whose processing raised an error (not stored).", router_stats.get("errors", 0)
        )
        yield _counter("batches", "Batches committed by the group-commit writer.", router_stats.get("batches", 0))
        yield _histogram("commit_seconds", "Time to write and commit one batch.", router_stats.get("commit_seconds"))
        yield _histogram("batch_messages", "Messages per committed batch.", router_stats.get("batch_sizes"))
        by_type = router_stats.get("by_type", {})
        for stat in ("received", "stored", "failed"):
            yield _counter(
                f"type_messages_{stat}",
                f"Device messages {stat}, by device type.",
                labels=["device_type"],
                samples=[([name], counts.get(stat, 0)) for name, counts in sorted(by_type.items())],
            )
        yield _counter(
            "type_messages_refused",
            "Device messages refused, by device type and reason.",
            labels=["device_type", "reason"],
            samples=[(key.split(":", 1), n) for key, n in sorted(router_stats.get("refused_by_type", {}).items())],
        )
        yield _gauge(
            "batch_size",
            "Messages in the last committed batch and in the largest one so far.",
            labels=["stat"],
            samples=[
                (["last"], router_stats.get("last_batch_size", 0)),
                (["max"], router_stats.get("max_batch_size", 0)),
            ],
        )
        yield _counter("commit_errors", "Batches whose commit failed.", router_stats.get("commit_errors", 0))
        yield _counter(
            "uncommitted_messages", "Messages in batches whose commit failed.", router_stats.get("uncommitted", 0)
        )
        yield _gauge("writer_queue_depth", "Messages queued for the writer.", router_stats.get("queued", 0))
        yield _gauge(
            "heartbeat_tracked_devices",
            "Online devices the heartbeat monitor tracks.",
            router_stats.get("tracked_devices", 0),
        )
        broker_refused = dict.fromkeys(CONNECTION_REFUSALS, 0)
        broker_refused.update(broker_stats.get("refused", {}))
        yield _counter(
            "connections_refused",
            "MQTT connections the embedded broker refused, by reason.",
            labels=["reason"],
            samples=[([reason], count) for reason, count in sorted(broker_refused.items())],
        )
        yield from _limit_metrics(broker_stats)
        from .views.broker_auth import stats as broker_http_stats

        http_failures = broker_http_stats.snapshot()
        yield _counter(
            "auth_failures",
            "Refused authentications: MQTT CONNECTs to the embedded broker, and /iot/broker/auth/ requests.",
            labels=["source"],
            samples=[
                (["mqtt"], broker_refused.get("not_authorized", 0)),
                (
                    ["http"],
                    sum(http_failures.get(key, 0) for key in ("auth_deny", "auth_bad_token", "auth_malformed")),
                ),
            ],
        )

    def _storage_metrics(self):
        """Rows, bytes and the oldest row of each type's tables (taken in the background, at most every few
        minutes: ``lifecycle.storage``), and what the pruner removed."""
        from .hub import running_hub
        from .lifecycle.storage import storage_figures

        router = getattr(running_hub(), "router", None)
        pruner = getattr(router, "pruner", None)
        stats = pruner.stats() if pruner is not None else {"passes": 0, "removed": {}, "errors": 0}
        yield _counter(
            "pruned_rows",
            "Rows removed by the hub's pruning past their retention, by device type and kind.",
            labels=["device_type", "kind"],
            samples=[([name, kind], n) for (name, kind), n in sorted(stats["removed"].items())],
        )
        yield _counter("prune_passes", "Pruning passes the hub completed.", stats["passes"])
        yield _counter("prune_errors", "Pruning passes that failed.", stats["errors"])
        if stats.get("last_pass_seconds") is not None:
            yield _gauge("prune_last_pass_seconds", "How long the last pruning pass took.", stats["last_pass_seconds"])
        snapshot = storage_figures.latest()
        if snapshot is None:
            return  # being taken: the next scrape has them
        labels = ["device_type", "table"]
        yield _gauge(
            "storage_rows",
            "Rows kept, by device type and table (messages, readings, rollups).",
            labels=labels,
            samples=[([t.type_name, t.table], t.rows) for t in snapshot.tables],
        )
        yield _gauge(
            "storage_bytes",
            "Bytes of each type's table and its indexes.",
            labels=labels,
            samples=[([t.type_name, t.table], t.bytes) for t in snapshot.tables if t.bytes is not None],
        )
        yield _gauge(
            "storage_oldest_timestamp_seconds",
            "Unix time of the oldest row kept (messages: received_at, readings: timestamp, rollups: start).",
            labels=labels,
            samples=[([t.type_name, t.table], t.oldest.timestamp()) for t in snapshot.tables if t.oldest is not None],
        )
        if snapshot.database_bytes is not None:
            yield _gauge("database_bytes", "Size of the whole database.", snapshot.database_bytes)
        yield _gauge("storage_figures_age_seconds", "How old the storage_* figures are.", snapshot.age())

    def _verifier_metrics(self):
        from .access.verifier import device_verifier, service_verifier

        verifiers = {"device": device_verifier, "service": service_verifier}
        values = {name: (dict(verifier.stats), len(verifier)) for name, verifier in verifiers.items()}
        for stat, documentation in (
            ("hits", "Secret verifications answered from the cache of successes."),
            ("misses", "Secret verifications not in the cache."),
        ):
            yield _counter(
                f"verifier_cache_{stat}",
                documentation,
                labels=["verifier"],
                samples=[([name], stats.get(stat, 0)) for name, (stats, _) in values.items()],
            )
        yield _counter(
            "verifier_checks",
            "Secret hashes actually computed (argon2 for devices, Django hashers for service users).",
            labels=["verifier"],
            samples=[([name], stats.get("checks", 0)) for name, (stats, _) in values.items()],
        )
        yield _gauge(
            "verifier_cache_entries",
            "Successful verifications remembered.",
            labels=["verifier"],
            samples=[([name], size) for name, (_, size) in values.items()],
        )

    def _throttle_metrics(self):
        from .access.throttle import ADDRESS, USERNAME, snapshot

        current = snapshot()
        refused = {(source, reason): 0 for source in ("mqtt", "http", "ingest") for reason in (USERNAME, ADDRESS)}
        refused.update(current["refused"])
        yield _counter(
            "auth_throttled",
            "Authentication attempts refused without checking them: their username or source address had "
            "failed AUTH_FAILURE_LIMIT / AUTH_ADDRESS_FAILURE_LIMIT times within AUTH_FAILURE_WINDOW.",
            labels=["source", "reason"],
            samples=[([source, reason], count) for (source, reason), count in sorted(refused.items())],
        )
        yield _gauge(
            "auth_throttle_keys",
            "Usernames and source addresses whose recent authentication failures are remembered.",
            labels=["table"],
            samples=[([table], count) for table, count in sorted(current["keys"].items())],
        )

    def _http_metrics(self):
        from .views.broker_auth import stats as broker_http_stats
        from .views.ingest import stats as ingest_stats

        broker = []
        for key, count in sorted(broker_http_stats.snapshot().items()):
            endpoint, _, outcome = key.partition("_")
            broker.append(([endpoint, outcome], count))
        yield _counter(
            "http_broker_requests",
            "Requests to /iot/broker/auth/ and /iot/broker/acl/, by outcome (allow, deny, bad_token, malformed).",
            labels=["endpoint", "outcome"],
            samples=broker,
        )
        ingest = []
        for key, count in sorted(ingest_stats.snapshot().items()):
            kind, _, outcome = key.partition(":")
            ingest.append(([kind, outcome], count))
        from .web.bodies import stats as body_stats

        yield _counter(
            "http_bodies_refused",
            "HTTP request bodies refused (413) before they were read, by route (URL name, or 'other').",
            labels=["route"],
            samples=[([route], count) for route, count in sorted(body_stats.snapshot().items())],
        )
        yield _counter(
            "http_ingest_requests",
            "Device messages posted over HTTP, by kind and outcome (completed, failed, unauthorized, ...).",
            labels=["kind", "outcome"],
            samples=ingest,
        )


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(HubCollector())
ProcessCollector(registry=REGISTRY)


def render():
    """The text exposition of ``REGISTRY`` (bytes)."""
    return generate_latest(REGISTRY)
