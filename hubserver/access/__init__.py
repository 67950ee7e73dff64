"""The broker-agnostic access layer: who a client is (authentication, principals), what it may do with
topics (ACL), and how devices get and lose credentials (provisioning, revocation).

One implementation, two adapters: the embedded amqtt plugins and the HTTP auth/ACL endpoints an external
broker (EMQX) calls both use these functions, so the rules cannot drift apart.
"""

from .acl import can_publish, can_receive, can_subscribe
from .authenticate import (
    SERVICE_PERMISSION,
    TOKEN_USERNAME,
    authenticate_mqtt,
    authenticate_mqtt_sync,
    client_id_allowed,
    parse_device_username,
)
from .hashing import generate_secret, hash_secret, verify_secret
from .principals import (
    ANONYMOUS,
    HUB,
    AnonymousPrincipal,
    DevicePrincipal,
    HubPrincipal,
    Principal,
    ServicePrincipal,
)
from .provisioning import aprovision, connection_info, provision, provision_many
from .revocation import connect_revocation_signals, credentials_revoked
from .topics import filter_within, is_valid_filter, is_valid_topic, topic_matches
from .verifier import Verifier, device_verifier, invalidate, service_verifier

__all__ = [
    "ANONYMOUS",
    "HUB",
    "SERVICE_PERMISSION",
    "TOKEN_USERNAME",
    "AnonymousPrincipal",
    "DevicePrincipal",
    "HubPrincipal",
    "Principal",
    "ServicePrincipal",
    "Verifier",
    "aprovision",
    "authenticate_mqtt",
    "authenticate_mqtt_sync",
    "can_publish",
    "can_receive",
    "can_subscribe",
    "client_id_allowed",
    "connect_revocation_signals",
    "connection_info",
    "credentials_revoked",
    "device_verifier",
    "filter_within",
    "generate_secret",
    "hash_secret",
    "invalidate",
    "is_valid_filter",
    "is_valid_topic",
    "parse_device_username",
    "provision",
    "provision_many",
    "service_verifier",
    "topic_matches",
    "verify_secret",
]
