"""The amqtt auth plugin: device credentials, service users and (optionally) anonymous clients, checked by
the hub's one implementation in ``hubserver.access``; the Last Will topic obeys the publish ACL."""

import logging

from amqtt.plugins.base import BaseAuthPlugin

from hubserver.access.acl import can_publish
from hubserver.access.authenticate import authenticate_mqtt
from hubserver.routing.throttle import ThrottledLog, clip

from .session import BAD_CLIENT_ID, BAD_CREDENTIALS, set_principal

logger = logging.getLogger("hubserver.mqtt.auth")
# Refused CONNECTs are logged once a minute per source address (a password guesser makes hundreds a second);
# hubserver_auth_failures_total and hubserver_auth_throttled_total count every one.
_refusals = ThrottledLog(logger)


class HubAuthPlugin(BaseAuthPlugin):
    """Returns True or False, never raises: when an auth plugin raises, amqtt 0.12.1 swallows the exception
    and sends no CONNACK, so the client would wait forever."""

    async def authenticate(self, *, session):
        try:
            refusal = {}
            principal = await authenticate_mqtt(
                session.username,
                session.password,
                client_id=session.client_id,
                address=session.remote_address,
                refusal=refusal,
            )
            if principal is None and refusal:
                # Good credentials, a client id they may not use: the CONNACK says so (MQTT 5: 0x85, 3.1.1:
                # 0x02 identifier rejected), so the device's own log shows what to fix.
                _refusals.warning("client_id", session.username, "%s", refusal["client_id"])
                session.attributes[BAD_CLIENT_ID] = True
                return False
            if principal is None:
                _refusals.info(
                    "bad_credentials",
                    session.remote_address,
                    "refused %s (user %s) from %s: bad credentials",
                    clip(session.client_id),
                    clip(session.username),
                    session.remote_address,
                )
                session.attributes[BAD_CREDENTIALS] = True  # MQTT 5 says so in CONNACK (0x86)
                return False
            if session.will_flag and not can_publish(principal, session.will_topic):
                logger.info(
                    "refused %s: its Last Will topic %s is not one it may publish to",
                    clip(session.client_id),
                    clip(session.will_topic),
                )
                return False
            set_principal(session, principal)
            # Upstream: an anonymous session (is_anonymous) gets no offline queue and is dropped at disconnect,
            # whatever its clean session flag. Here a client that asks for a persistent session gets one,
            # anonymous clients too where they are allowed [MQTT-3.1.2-4].
            session.is_anonymous = False
            return True
        except Exception:
            logger.exception("authentication of %s failed with an error; refusing it", clip(session.client_id))
            return False
