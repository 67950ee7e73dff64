"""Where the hub keeps who a connected client is: on amqtt's per-session ``attributes`` dict."""

PRINCIPAL = "hubserver.principal"


def principal_of(session):
    """The principal the auth plugin stored for this session, or None (never authenticated)."""
    return session.attributes.get(PRINCIPAL) if session is not None else None


def set_principal(session, principal):
    session.attributes[PRINCIPAL] = principal
