"""The DASF topic broker's HTTP side: the status and ping views with their status codes, the admin pages
and actions, and ``hubserver dasf_topic``."""

import datetime as dt
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.utils import timezone
from guardian.shortcuts import assign_perm

from hubserver.dasf.models import BrokerMessage, BrokerTopic, ResponseTopic

pytestmark = pytest.mark.django_db


def _user(username, *, token=False, **fields):
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    user = User.objects.create_user(username, password="pw", **fields)
    if token:
        user.token = Token.objects.create(user=user).key
    return user


def _topic(slug="calc", *, pinged=None, ponged=None, **fields):
    now = timezone.now()
    return BrokerTopic.objects.create(
        slug=slug,
        last_ping=None if pinged is None else now - dt.timedelta(seconds=pinged),
        last_pong=None if ponged is None else now - dt.timedelta(seconds=ponged),
        **fields,
    )


def _logged_in(user):
    client = Client()
    client.force_login(user)
    return client


def test_status_answers_with_the_topics_availability():
    viewer = _user("viewer")
    topics = {
        "online": _topic("online", pinged=5, ponged=4),
        "offline": _topic("offline", pinged=5, ponged=60),
        "unknown": _topic("unknown", pinged=600, ponged=600),
        "never": _topic("never"),
        "plain": _topic("plain", supports_dasf=False),
    }
    for topic in topics.values():
        assign_perm("can_view_status", viewer, topic)
    client = _logged_in(viewer)
    answers = {slug: client.get(f"/{slug}/status/") for slug in topics}
    assert {slug: (r.status_code, r.content.decode()) for slug, r in answers.items()} == {
        "online": (200, "Consumer connected"),
        "offline": (503, "Consumer could not be reached"),
        "unknown": (503, "Status unknown"),
        "never": (503, "Status unknown"),
        "plain": (400, "Topic is excluded from ping"),
    }
    assert client.get("/nope/status/").status_code == 404


def test_status_needs_a_permission_on_the_topic_unless_it_is_public():
    topic = _topic("calc", pinged=5, ponged=4)
    nobody = _user("nobody")
    assert _logged_in(nobody).get("/calc/status/").status_code == 403
    anonymous = Client().get("/calc/status/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")
    for perm in ("can_view_status", "can_produce", "can_consume"):  # any of them will do
        user = _user(f"has-{perm}")
        assign_perm(perm, user, topic)
        assert _logged_in(user).get("/calc/status/").status_code == 200
    globally = _user("global")
    globally.user_permissions.add(_permission("can_view_status"))
    assert _logged_in(globally).get("/calc/status/").status_code == 200
    _topic("public", pinged=5, ponged=4, is_public=True)
    assert Client().get("/public/status/").status_code == 200


def _permission(codename):
    from django.contrib.auth.models import Permission

    return Permission.objects.get(content_type__app_label="dasf_broker", codename=codename)


def test_status_and_ping_take_api_tokens():
    topic = _topic("calc", pinged=5, ponged=4)
    script = _user("script", token=True)
    assign_perm("can_produce", script, topic)
    assert Client().get("/calc/status/", HTTP_AUTHORIZATION=f"Token {script.token}").status_code == 200
    answer = Client().post("/calc/ping/", HTTP_AUTHORIZATION=f"Token {script.token}")
    assert answer.status_code == 302 and answer["Location"] == "/calc/status/"
    assert Client().get("/calc/status/", HTTP_AUTHORIZATION="Token wrong").status_code == 401


def test_ping_needs_can_produce_and_notes_the_ping():
    topic = _topic("calc")
    consumer = _user("consumer")
    assign_perm("can_consume", consumer, topic)
    assert _logged_in(consumer).get("/calc/ping/").status_code == 403
    producer = _user("producer")
    assign_perm("can_produce", producer, topic)
    answer = _logged_in(producer).get("/calc/ping/")
    assert answer.status_code == 302 and answer["Location"] == "/calc/status/"
    topic.refresh_from_db()
    assert topic.last_ping is not None
    assert Client().get("/nope/ping/").status_code == 404


def test_ping_by_post_with_a_session_needs_the_csrf_token():
    topic = _topic("calc")
    producer = _user("producer")
    assign_perm("can_produce", producer, topic)
    client = Client(enforce_csrf_checks=True)
    client.force_login(producer)
    assert client.post("/calc/ping/").status_code == 403


def test_websocket_urls_follow_root_url_and_the_route():
    from django.test import RequestFactory

    topic = _topic("calc")
    request = RequestFactory().get("/", HTTP_HOST="localhost:8000")
    assert topic.get_websocket_url(request) == "ws://localhost:8000/ws/calc/"
    with override_settings(ROOT_URL="https://hub.example.org/", DASF_WEBSOCKET_URL_ROUTE="dasf/"):
        assert topic.get_websocket_url(request) == "wss://hub.example.org/dasf/calc/"
        assert BrokerTopic.build_websocket_url(request) == "wss://hub.example.org/dasf/"


def test_queryset_filters_match_availability():
    _topic("online", pinged=5, ponged=4)
    _topic("offline", pinged=5, ponged=60)
    _topic("unknown", pinged=600)
    _topic("never")
    _topic("plain", supports_dasf=False, pinged=5, ponged=4)
    for topic in BrokerTopic.objects.all():
        expected = {True: "online", False: "offline", None: "unknown"}[topic.availability]
        found = {
            "online": BrokerTopic.objects.filter_online(),
            "offline": BrokerTopic.objects.filter_offline(),
            "unknown": BrokerTopic.objects.filter_unknown_availability(),
        }
        assert [name for name, queryset in found.items() if queryset.filter(pk=topic.pk).exists()] == [expected]


def test_store_rules_and_outstanding_messages():
    user = _user("u")
    other = _user("o")
    topic = _topic("calc")
    response = ResponseTopic.objects.create(slug="calc_r", is_response_for=topic)
    assert topic.effective_store_messages == "cache" and not topic.is_response_topic
    assert response.is_response_topic and BrokerTopic.objects.get(slug="calc_r").is_response_topic
    with override_settings(DASF_STORE_MESSAGES="store", DASF_STORE_RESPONSE_MESSAGES="disabled"):
        assert topic.effective_store_messages == "store"
        assert response.effective_store_messages == "disabled"
    topic.store_messages = "cacheall"
    assert topic.effective_store_messages == "cacheall"
    assign_perm("can_consume", user, topic)
    assign_perm("can_consume", other, topic)
    message = topic.create_and_send_message(user, {"payload": "x"})
    assert list(topic.get_outstanding_messages()) == [message]
    message.delivered_to.add(user)
    assert list(topic.get_outstanding_messages(user)) == []
    assert list(topic.get_outstanding_messages(other)) == [message]
    assert not message.delivered_to_all and not message.is_response
    message.delivered_to.add(other)
    assert message.delivered_to_all


# Admin --------------------------------------------------------------------------------------------------


def test_admin_lists_filters_and_acts_on_topics_and_messages():
    admin = _user("root", is_staff=True, is_superuser=True)
    client = _logged_in(admin)
    topic = _topic("calc", pinged=5, ponged=4)
    old = _topic("old")
    old.garbage_collect_on = timezone.now() - dt.timedelta(minutes=1)
    old.save()
    ResponseTopic.objects.create(slug="calc_r", is_response_for=topic)
    message = topic.create_and_send_message(admin, {"payload": "x"})

    assert client.get("/admin/dasf_broker/brokertopic/").status_code == 200
    for query in ("last_pong=online", "last_pong=offline", "last_pong=unknown", "responsetopic=1", "responsetopic=0"):
        page = client.get(f"/admin/dasf_broker/brokertopic/?{query}")
        assert page.status_code == 200
    online = client.get("/admin/dasf_broker/brokertopic/?last_pong=online").content.decode()
    assert ">calc<" in online and ">old<" not in online
    assert client.get("/admin/dasf_broker/responsetopic/").status_code == 200
    for query in ("", "?topic=1", "?topic=0", "?delivered_to=1", "?delivered_to=0"):
        assert client.get(f"/admin/dasf_broker/brokermessage/{query}").status_code == 200
    assert client.get(f"/admin/dasf_broker/brokermessage/{message.pk}/change/").status_code == 200
    assert client.get(f"/admin/dasf_broker/brokertopic/{topic.pk}/permissions/").status_code == 200

    client.post(
        "/admin/dasf_broker/brokertopic/",
        {"action": "garbage_collect", "_selected_action": [topic.pk, old.pk]},
    )
    assert list(BrokerTopic.objects.filter(slug__in=["calc", "old"]).values_list("slug", flat=True)) == ["calc"]
    topic.last_ping = None
    topic.save()
    client.post("/admin/dasf_broker/brokertopic/", {"action": "ping_topics", "_selected_action": [topic.pk]})
    topic.refresh_from_db()
    assert topic.last_ping is not None
    answer = client.post(
        "/admin/dasf_broker/brokermessage/", {"action": "send_messages", "_selected_action": [message.pk]}
    )
    assert answer.status_code == 302


# hubserver dasf_topic ------------------------------------------------------------------------------------


def _command(*args):
    out = StringIO()
    call_command("dasf_topic", *args, stdout=out)
    return out.getvalue()


def test_dasf_topic_creates_and_changes_topics():
    _user("backend")
    _user("alice")
    _command("calc", "--new", "-c", "backend", "-p", "alice", "--store-messages", "cacheall", "--no-dasf")
    topic = BrokerTopic.objects.get(slug="calc")
    assert [u.username for u in topic.consumers] == ["backend"]
    assert [u.username for u in topic.producers] == ["alice"]
    assert topic.store_messages == "cacheall" and not topic.supports_dasf and not topic.is_public

    info = _command("calc", "--public", "--dasf", "--store-messages", "default", "-vs", "alice", "-i")
    topic.refresh_from_db()
    assert topic.is_public and topic.supports_dasf and topic.store_messages is None
    assert "Consumers:\n    backend" in info and "Users that can view the status:\n    alice" in info

    _command("calc", "-rm", "-p", "alice")
    assert list(topic.producers) == []

    _command("open", "--new", "--anonymous")
    opened = BrokerTopic.objects.get(slug="open")
    assert opened.is_public and [u.username for u in opened.consumers] == ["AnonymousUser"]

    _command("svc", "--new", "-c", "svc-user", "--create-consumer", "-p", "svc-user", "--create-producer")
    assert [u.username for u in BrokerTopic.objects.get(slug="svc").producers] == ["svc-user"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("hub", "--new"), "'hub' is reserved"),
        (("status-ping", "--new"), "reserved"),
        (("bad.name", "--new"), "is not a topic name"),
        (("missing",), "there is no topic named 'missing'"),
        (("calc", "--new"), "already exists"),
        (("calc", "-c", "ghost"), "there is no user named 'ghost'"),
    ],
)
def test_dasf_topic_says_what_is_wrong(args, message):
    _topic("calc")
    with pytest.raises(CommandError, match=message):
        _command(*args)


def test_a_deleted_topic_takes_its_object_permissions_along():
    from guardian.models import UserObjectPermission

    user = _user("u")
    topic = _topic("calc")
    assign_perm("can_consume", user, topic)
    response = ResponseTopic.objects.create(slug="calc_r", is_response_for=topic)
    assign_perm("can_consume", user, response)
    assert user.has_perm("dasf_broker.can_consume", response)
    assert UserObjectPermission.objects.count() == 2
    topic.delete()
    assert UserObjectPermission.objects.count() == 0
    assert not BrokerMessage.objects.exists()


async def test_dasf_broker_djangos_names_for_the_routes_and_the_token_middleware(transactional_db):
    from channels.db import database_sync_to_async

    from hubserver.dasf import routing
    from hubserver.dasf.token_auth_middleware import TokenAuthMiddleware, TokenAuthMiddlewareStack, get_user

    assert str(routing.websocket_urlpatterns[0].pattern) == "ws/"
    with override_settings(DASF_WEBSOCKET_URL_ROUTE="dasf/"):
        assert str(routing.websocket_urlpatterns[0].pattern) == "dasf/"
    assert isinstance(TokenAuthMiddlewareStack(lambda *a: None), TokenAuthMiddleware)
    user = await database_sync_to_async(_user)("scripted", token=True)
    found = await get_user({"headers": [(b"authorization", f"Token {user.token}".encode())]})
    assert found.username == "scripted"
    assert not (await get_user({"headers": []})).is_authenticated
